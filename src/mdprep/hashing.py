"""Content hashes of image files, stored as manifest columns for the leakage audit.

Touches image files (DICOM through pydicom, other formats through Pillow) and
imagehash. Three hashes per image:

* ``file_sha256``: SHA-256 of the file's bytes. The same file copied elsewhere matches.
* ``pixel_sha256``: SHA-256 of the decoded pixel array with its shape and dtype. The same
  image re-encoded (PNG to lossless PNG, a DICOM re-wrapped with new headers) matches.
* ``phash``: a 64-bit perceptual hash (imagehash's DCT pHash) of the image as 8-bit grey,
  stored as an unsigned integer. Images with more than 8 bits per pixel (16-bit DICOM) are
  first windowed to their own range, and MONOCHROME1 is inverted. Slightly different copies
  (re-windowed, brightened, resized, JPEG-compressed) land within a few bits.

NIfTI volumes (``.nii``, ``.nii.gz``, through nibabel) get the same three columns
(:func:`hash_volume`, :mod:`mdprep.nifti`): ``pixel_sha256`` of the voxel array and
``phash`` of its three maximum-intensity projections, both after reorienting the
volume to the closest canonical (RAS+) axes, so that a copy stored on other axes
matches.

Hashes are computed once (``mdprep hash``) so that the audit runs on manifests alone.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import re
import stat
import threading
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .errors import InputError, MdprepWarning, UsageError, cut_text
from .executor import map_chunks
from .fileio import open_nonblocking, paths_outside_root
from .imaging import _decode, _modality, _photometric, grey_8bit
from .incremental import Plan, Signatures, UpdateCounts, check_compatible, load_previous, plan_update, refuse_unusable, results_table, reused_rows, signatures_for
from .manifest import Manifest, provenance_step
from .nifti import NIFTI_EXTENSIONS, is_nifti, require_nibabel
from .storage import canonical_root, is_url, join

HASH_COLUMNS = ("file_sha256", "pixel_sha256", "phash")

#: The largest image file that is read (``mdprep hash --max-bytes``; ``mdprep train`` uses it as is): 2 GiB.
MAX_BYTES = 2 << 30

#: Bytes per read while a file is hashed.
READ_CHUNK = 1 << 20


class NotRegularFile(OSError):
    """The path names a folder, a FIFO, a device or a socket: never read, so never a hang."""


class TooLarge(OSError):
    """The file is larger than the size cap: never read, so never an out-of-memory kill."""


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _check_stat(st: os.stat_result, max_bytes: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
        raise NotRegularFile(f"{kind}, not a regular file; only regular files are read")
    if st.st_size > max_bytes:
        raise TooLarge(f"{st.st_size:,} bytes, over the limit of {max_bytes:,} bytes; raise --max-bytes to read it")


def read_image_bytes(path: str, *, max_bytes: int = MAX_BYTES, digest=None) -> bytes:
    """The bytes of one regular file of at most ``max_bytes``, read in chunks.

    The file is checked with ``os.stat`` before it is opened, so a FIFO, a device
    (``/dev/zero``) or a folder is never read, and a file over the cap is never
    loaded; it is opened with ``O_NONBLOCK`` and checked again, so a file swapped
    for a FIFO in between cannot block either, and the read stops at the cap if the
    file grew. ``digest`` (a ``hashlib`` object), if given, is updated chunk by chunk.

    A URL (``s3://bucket/key``) is read through its fsspec back-end
    (:mod:`mdprep.storage`): its size is asked first (one HEAD), so an object over
    the cap or a prefix is never fetched, then the object is fetched in one GET
    that stops at the cap.

    Raises
    ------
    NotRegularFile, TooLarge, OSError
        The file cannot be read within these rules (an object store's errors come
        from :func:`mdprep.storage.storage_error`: clean, without credentials).

    Examples
    --------
    >>> read_image_bytes("/dev/zero")
    Traceback (most recent call last):
    ...
    mdprep.hashing.NotRegularFile: a character device, not a regular file; only regular files are read
    """
    parts = []
    for chunk in iter_file_chunks(path, max_bytes=max_bytes):
        if digest is not None:
            digest.update(chunk)
        parts.append(chunk)
    return b"".join(parts)


def iter_file_chunks(path: str, *, max_bytes: int = MAX_BYTES) -> Iterator[bytes]:
    """The bytes of one regular file of at most ``max_bytes``, :data:`READ_CHUNK` at a time, with the checks of :func:`read_image_bytes`.

    Nothing is read before the first chunk is asked for; the errors of
    :func:`read_image_bytes` are raised by the iteration. A URL comes as one chunk.
    """
    if is_url(path):
        yield _read_object(path, max_bytes, None)
        return
    _check_stat(os.stat(path), max_bytes)
    fd, st = open_nonblocking(path)
    with os.fdopen(fd, "rb", buffering=0) as fh:
        _check_stat(st, max_bytes)
        total = 0
        while chunk := fh.read(min(READ_CHUNK, max_bytes + 1 - total)):
            total += len(chunk)
            if total > max_bytes:
                raise TooLarge(f"over the limit of {max_bytes:,} bytes (the file grew while it was read); raise --max-bytes to read it")
            yield chunk


def _read_object(url: str, max_bytes: int, digest) -> bytes:
    """:func:`read_image_bytes` of an object: the size checked first, then one GET that stops at the cap."""
    from .storage import object_size, read_object

    size, folder = object_size(url)
    if folder:
        raise NotRegularFile("a folder (a prefix of other objects), not a regular file; only regular files are read")
    if size > max_bytes:
        raise TooLarge(f"{size:,} bytes, over the limit of {max_bytes:,} bytes; raise --max-bytes to read it")
    data = read_object(url, limit=max_bytes + 1)
    if len(data) > max_bytes:
        raise TooLarge(f"over the limit of {max_bytes:,} bytes (the object grew while it was read); raise --max-bytes to read it")
    if digest is not None:
        digest.update(data)
    return data


def remote_reads(paths: Sequence[str], *, max_bytes: int = MAX_BYTES):
    """For each path, a function giving its bytes: URLs are fetched concurrently ahead of the caller, local files not at all.

    A reader that decodes images one after the other (``hash``, ``train``'s check)
    calls the functions in order: for a URL the bytes (or the read's error) are
    ready or on their way (:func:`mdprep.storage.prefetch`, a few at a time, so
    memory stays bounded); for a local path the function returns None and the
    reader reads the file itself, as before.
    """
    if not any(is_url(p) for p in paths):
        return [lambda: None] * len(paths)
    from .storage import prefetch

    return prefetch(lambda p: read_image_bytes(p, max_bytes=max_bytes) if is_url(p) else None, paths)


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def error_text(exc: BaseException) -> tuple[str, str]:
    """``(error_type, message)`` of one file's failure, the same on every run.

    An operating-system error gives its reason without the path (the row has it);
    object addresses (``<_io.BytesIO object at 0x7f...>``) are removed, and the
    message is cut to 300 characters.

    >>> error_text(ValueError("cannot identify image file <_io.BytesIO object at 0x7f3a2c1b9d00>"))
    ('ValueError', 'cannot identify image file <_io.BytesIO object>')
    >>> error_text(FileNotFoundError(2, "No such file or directory", "/data/x.png"))
    ('FileNotFoundError', 'No such file or directory')
    """
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else (str(exc) or repr(exc))
    return type(exc).__name__, cut_text(_ADDRESS.sub("", text), 300)


def phash64(grey: np.ndarray) -> int:
    """imagehash's pHash of an 8-bit grey array as an unsigned 64-bit integer.

    The steps of ``imagehash.phash`` (8x8 bits from a 32x32 image) on the same
    functions, so the same bits: Pillow's resize with imagehash's filter, SciPy's
    DCT along both axes, the 8x8 lowest frequencies against their median. Only
    imagehash's copies are left out (an L image converted to L, the hash object).

    >>> phash64(np.zeros((16, 16), dtype=np.uint8))
    0
    """
    import imagehash
    import scipy.fftpack
    from PIL import Image

    small = np.asarray(Image.fromarray(grey, mode="L").resize((32, 32), imagehash.ANTIALIAS))
    dct = scipy.fftpack.dct(scipy.fftpack.dct(small, axis=0), axis=1)
    low = dct[:8, :8]
    return int(np.packbits(low > np.median(low)).view(">u8")[0])


def pixel_digest(arr: np.ndarray) -> str:
    """SHA-256 of a pixel array with its shape and dtype.

    >>> pixel_digest(np.zeros((1, 2), dtype=np.uint8))[:16]
    'bf6c633ea0e63e30'
    """
    digest = hashlib.sha256(f"{arr.shape}|{arr.dtype.str}|".encode())
    digest.update(np.ascontiguousarray(arr))
    return digest.hexdigest()


#: Bytes of float64 pixels made at a time while a rescaled image is hashed (stays in the CPU's cache).
RESCALE_BLOCK = 1 << 18

#: The largest scratch array a thread keeps between images; a larger one is made for its image alone.
SCRATCH_BYTES = 64 << 20

_scratch = threading.local()


def _scratch_array(name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialised array of ``shape``, reused from image to image by this thread.

    Fresh arrays of megabytes cost page faults on every image (more than the
    arithmetic done on them); one buffer per role is kept instead.
    """
    dtype = np.dtype(dtype)
    size = int(np.prod(shape, dtype=np.int64))
    if size * dtype.itemsize > SCRATCH_BYTES:
        return np.empty(shape, dtype)
    kept = _scratch.__dict__.setdefault("arrays", {})
    buf = kept.get((name, dtype))
    if buf is None or buf.size < size:
        buf = kept[(name, dtype)] = np.empty(size, dtype)
    return buf[:size].reshape(shape)


def _rescale_plan(stored: np.ndarray, ds) -> tuple[float | None, float | None, bool] | None:
    """How :func:`~mdprep.imaging.load_pixels` would treat ``stored``, when the fast path can follow it.

    ``(slope, intercept, invert)``: ``slope`` None when the pixels are kept as they
    are (no DICOM rescale, or only one of its two values, as pydicom does), else the
    finite numbers pydicom multiplies and adds in float64. None for anything else
    (colour, floats, a modality LUT, odd rescale values), which takes the general path.
    """
    if stored.ndim != 2 or stored.dtype.kind not in "iu" or stored.size == 0:
        return None
    if ds is None:
        return None, None, False
    slope = intercept = None
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        if ds.get("ModalityLUTSequence"):
            return None
        if "RescaleSlope" in ds and "RescaleIntercept" in ds:
            slope, intercept = ds.RescaleSlope, ds.RescaleIntercept
            if not all(isinstance(v, float) and math.isfinite(v) for v in (slope, intercept)):
                return None
            slope, intercept = float(slope), float(intercept)
    return slope, intercept, _photometric(ds) == "MONOCHROME1"


def _fast_hashes(stored: np.ndarray, slope: float | None, intercept: float | None, invert: bool) -> tuple[str, int] | None:
    """``(pixel_sha256, phash)`` of a 2-D integer image, as :func:`pixel_digest` and :func:`grey_8bit` give them.

    The same arithmetic in the same dtypes, element by element, without the
    megabyte temporaries: a rescaled image is made in float64 a block of rows at a
    time (hashed, then kept as float32, the dtype :func:`~mdprep.imaging.unit_grey`
    works in), and the windowing to 8 bits runs in place in reused buffers. None
    when the image's range is not finite (a rescale that overflows float32): the
    caller takes the general path.
    """
    if slope is None:
        digest = hashlib.sha256(f"{stored.shape}|{stored.dtype.str}|".encode())
        digest.update(np.ascontiguousarray(stored))
        if stored.dtype == np.uint8:  # grey_8bit keeps 8-bit grey as it is
            return digest.hexdigest(), phash64(255 - stored if invert else stored)
        unit = _scratch_array("unit", stored.shape, np.float32)
        np.copyto(unit, stored, casting="unsafe")
    else:
        digest = hashlib.sha256(f"{stored.shape}|{np.dtype(np.float64).str}|".encode())
        unit = _scratch_array("unit", stored.shape, np.float32)
        rows = max(1, RESCALE_BLOCK // (8 * stored.shape[1]))
        block = _scratch_array("rescaled", (rows, stored.shape[1]), np.float64)
        for start in range(0, stored.shape[0], rows):
            part = stored[start : start + rows]
            out = block[: len(part)]
            if slope == 1.0 and intercept == 0.0:  # x * 1.0 + 0.0 is x for the float64 of an integer
                np.copyto(out, part, casting="unsafe")
            else:
                np.multiply(part, slope, out=out, dtype=np.float64)  # pydicom: arr.astype(float64) * slope
                np.add(out, intercept, out=out)  # then += intercept
            digest.update(out)
            np.copyto(unit[start : start + rows], out, casting="same_kind")
    lo, hi = float(unit.min()), float(unit.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    # unit_grey, then grey_8bit: (a - lo) / (hi - lo), 1 - a for MONOCHROME1, rint(a * 255) as uint8.
    if hi <= lo:
        unit.fill(0)
    else:
        np.subtract(unit, lo, out=unit)
        np.divide(unit, hi - lo, out=unit)
    if invert:
        np.subtract(1.0, unit, out=unit)
    np.multiply(unit, 255, out=unit)
    np.rint(unit, out=unit)
    grey = _scratch_array("grey", stored.shape, np.uint8)
    np.copyto(grey, unit, casting="unsafe")
    return digest.hexdigest(), phash64(grey)


def image_hashes(path: str, data: bytes) -> tuple[str, int]:
    """``(pixel_sha256, phash)`` of one image file's bytes: :func:`pixel_digest` and :func:`phash64` of its pixels.

    The pixels are those of :func:`~mdprep.imaging.load_pixels` and the grey image
    that of :func:`~mdprep.imaging.grey_8bit`; 2-D integer images (grey DICOM
    without a modality LUT, grey PNGs) take a fast path with the same results
    (:func:`_fast_hashes`), anything else the general one.

    Raises
    ------
    Exception
        Whatever decoding the file raises.
    """
    ds, stored = _decode(path, data)
    plan = _rescale_plan(stored, ds)
    if plan is not None:
        fast = _fast_hashes(stored, *plan)
        if fast is not None:
            return fast
    if ds is None:
        arr, invert = stored, False
    else:
        arr, invert = _modality(stored, ds), _photometric(ds) == "MONOCHROME1"
    return pixel_digest(arr), phash64(grey_8bit(arr, invert))


def hash_image(path: str, *, max_bytes: int = MAX_BYTES, read: Callable[[], bytes | None] | None = None) -> tuple[str | None, str | None, int | None, str, str]:
    """``(file_sha256, pixel_sha256, phash, error_type, message)`` of one file; never raises.

    The file is read once, in chunks, through :func:`read_image_bytes` (regular
    files of at most ``max_bytes`` only); the bytes are hashed as they arrive and
    then decoded (:func:`image_hashes`). ``read``, when given and not returning None, gives the bytes
    instead (read ahead by :func:`remote_reads`). Messages come from
    :func:`error_text`, so they are the same on every run. A NIfTI volume
    (``.nii``, ``.nii.gz``) is hashed by :func:`hash_volume`.
    """
    if is_nifti(path):
        return hash_volume(path, max_bytes=max_bytes, read=read)
    digest = hashlib.sha256()
    try:
        data = read() if read is not None else None
        if data is None:
            data = read_image_bytes(path, max_bytes=max_bytes, digest=digest)
        else:
            digest.update(data)
    except (OSError, ValueError) as exc:  # ValueError: a path with a NUL byte
        return None, None, None, *error_text(exc)
    file_hash = digest.hexdigest()
    try:
        pixel_hash, phash = image_hashes(path, data)
        return file_hash, pixel_hash, phash, "", ""
    except Exception as exc:  # noqa: BLE001 - any decoder failure is this file's error row
        return file_hash, None, None, *error_text(exc)


class _ReadFailed(Exception):
    """Reading the file failed (the error is the reader's ``error``): no hash of it at all."""


class _Reader:
    """A file's chunks, each added to ``digest`` as it passes; a read error is kept and ends the iteration with :class:`_ReadFailed`."""

    def __init__(self, chunks: Iterable[bytes], digest) -> None:
        self._chunks = chunks
        self.digest = digest
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self._chunks:
                self.digest.update(chunk)
                yield chunk
        except (OSError, ValueError) as exc:  # ValueError: a path with a NUL byte
            self.error = exc
            raise _ReadFailed from None


def hash_volume(path: str, *, max_bytes: int = MAX_BYTES, read: Callable[[], bytes | None] | None = None) -> tuple[str | None, str | None, int | None, str, str]:
    """:func:`hash_image` of a NIfTI volume: the file read once, in chunks, hashed and inflated as they arrive.

    The voxels are read into one array (:func:`mdprep.nifti.volume_hashes`), never
    the whole file besides: a local file's chunks are dropped once hashed and
    copied. ``max_bytes`` caps the file (compressed or not) and also the
    uncompressed voxel data that its header declares. A volume that cannot be
    decoded keeps its ``file_sha256`` (the rest of the file is still read for it).
    """
    from .nifti import volume_hashes

    try:
        data = read() if read is not None else None
    except (OSError, ValueError) as exc:
        return None, None, None, *error_text(exc)
    reader = _Reader([data] if data is not None else iter_file_chunks(path, max_bytes=max_bytes), hashlib.sha256())
    chunks = iter(reader)
    pixel_hash = phash = failure = None
    try:
        try:
            pixel_hash, phash = volume_hashes(chunks, max_bytes=max_bytes)
        except _ReadFailed:
            raise
        except Exception as exc:  # noqa: BLE001 - any decoder failure is this file's error row
            failure = exc
        for _ in chunks:  # the rest of the file, for its SHA-256
            pass
    except _ReadFailed:
        assert reader.error is not None
        return None, None, None, *error_text(reader.error)
    if failure is not None:
        return reader.digest.hexdigest(), None, None, *error_text(failure)
    return reader.digest.hexdigest(), pixel_hash, phash, "", ""


#: Files per task when local worker processes hash (a few milliseconds each): the last tasks
#: of the workers end close together, and a task's own cost (under a millisecond) stays small.
POOL_CHUNK = 16

#: What decoding and hashing an image imports (``mdprep.imaging`` imports them on first use).
DECODERS = ("pydicom", "pydicom.pixels", "PIL.Image", "PIL.PngImagePlugin", "scipy.fftpack", "imagehash")


def _import_decoders() -> None:
    """Import :data:`DECODERS` in this process, so that the workers forked from it share them.

    Each worker would otherwise spend about half a second importing them (SciPy,
    pydicom) before its first image. A module that is missing is left to fail where
    it is used, as the file's error row.
    """
    import importlib

    for name in DECODERS:
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def _hash_chunk(paths: Sequence[str], *, root: str, max_bytes: int) -> list[tuple]:
    full = [join(root, p) for p in paths]
    try:
        return [hash_image(f, max_bytes=max_bytes, read=r) for f, r in zip(full, remote_reads(full, max_bytes=max_bytes))]
    finally:
        _scratch.__dict__.pop("arrays", None)  # the buffers live as long as a chunk, not as long as the process


@dataclass(frozen=True)
class HashResult:
    """The hashed manifest, its error rows and counts, and (incremental runs) what was reused."""

    manifest: Manifest
    errors: pd.DataFrame  # path, error_type, message
    hashed: int
    failed: int
    update: UpdateCounts | None = None  # with update=OLD: files new, changed, removed, unchanged since OLD
    signatures: Signatures | None = None  # with update or record_signatures: to write beside the manifest


def _without(message: str, real: str, shown: str, root: str) -> str:
    """``message`` with the file's real path (absolute or relative) replaced by the path the manifest shows."""
    if real == shown:
        return message
    return message.replace(join(root, real), shown).replace(real, shown)


def hash_manifest(
    manifest: Manifest,
    *,
    root: str | os.PathLike | None = None,
    workers: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    max_bytes: int = MAX_BYTES,
    allow_outside_root: bool = False,
    path_map: Mapping[str, str] | None = None,
    update: str | os.PathLike | None = None,
    record_signatures: bool = False,
    on_found: Callable[[int], None] | None = None,
    scheduler=None,
) -> HashResult:
    """Add ``file_sha256``, ``pixel_sha256`` and ``phash`` columns, reading every image once.

    Parameters
    ----------
    manifest : Manifest
        Rows to hash; ``path`` is relative to the root.
    root : str or path, optional
        The folder the paths are relative to [default: the manifest's recorded root];
        a URL (``s3://bucket/prefix``) reads the images through fsspec (:mod:`mdprep.storage`).
    workers : int, optional
        Processes reading images [default: all cores].
    on_progress : callable, optional
        Called with the number of files done.
    max_bytes : int
        The largest file read [default: 2 GiB]; a larger one is a failed row
        (``TooLarge``), as is anything but a regular file (``NotRegularFile``).
    allow_outside_root : bool
        Read paths that lead outside the root (``../x``, absolute paths elsewhere,
        links out of the root) instead of refusing the manifest; a warning counts them.
    path_map : mapping, optional
        Pseudonymised path -> real path (:func:`mdprep.pseudonyms.load_path_map`), for a
        manifest whose paths were pseudonymised: files are read at their real paths, and
        the result and its error rows name only the pseudonymised ones.
    update : path, optional
        A manifest this function wrote before, with its signatures file
        (:mod:`mdprep.incremental`): the hashes of files whose size and modification
        time did not change are taken from it (matched by path); new and changed files,
        and those that failed last time, are read. The result is the one a full run gives.
    record_signatures : bool
        Take every file's signature, for a later ``update`` (implied by ``update``).
    on_found : callable, optional
        Told the number of files to read (fewer than the rows with ``update``).
    scheduler : str, DaskScheduler or distributed.Client, optional
        Hash on a Dask cluster (see :func:`mdprep.executor.map_chunks`); the result is the same.

    Returns
    -------
    HashResult
        The manifest with the hash columns, the error rows (``path``, ``error_type``,
        ``message``, the same on every run) and the counts. A file that cannot be
        read or decoded keeps null hashes; the audit counts such rows as unchecked.

    Raises
    ------
    InputError
        No usable root, or paths that leave it (see
        :func:`mdprep.fileio.paths_outside_root`) without ``allow_outside_root``.
    UsageError
        ``max_bytes`` is below 1; ``update`` made with other options; ``update`` or
        ``record_signatures`` with ``path_map`` or a pseudonymised manifest (file
        times must not sit beside pseudonyms).
    """
    if int(max_bytes) < 1:
        raise UsageError(f"--max-bytes {max_bytes!r}: give a size of at least 1 byte")
    root_s = os.fspath(root) if root is not None else manifest.root
    if not root_s:
        raise InputError("this manifest records no image folder; pass --root DIR, the folder its paths are relative to")
    if is_url(root_s):
        root_s = canonical_root(root_s)
    if not is_url(root_s) and not os.path.isdir(root_s):
        raise InputError(f"image root {root_s!r} is not a folder; pass --root DIR", path=root_s)
    root_abs = root_s if is_url(root_s) else os.path.abspath(root_s)
    paths = manifest.frame["path"].astype("str").tolist()
    if path_map is not None:
        from .pseudonyms import resolve_paths

        read = resolve_paths(manifest, path_map).frame["path"].tolist()
    else:
        read = paths
    options = {"root": root_abs, "max_bytes": int(max_bytes), "allow_outside_root": bool(allow_outside_root), "path_map": path_map is not None}
    incremental = update is not None or record_signatures
    if incremental:
        from .pseudonyms import pseudonymization_state

        refuse_unusable(update=update, record_signatures=record_signatures, pseudonymised=path_map is not None or pseudonymization_state(manifest).passes > 0)
    previous = load_previous(update, command="hash") if update is not None else None
    if previous is not None:
        check_compatible(previous, root=root_abs, options=options)
    outside = paths_outside_root(root_abs, read, allow_outside_root=allow_outside_root)
    if outside.any():
        warnings.warn(f"{int(outside.sum())} row(s) read from outside the image root {root_abs!r} (--allow-outside-root)", MdprepWarning, stacklevel=2)
    if len(read) and pd.Series(read, dtype="str").str.lower().str.endswith(NIFTI_EXTENSIONS).any():
        require_nibabel()  # imported here, before any worker starts: forked workers share it
    task = functools.partial(_hash_chunk, root=root_abs, max_bytes=int(max_bytes))
    chunk_size = None
    if scheduler is None and not is_url(root_abs) and (workers is None or int(workers) > 1):
        # A pool of local processes: small tasks, so that the workers finish together, and
        # the decoders imported once here, so that forked workers do not import them again.
        chunk_size = POOL_CHUNK
        _import_decoders()
    plan = signatures = None
    if not incremental:
        if on_found:
            on_found(len(read))
        parts = map_chunks(task, read, workers=workers, chunk_size=chunk_size, on_progress=on_progress, scheduler=scheduler)
        rows = [r for part in parts for r in part]
    else:
        # One signature per distinct path: rows that share a file share its hashes.
        codes, distinct = pd.factorize(pd.Series(read, dtype="object"))
        reusable = None
        if previous is not None:
            reusable = np.asarray(pc.equal(previous.signatures.files.column("outcome"), "ok").fill_null(False))
        plan = plan_update(root_abs, list(distinct), previous, reusable=reusable)
        fresh = plan.to_read
        if on_found:
            on_found(len(fresh))
        parts = map_chunks(task, fresh, workers=workers, chunk_size=chunk_size, on_progress=on_progress, scheduler=scheduler)
        done = [r for part in parts for r in part]
        signatures = signatures_for(
            plan, "hash", options, results_table(fresh, plan.sizes[~plan.reuse], ["failed" if r[3] else "ok" for r in done], [r[3] for r in done], [r[4] for r in done])
        )
        by_file = _with_reused_hashes(plan, done)
        rows = [by_file[c] for c in codes]
    frame = manifest.frame.copy()
    frame["file_sha256"] = pd.Series([r[0] for r in rows], index=frame.index, dtype="str")
    frame["pixel_sha256"] = pd.Series([r[1] for r in rows], index=frame.index, dtype="str")
    frame["phash"] = pd.array([r[2] for r in rows], dtype="UInt64")
    # Error rows name the manifest's path; a decoder's message that quotes the real one gets the pseudonym.
    failed = [(p, r[3], _without(r[4], real, p, root_abs)) for p, real, r in zip(paths, read, rows) if r[3]]
    errors = pd.DataFrame(failed, columns=["path", "error_type", "message"]).astype("str")
    step = provenance_step("hash", options, [])
    result = manifest.with_frame(frame).with_step(step)
    return HashResult(
        result, errors, hashed=len(paths) - len(failed), failed=len(failed), update=plan.counts if plan is not None else None, signatures=signatures
    )


def _with_reused_hashes(plan: Plan, fresh: list[tuple]) -> list[tuple]:
    """The hash tuples of every planned file, in listing order: those read now and those taken from OLD.

    Only files hashed without error last time are reused (see :func:`hash_manifest`),
    so a reused file's tuple is its three hashes and no error.
    """
    if not plan.reuse.any():
        return fresh
    assert plan.previous is not None
    reused = plan.reused
    old = reused_rows(plan.previous, reused, ["path", *HASH_COLUMNS])
    old = old.take(pa.array(pd.Index(old.column("path").to_pandas()).get_indexer(pd.Index(reused, dtype="object")), pa.int64()))
    file_hash, pixel_hash, phash = (old.column(c).to_pylist() for c in HASH_COLUMNS)
    taken = iter(zip(file_hash, pixel_hash, phash, [""] * len(reused), [""] * len(reused)))
    read = iter(fresh)
    return [next(taken) if keep else next(read) for keep in plan.reuse]

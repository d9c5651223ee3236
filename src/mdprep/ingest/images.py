"""``ingest images``: PNG/JPEG trees, or trees of NIfTI volumes, where patient, study and view come from the path."""

from __future__ import annotations

import functools
import os
import re
import stat
import warnings
from collections import Counter
from typing import Any, BinaryIO, Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from ..errors import EmptyInputError, UsageError, cut_text, examples_text
from ..executor import map_chunks
from ..fileio import listing_fingerprint, open_nonblocking, special_file_kind
from ..manifest import CANONICAL_TYPES, Manifest, check, provenance_step
from ..nifti import NIFTI_EXTENSIONS, VOLUME_COLUMNS, DamagedGzip, NotNifti, TruncatedFile, require_nibabel, volume_columns
from . import IngestReport, IngestResult, errors_frame, extract_groups
from ..manifest import order_columns
from ..incremental import Plan, check_compatible, load_previous, plan_update, results_table, reused_rows, signatures_for
from .files import check_root, collect_files, escaped_path
from ..storage import is_url, join

#: File name endings read as images (case-insensitive).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
#: Named groups that map to canonical columns.
_GROUP_COLUMNS = {"patient": "patient_id", "study": "study_id", "view": "view"}
#: Columns ``ingest images`` fills itself (besides the canonical ones): no regex group may name them.
_IMAGE_COLUMNS = ("width", "height", "color_mode", "format")
#: Group names refused: every column of the manifest (a volume's too), but for the three groups that fill one.
RESERVED_GROUPS: tuple[str, ...] = tuple(n for n in dict.fromkeys([*CANONICAL_TYPES, *_IMAGE_COLUMNS, *VOLUME_COLUMNS]) if n not in _GROUP_COLUMNS)


def _compile(pattern: str) -> tuple[re.Pattern, list[str]]:
    """The compiled pattern and notes on what Python's ``re`` warned about it."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            regex = re.compile(pattern)
    except re.error as exc:
        raise UsageError(f"--patient-regex {pattern!r} is not a valid regular expression: {exc}", pattern=pattern) from exc
    notes = []
    for w in caught:
        text = str(w.message)
        if "nested set" in text:
            text += " (Python's re, which runs the pattern, has no POSIX classes such as [[:digit:]]: write [0-9] or \\d)"
        notes.append(f"--patient-regex {pattern!r}: Python's re warns: {text}")
    if "patient" not in regex.groupindex:
        raise UsageError(
            f"--patient-regex {pattern!r} has no named group 'patient'; write it as (?P<patient>...), for example "
            r"'(?P<patient>patient\d+)/(?P<study>study\d+)/'",
            pattern=pattern,
        )
    clashes = [name for name in regex.groupindex if name in RESERVED_GROUPS]
    if clashes:
        raise UsageError(
            f"--patient-regex {pattern!r} has the group(s) {', '.join(map(repr, clashes))}, named after column(s) the manifest "
            f"fills itself; rename them (reserved: {', '.join(RESERVED_GROUPS)}; the groups 'patient', 'study' and 'view' "
            "fill patient_id, study_id and view, and any other name becomes a column of its own)",
            pattern=pattern,
            groups=clashes,
        )
    return regex, notes


def compile_path_regex(pattern: str) -> re.Pattern:
    """Compile ``pattern`` and insist on a named group ``patient`` and on no group named after a manifest column.

    The pattern is run with Python's :mod:`re`, so what it means is what Python says
    (``\\d`` takes any Unicode digit; ``[[:digit:]]`` is not a POSIX class).

    >>> compile_path_regex(r"(?P<patient>patient\\d+)/").groupindex["patient"]
    1
    >>> compile_path_regex(r"(?P<patient>p\\d+)/(?P<width>\\d+)")
    Traceback (most recent call last):
    ...
    mdprep.errors.UsageError: --patient-regex '(?P<patient>p\\\\d+)/(?P<width>\\\\d+)' has the group(s) 'width', named after column(s) the manifest fills itself; rename them (reserved: image_id, path, patient_id, study_id, series_uid, sop_uid, accession, sex, age, study_date, split, fold, width, height, color_mode, format, depth, frames, voxel_spacing, orientation, axis_codes, datatype; the groups 'patient', 'study' and 'view' fill patient_id, study_id and view, and any other name becomes a column of its own)
    """
    return _compile(pattern)[0]


#: The end of a PNG: the IEND chunk (length 0, type, CRC).
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_JPEG_EOI = b"\xff\xd9"
#: Bytes some writers pad a file with after its last marker.
_PADDING = b"\x00\r\n \xff"
_TAIL = 64


def _png_complete(fh: BinaryIO, size: int) -> bool:
    """True when the PNG's chunks run to IEND within the file (trailing bytes after IEND allowed)."""
    fh.seek(max(0, size - _TAIL))
    if fh.read().rstrip(_PADDING[:-1]).endswith(_PNG_END):
        return True
    pos = 8  # walk the chunks: length, type, data, CRC
    while pos + 8 <= size:
        fh.seek(pos)
        head = fh.read(8)
        length = int.from_bytes(head[:4], "big")
        if head[4:8] == b"IEND":
            return pos + 12 <= size
        pos += 12 + length
    return False


def _jpeg_complete(fh: BinaryIO, size: int) -> bool:
    """True when the JPEG's markers run to EOI within the file (trailing bytes after EOI allowed)."""
    fh.seek(max(0, size - _TAIL))
    if fh.read().rstrip(_PADDING).endswith(_JPEG_EOI):
        return True
    # Walk the marker segments (an EXIF thumbnail's EOI is inside APP1 and skipped); entropy-coded data
    # after SOS holds no 0xFF that is followed by anything but 0x00 or a restart marker.
    fh.seek(0)
    data = fh.read()
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xD9:
            return True
        if marker == 0xFF or 0xD0 <= marker <= 0xD8 or marker == 0x01:
            pos += 1 if marker == 0xFF else 2
            continue
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == 0xDA:  # scan data: up to the next marker that is not stuffing or a restart
            while True:
                pos = data.find(b"\xff", pos)
                if pos < 0 or pos + 1 >= len(data):
                    return False
                if data[pos + 1] == 0x00 or 0xD0 <= data[pos + 1] <= 0xD7:
                    pos += 2
                    continue
                break
    return False


def _incomplete(im: Any, fh: BinaryIO, size: int) -> str | None:
    """Why an image whose header PIL read is cut short, or None when its data reach their end.

    Cheap: PNG and JPEG look for their end marker (IEND, EOI) in the last bytes
    (walking the chunks or markers only when it is not there, so data after the end
    marker is allowed); TIFF checks that its strips or tiles lie within the file; an
    uncompressed BMP that its pixel rows do. No pixel is decoded.
    """
    fmt = im.format
    if fmt == "PNG":
        return None if _png_complete(fh, size) else f"the PNG ends at byte {size} before its IEND chunk"
    if fmt in ("JPEG", "MPO"):
        return None if _jpeg_complete(fh, size) else f"the JPEG ends at byte {size} before its end-of-image marker (FFD9)"
    if fmt == "TIFF":
        tags = im.tag_v2
        offsets = tags.get(273) or tags.get(324) or ()
        counts = tags.get(279) or tags.get(325) or ()
        ends = [int(o) + int(c) for o, c in zip(offsets, counts)]
        if ends and max(ends) > size:
            return f"the TIFF's image data runs to byte {max(ends)} but the file ends at {size}"
        return None
    for tile in im.tile:
        if tile[0] == "raw" and len(tile[3]) >= 2 and isinstance(tile[3][1], int):
            end = tile[2] + abs(tile[3][1]) * (tile[1][3] - tile[1][1])
            if end > size:
                return f"the {fmt} image data runs to byte {end} but the file ends at {size}"
    return None


def _image_row(path: str, Image: Any) -> tuple:
    """(outcome, size, width, height, mode, format, error_type, message) of one image."""
    fd, st = open_nonblocking(path)
    if stat.S_ISDIR(st.st_mode):
        os.close(fd)
        return ("skipped", 0, None, None, None, None, "Folder", "a folder, not a file; not read (list the files in it)")
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        kind = special_file_kind(st.st_mode)
        return ("skipped", 0, None, None, None, None, kind, f"not a regular file ({kind}); not read")
    return _file_row(open(fd, "rb"), st.st_size, path, Image)


def _file_row(fh: BinaryIO, size: int, path: str, Image: Any) -> tuple:
    """:func:`_image_row` of an open file of ``size`` bytes (closed at the end): a local file or a ranged object."""
    with fh:
        try:
            with Image.open(fh) as im:
                cut = _incomplete(im, fh, size)
                if cut:
                    return ("failed", size, None, None, None, None, "TruncatedFile", cut)
                return ("ok", size, im.size[0], im.size[1], im.mode, im.format, "", "")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            return ("failed", size, None, None, None, None, "DecompressionBomb", str(exc))
        except Image.UnidentifiedImageError:
            what = "an empty file" if size == 0 else "not an image Pillow can read (unknown format, or the header is damaged)"
            return ("failed", size, None, None, None, None, "UnidentifiedImageError", what)
        except OSError as exc:
            if exc.strerror:
                return ("failed", size, None, None, None, None, type(exc).__name__, f"cannot read the file: {exc.strerror}")
            # PIL's own OSErrors ("image file is truncated", ...) name the file object: quote the path instead.
            text = (str(exc) or repr(exc)).replace(repr(fh), repr(os.path.basename(path)))
            return ("failed", size, None, None, None, None, type(exc).__name__, cut_text(text))


def _read_image_headers(relpaths: Sequence[str], *, root: str) -> list[tuple]:
    """Width, height, mode and format from each image's header, and a check that its data are complete.

    No pixel is decoded: the completeness check (:func:`_incomplete`) looks at the
    end of the file. An image whose size PIL considers a decompression bomb (more
    than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels, warning or error alike) fails with
    ``DecompressionBomb``: every later step that decodes it would run out of memory.
    FIFOs, sockets, devices and folders are skipped without being read; any other
    error is the file's error row, never the run's. Other warnings Pillow gives are
    returned as the row's notes (last item), one per kind.

    Under a URL root the chunk's objects are opened for ranged reads, their first
    :data:`mdprep.storage.IMAGE_HEAD` bytes and last 64 bytes fetched concurrently
    (:func:`mdprep.storage.open_objects`); the header and the end-marker check
    then read from those, and fetch more only for a header that goes on or an end
    marker that is not in the last bytes.
    """
    from PIL import Image

    opened = None
    if is_url(root):
        from ..storage import IMAGE_HEAD, open_objects

        opened = open_objects(root, relpaths, head=IMAGE_HEAD, tail=_TAIL)
    out = []
    for rel in relpaths:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                path = join(root, rel)
                if opened is None:
                    row = _image_row(path, Image)
                elif isinstance(opened[path], OSError):
                    raise opened[path]
                else:
                    row = _file_row(opened[path], opened[path].size, path, Image)
            except OSError as exc:
                row = ("failed", 0, None, None, None, None, type(exc).__name__, f"cannot read the file: {exc.strerror or exc}")
            except Exception as exc:  # noqa: BLE001 - any reader failure is this file's error row
                row = ("failed", 0, None, None, None, None, type(exc).__name__, cut_text(str(exc) or repr(exc)))
        notes = tuple(sorted({f"Pillow warned: {cut_text(str(w.message).splitlines()[0] if str(w.message) else '', 120)}" for w in caught}))
        out.append(row + (notes,))
    return out


def _volume_row(path: str) -> tuple:
    """(outcome, size, *VOLUME_COLUMNS, error_type, message, notes) of one NIfTI file."""
    fd, st = open_nonblocking(path)
    if stat.S_ISDIR(st.st_mode):
        os.close(fd)
        return ("skipped", 0, *_NO_VOLUME, "Folder", "a folder, not a file; not read (list the files in it)", ())
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        kind = special_file_kind(st.st_mode)
        return ("skipped", 0, *_NO_VOLUME, kind, f"not a regular file ({kind}); not read", ())
    return _volume_file_row(open(fd, "rb"), st.st_size)


_NO_VOLUME = (None,) * len(VOLUME_COLUMNS)


def _volume_file_row(fh: BinaryIO, size: int) -> tuple:
    """:func:`_volume_row` of an open file of ``size`` bytes (closed at the end): a local file or a ranged object."""
    with fh:
        try:
            values, notes = volume_columns(fh, size)
            return ("ok", size, *values, "", "", notes)
        except (NotNifti, TruncatedFile, DamagedGzip) as exc:
            return ("failed", size, *_NO_VOLUME, type(exc).__name__, str(exc), ())
        except OSError as exc:
            return ("failed", size, *_NO_VOLUME, type(exc).__name__, f"cannot read the file: {exc.strerror or cut_text(str(exc) or repr(exc))}", ())
        except Exception as exc:  # noqa: BLE001 - nibabel's HeaderDataError and the like: this file's error row
            return ("failed", size, *_NO_VOLUME, type(exc).__name__, cut_text(str(exc) or repr(exc)), ())


def _read_volume_headers(relpaths: Sequence[str], *, root: str) -> list[tuple]:
    """The :data:`~mdprep.nifti.VOLUME_COLUMNS` of each NIfTI file, from its header, and a check that its voxel data are complete.

    The header only (:func:`mdprep.nifti.volume_columns`): the first bytes, and
    for a gzip-compressed file its last 4 (the uncompressed size); the voxel data
    are inflated only when the two disagree. Folders and special files are skipped
    without being read; any error is the file's error row. Under a URL root the
    objects are opened as for images (:func:`_read_image_headers`): their first
    :data:`mdprep.storage.IMAGE_HEAD` and last 64 bytes fetched concurrently.
    """
    opened = None
    if is_url(root):
        from ..storage import IMAGE_HEAD, open_objects

        opened = open_objects(root, relpaths, head=IMAGE_HEAD, tail=_TAIL)
    out = []
    for rel in relpaths:
        try:
            path = join(root, rel)
            if opened is None:
                row = _volume_row(path)
            elif isinstance(opened[path], OSError):
                raise opened[path]
            else:
                row = _volume_file_row(opened[path], opened[path].size)
        except OSError as exc:
            row = ("failed", 0, *_NO_VOLUME, type(exc).__name__, f"cannot read the file: {exc.strerror or exc}", ())
        except Exception as exc:  # noqa: BLE001 - any reader failure is this file's error row
            row = ("failed", 0, *_NO_VOLUME, type(exc).__name__, cut_text(str(exc) or repr(exc)), ())
        out.append(row)
    return out


def _mixed_error(root: str, images: pd.Series, volumes: pd.Series) -> UsageError:
    shown = escaped_path(root)
    return UsageError(
        f"{shown} holds 2D images ({examples_text(images.head(2).tolist(), len(images), limit=2)}) and NIfTI volumes "
        f"({examples_text(volumes.head(2).tolist(), len(volumes), limit=2)}); a manifest has one row per 2D image or one per "
        f"volume, never both: ingest each into its own manifest with --files-from, listing paths relative to ROOT, for example "
        f"(cd {shown} && find . -iname '*.nii' -o -iname '*.nii.gz') > volumes.txt and "
        f"(cd {shown} && find . -type f ! -iname '*.nii' ! -iname '*.nii.gz') > images.txt, then "
        f"mdprep ingest images {shown} --files-from volumes.txt ... and again with images.txt",
        path=shown,
        images=len(images),
        volumes=len(volumes),
    )


def _no_match_error(regex: re.Pattern, images: pd.Series, notes: Sequence[str] = ()) -> UsageError:
    examples = examples_text(images.head(3).tolist(), len(images), limit=3)
    warned = "".join(f"; {note}" for note in notes)
    return UsageError(
        f"--patient-regex {regex.pattern!r} matches none of the {len(images)} image paths, for example {examples}; "
        f"it is searched in each path relative to ROOT, so write it for paths like these{warned}",
        pattern=regex.pattern,
        examples=images.head(3).tolist(),
    )


def ingest_images(
    root: str | os.PathLike,
    *,
    patient_regex: str,
    files: Iterable[str] | None = None,
    allow_outside_root: bool = False,
    workers: int | None = None,
    on_found: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    update: str | os.PathLike | None = None,
    record_signatures: bool = False,
    scheduler=None,
) -> IngestResult:
    """Index a folder of PNG/JPEG images, or of NIfTI volumes, into a manifest.

    Patient, study and view come from the named groups ``patient`` (required),
    ``study`` and ``view`` of ``patient_regex``, searched with Python's :mod:`re` in
    each file's path relative to ``root``; any other named group becomes a column of
    its own, unless it is named after a column of the manifest (:data:`RESERVED_GROUPS`).
    A study id is qualified by its patient (``patient00001/study1``) because public
    sets number studies per patient. Width and height come from the image header.

    Files with other endings are skipped; images whose path does not match the
    regex (or whose ``patient`` group is empty), whose header cannot be read
    (decompression bombs included), or whose data end early (``TruncatedFile``,
    see :func:`_incomplete`) fail with a row in ``errors``. Special entries of the
    tree are counted as in :func:`mdprep.ingest.files.iter_tree`.

    A tree of NIfTI volumes (``.nii``, ``.nii.gz``; nibabel, ``pip install
    'mdprep[nifti]'``) gives one row per volume file: every row of such a manifest
    is a volume (its level is ``volume``), with the columns
    :data:`mdprep.nifti.VOLUME_COLUMNS` in place of the 2-D ones (width, height,
    depth and frames of the stored array, ``voxel_spacing`` in mm, ``orientation``
    the plane of the slices, ``axis_codes`` such as ``LPS``, ``datatype`` and
    ``format``), read from the header only (:func:`mdprep.nifti.volume_columns`).
    A volume whose file ends before its voxel data (``TruncatedFile``), that is no
    single-file NIfTI (``NotNifti``) or whose header nibabel refuses fails with a row
    in ``errors``.

    ``update`` (a manifest this function wrote, with its signatures) reads only the
    images that are new or whose size or modification time changed, and
    ``record_signatures`` takes the signatures for a later update, as in
    :func:`mdprep.ingest.ingest_dicom`.

    Parameters
    ----------
    root : path or URL
        Folder walked recursively (``s3://bucket/prefix`` and other fsspec URLs too);
        manifest paths are relative to it.
    patient_regex : str
        Searched in each relative path; named groups ``patient`` (required), ``study``,
        ``view`` and any other, which becomes a column.
    files : iterable of str, optional
        Read these files (absolute or relative to ``root``) instead of walking.
    allow_outside_root : bool
        Follow symlinks whose target lies outside ``root``; by default they are
        skipped entries (``OutsideRoot``).
    workers : int, optional
        Processes; all cores by default.
    on_found, on_progress : callable, optional
        Told the number of files found (to read, with ``update``), then the number read
        after each chunk.
    update : path, optional
        A manifest this function wrote before, with its signatures file: only new or
        changed files are read (see above).
    record_signatures : bool
        Take every file's signature, for a later ``update`` (implied by ``update``).
    scheduler : str, DaskScheduler or distributed.Client, optional
        Read on a Dask cluster (see :func:`mdprep.executor.map_chunks`); the result is the same.

    Returns
    -------
    IngestResult
        One row per image (or volume); skipped and failed files in ``errors``, counts
        that reconcile in ``report``; with ``update`` or ``record_signatures``, the
        ``signatures`` to write next to the manifest.

    Raises
    ------
    UsageError
        When ``patient_regex`` is invalid, has no ``patient`` group, has a group named
        after a manifest column, matches none of the image paths (the message shows
        some of them), or leaves its ``patient`` group empty in every match; or
        ``update`` was made with another pattern or other options. Also when
        ``root`` holds both 2-D images and NIfTI volumes (the message says how to
        ingest each separately), or holds volumes and nibabel is missing.
    InputError
        ``update`` cannot be updated (:func:`mdprep.incremental.load_previous`) or
        was made from another root.
    EmptyInputError
        When no file under ``root`` is an image or a volume.

    Examples
    --------
    >>> import tempfile
    >>> from mdprep.synthetic import write_image_tree
    >>> root = tempfile.mkdtemp()
    >>> _ = write_image_tree(root, patients=2, studies=1)
    >>> r = ingest_images(root, patient_regex=r"(?P<patient>patient\\d+)/(?P<study>study\\d+)/", workers=1)
    >>> sorted(r.manifest.frame["patient_id"].unique())
    ['patient00000', 'patient00001']
    """
    regex, regex_notes = _compile(patient_regex)
    options = {"patient_regex": regex.pattern, "file_list": files is not None, "allow_outside_root": allow_outside_root}
    previous = None
    if update is not None:
        previous = load_previous(update, command="ingest images")
        check_compatible(previous, root=check_root(root), options=options)
    listing = collect_files(root, files, allow_outside_root=allow_outside_root)
    rels = pd.Series(listing.relpaths, dtype="str")
    lowered = rels.str.lower()
    is_image = lowered.str.endswith(IMAGE_EXTENSIONS).to_numpy(dtype=bool) if len(rels) else np.zeros(0, bool)
    is_volume = lowered.str.endswith(NIFTI_EXTENSIONS).to_numpy(dtype=bool) if len(rels) else np.zeros(0, bool)
    if not is_image.any() and not is_volume.any():
        shown = escaped_path(os.fspath(root))
        others = rels.tolist() + [row[0] for row in listing.refused]
        raise EmptyInputError(
            f"none of the {listing.found} entries under {shown} is an image ({', '.join(IMAGE_EXTENSIONS)}) or a NIfTI volume "
            f"({', '.join(NIFTI_EXTENSIONS)}), for example {examples_text(others[:3], len(others), limit=3)}; for DICOM files "
            "use `mdprep ingest dicom`",
            path=shown,
        )
    if is_image.any() and is_volume.any():
        raise _mixed_error(os.fspath(root), rels[is_image], rels[is_volume])
    volumes = bool(is_volume.any())
    if volumes:
        require_nibabel()
        is_image = is_volume  # the files read: volumes, one row each
    extensions, columns = (NIFTI_EXTENSIONS, VOLUME_COLUMNS) if volumes else (IMAGE_EXTENSIONS, _IMAGE_COLUMNS)
    # Python's re, always: the pattern means what compiling it checked (RE2 differs on \d, POSIX classes, ...).
    groups_all, matched = extract_groups(rels, regex, engine="python")
    if not matched[is_image].any():
        raise _no_match_error(regex, rels[is_image], regex_notes)
    # A group that matched nothing is null: a path whose 'patient' group is empty gives no patient.
    has_patient = groups_all["patient"].notna().to_numpy(dtype=bool)
    if not (matched & has_patient)[is_image].any():
        examples = rels[is_image & matched]
        raise UsageError(
            f"--patient-regex {regex.pattern!r} matches {len(examples)} image path(s), but its group 'patient' is empty in "
            f"every one, for example {examples_text(examples.head(3).tolist(), len(examples), limit=3)}; make the group "
            "match at least one character (+ rather than *)",
            pattern=regex.pattern,
        )
    to_read_mask = is_image & matched & has_patient
    to_read = rels[to_read_mask].tolist()
    plan = plan_update(listing.root, to_read, previous) if previous is not None or record_signatures else None
    fresh = plan.to_read if plan is not None else to_read
    if on_found:
        on_found(len(fresh))
    reader = _read_volume_headers if volumes else _read_image_headers
    parts = map_chunks(functools.partial(reader, root=listing.root), fresh, workers=workers, on_progress=on_progress, scheduler=scheduler)
    # Each header: (outcome, size, *columns, error_type, message, notes).
    headers = [h for part in parts for h in part]
    signatures = None
    if plan is not None:
        read = results_table(
            fresh, [h[1] for h in headers], [h[0] for h in headers], [h[-3] for h in headers], [h[-2] for h in headers],
            notes=[h[-1] if h[0] == "ok" else () for h in headers],
        )
        signatures = signatures_for(plan, "ingest images", options, read)
        if plan.reuse.any():
            headers = _with_reused_headers(plan, headers, columns)

    error_rows = list(listing.refused)
    error_rows += [(r, "skipped", "NotImage", f"not one of {', '.join(extensions)}") for r in rels[~is_image]]
    error_rows += [
        (r, "failed", "PatternMismatch", f"the path does not match --patient-regex {regex.pattern!r}")
        for r in rels[is_image & ~matched]
    ]
    error_rows += [
        (r, "failed", "PatternMismatch", "the group 'patient' of --patient-regex matched an empty string")
        for r in rels[is_image & matched & ~has_patient]
    ]
    ok_mask = np.array([h[0] == "ok" for h in headers], dtype=bool)
    error_rows += [(rel, h[0], h[-3], h[-2]) for rel, h in zip(to_read, headers) if h[0] != "ok"]
    notes: Counter[str] = Counter(note for h in headers if h[0] == "ok" for note in h[-1])

    read_ok = np.zeros(len(rels), dtype=bool)
    read_ok[np.flatnonzero(to_read_mask)[ok_mask]] = True
    ok_paths = rels[read_ok].reset_index(drop=True)
    groups = groups_all[read_ok].reset_index(drop=True)
    frame = pd.DataFrame({"image_id": ok_paths, "path": ok_paths})
    for name in regex.groupindex:
        frame[_GROUP_COLUMNS.get(name, name)] = groups[name]
    if "study_id" in frame.columns:
        frame["study_id"] = (frame["patient_id"] + "/" + frame["study_id"]).where(frame["study_id"].notna())
    ok_headers = [h for h in headers if h[0] == "ok"]
    if volumes:
        _add_volume_columns(frame, [h[2:-3] for h in ok_headers])
    else:
        frame["width"] = pd.array([h[2] for h in ok_headers], dtype="Int32")
        frame["height"] = pd.array([h[3] for h in ok_headers], dtype="Int32")
        frame["color_mode"] = pd.Series([h[4] for h in ok_headers], dtype="str")
        frame["format"] = pd.Series([h[5] for h in ok_headers], dtype="str")
    frame = order_columns(frame.reset_index(drop=True))

    sizes = [h[1] for h in headers]
    inputs = [listing_fingerprint(os.fspath(root), to_read, sizes)]
    manifest = Manifest(frame=frame, labels=(), root=listing.root, level="volume" if volumes else "image").with_step(
        provenance_step("ingest images", options, inputs)
    )
    check(manifest)
    reasons = Counter(f"{o}:{t}" for _, o, t, _ in error_rows)
    report = IngestReport(
        found=listing.found,
        ingested=len(frame),
        skipped=sum(1 for _, o, _, _ in error_rows if o == "skipped"),
        failed=sum(1 for _, o, _, _ in error_rows if o == "failed"),
        reasons=dict(sorted(reasons.items())),
        notes=tuple(regex_notes) + tuple(f"{n} file(s): {note}" for note, n in sorted(notes.items())),
        update=plan.counts if plan is not None else None,
    )
    return IngestResult(manifest=manifest, errors=errors_frame(sorted(error_rows)), report=report, signatures=signatures)


#: Arrow type of each volume column (the others are text).
_VOLUME_TYPES = {"width": "Int32", "height": "Int32", "depth": "Int32", "frames": "Int32", "voxel_spacing": pd.ArrowDtype(pa.list_(pa.float64()))}


def _add_volume_columns(frame: pd.DataFrame, values: Sequence[tuple]) -> None:
    """The :data:`~mdprep.nifti.VOLUME_COLUMNS` of the read volumes (one tuple each, in that order) added to ``frame``."""
    by_column = list(zip(*values)) if values else [()] * len(VOLUME_COLUMNS)
    for name, column in zip(VOLUME_COLUMNS, by_column):
        kind = _VOLUME_TYPES.get(name, "str")
        frame[name] = pd.Series(list(column), dtype=kind) if kind != "Int32" else pd.array(list(column), dtype="Int32")


def _with_reused_headers(plan: Plan, fresh: list[tuple], columns: Sequence[str] = _IMAGE_COLUMNS) -> list[tuple]:
    """The header tuples of every planned file, in listing order: those read now and those of OLD.

    A reused file's ``columns`` (an image's width, height, mode and format, a
    volume's :data:`~mdprep.nifti.VOLUME_COLUMNS`) come from OLD's row, its size,
    outcome, error and the reader's warnings from the signatures.
    """
    assert plan.previous is not None
    old = plan.old_files()
    paths = old.column("path").to_pylist()
    outcome = old.column("outcome").to_pylist()
    rows = reused_rows(plan.previous, [p for p, o in zip(paths, outcome) if o == "ok"], ["path", *columns])
    by_path = dict(zip(rows.column("path").to_pylist(), zip(*(rows.column(c).to_pylist() for c in columns))))
    empty = (None,) * len(columns)
    reused = iter(
        (o, size, *(by_path[p] if o == "ok" else empty), t, m, tuple(n))
        for p, o, size, t, m, n in zip(
            paths, outcome, old.column("read_size").to_pylist(), old.column("error_type").to_pylist(),
            old.column("message").to_pylist(), old.column("notes").to_pylist(),
        )
    )
    read = iter(fresh)
    return [next(reused) if keep else next(read) for keep in plan.reuse]

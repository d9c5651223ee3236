"""NIfTI-1 and NIfTI-2 volumes: their headers for ``ingest images``, their voxels for ``mdprep hash``.

nibabel (``pip install 'mdprep[nifti]'``) parses the header and gives the
orientation helpers; the voxel data are read here, in chunks, straight from the
file's bytes (gzip-compressed or not, told by the bytes, not the name), so that
hashing a volume holds the voxel array once and no copy of it:

* :func:`volume_columns` reads the header only and checks that the file holds
  all the voxel data the header declares (the completeness check of ``ingest
  images``, as PNG and JPEG files are checked for their end marker);
* :func:`volume_hashes` gives ``pixel_sha256`` and ``phash`` of a volume after
  reorienting it to the closest canonical (RAS+) axes, so that the same volume
  stored with its axes flipped or permuted (and the affine adjusted) gets the
  same hashes.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import zlib
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterable, Iterator

import numpy as np

from .errors import UsageError

#: File name endings read as NIfTI volumes (case-insensitive).
NIFTI_EXTENSIONS = (".nii", ".nii.gz")
#: The columns ``ingest images`` fills for a volume row.
VOLUME_COLUMNS = ("width", "height", "depth", "frames", "voxel_spacing", "orientation", "axis_codes", "datatype", "format")
#: A slice plane whose normal is more than this many degrees from every world axis is ``oblique``.
OBLIQUE_DEGREES = 10.0
#: Bytes of a NIfTI-2 header, the larger of the two.
HEADER_BYTES = 540
#: Bytes read (or inflated) at a time.
CHUNK = 1 << 20
#: Bytes of voxels converted at a time while a volume is hashed (a slab of slices).
SLAB_BYTES = 4 << 20

_GZIP_MAGIC = b"\x1f\x8b"
_FORMATS = {348: "NIfTI-1", 540: "NIfTI-2"}
#: Metres and microns to millimetres; the other spatial units (mm, unknown) are kept.
_TO_MM = {"meter": 1000.0, "micron": 0.001}
_PLANES = ("sagittal", "coronal", "axial")  # by the world axis (x: L-R, y: P-A, z: I-S) the slice normal follows


class NotNifti(ValueError):
    """The file is not a single-file NIfTI-1 or NIfTI-2 volume."""


class TruncatedFile(ValueError):
    """The file ends before the voxel data its header declares."""


class DamagedGzip(ValueError):
    """The file's gzip stream cannot be inflated."""


def is_nifti(path: str) -> bool:
    """Whether ``path`` ends in ``.nii`` or ``.nii.gz`` (any case).

    >>> is_nifti("a/b.NII.GZ"), is_nifti("a/b.nii"), is_nifti("a/b.png")
    (True, True, False)
    """
    return path.lower().endswith(NIFTI_EXTENSIONS)


def require_nibabel() -> Any:
    """The nibabel module, or a UsageError that says how to install it."""
    try:
        import nibabel
    except ImportError as exc:
        raise UsageError(f"reading NIfTI volumes (.nii, .nii.gz) needs nibabel ({exc}); install it with pip install 'mdprep[nifti]'") from None
    return nibabel


@dataclass(frozen=True)
class VolumeHeader:
    """What :func:`parse_header` read: enough to find, shape, scale and orient the voxels."""

    format: str  # "NIfTI-1" or "NIfTI-2"
    shape: tuple[int, ...]  # as the header gives it: (x, y, z, t, ...) of the stored array
    dtype: np.dtype  # stored voxels, in the header's byte order
    datatype: str  # nibabel's name of the datatype code: int16, float32, RGB, ...
    spacing: tuple[float, float, float]  # voxel sizes along x, y, z, in mm
    affine: np.ndarray  # voxel to world (sform, else qform, else from the voxel sizes: nibabel's best affine)
    offset: int  # byte of the stream where the voxels start
    slope: float | None  # scl_slope, None when the values are stored as they are
    inter: float | None
    notes: tuple[str, ...]  # what nibabel's header checks fixed or warned about

    @property
    def data_bytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize  # Python integers: no overflow for absurd NIfTI-2 sizes

    @property
    def data_end(self) -> int:
        """The byte of the (uncompressed) stream where the voxel data end."""
        return self.offset + self.data_bytes

    @property
    def scaled(self) -> bool:
        """Whether the stored values go through scl_slope and scl_inter (a slope of 1 and an intercept of 0 do nothing)."""
        return self.slope is not None and not (self.slope == 1.0 and self.inter == 0.0)


def parse_header(head: bytes) -> VolumeHeader:
    """The header at the start of ``head`` (the first :data:`HEADER_BYTES` of the uncompressed stream, or all of a shorter one).

    The first four bytes (``sizeof_hdr``: 348 or 540, in either byte order) tell
    NIfTI-1 from NIfTI-2 and the byte order; nibabel's header checks then run
    with their fixes (zero voxel sizes taken as 1, ...), problems of level 40 and
    above (an unknown datatype, a voxel offset inside the header) raise, lower
    ones become notes.

    Raises
    ------
    NotNifti
        Neither header size, or the magic of a ``.hdr``/``.img`` pair or of nothing known.
    TruncatedFile
        ``head`` ends inside the header.
    nibabel.spatialimages.HeaderDataError
        A header nibabel refuses, or one that declares no voxel at all.

    Examples
    --------
    >>> parse_header(b"\\x00" * 8)
    Traceback (most recent call last):
    ...
    mdprep.nifti.NotNifti: not a NIfTI file: its first 4 bytes (sizeof_hdr) give 0, not 348 (NIfTI-1) or 540 (NIfTI-2)
    """
    nib = require_nibabel()
    from nibabel.batteryrunners import BatteryRunner
    from nibabel.spatialimages import HeaderDataError

    if len(head) < 4:
        raise NotNifti("an empty file" if not head else f"{len(head)} bytes, too short for a NIfTI header")
    little, big = int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big")
    size = little if little in _FORMATS else big if big in _FORMATS else None
    if size is None:
        raise NotNifti(f"not a NIfTI file: its first 4 bytes (sizeof_hdr) give {little}, not 348 (NIfTI-1) or 540 (NIfTI-2)")
    fmt = _FORMATS[size]
    if len(head) < size:
        raise TruncatedFile(f"the file ends at byte {len(head)}, inside its {size}-byte {fmt} header")
    cls = nib.Nifti1Header if size == 348 else nib.Nifti2Header
    hdr = cls(head[:size], endianness="<" if little == size else ">", check=False)
    magic = hdr["magic"].item()
    if magic == cls.pair_magic:
        raise NotNifti(f"the header of a .hdr/.img pair (magic {magic.decode('latin-1')!r}), whose voxels are in another file; save it as one .nii file")
    if magic != cls.single_magic:
        raise NotNifti(f"not a single-file {fmt}: its magic is {magic!r}, not {cls.single_magic!r}")
    hdr, reports = BatteryRunner(cls._get_checks()).check_fix(hdr)
    notes = []
    for report in reports:
        if report.problem_level >= 40:
            raise HeaderDataError(report.problem_msg)
        if report.problem_level >= 30:
            notes.append(f"nibabel: {report.problem_msg}" + (f" ({report.fix_msg})" if report.fix_msg else ""))
    offset = int(hdr.get_data_offset())
    if offset < size + 4:
        raise HeaderDataError(f"vox_offset {offset} lies inside the header; a single-file {fmt} stores its voxels from byte {size + 4} on")
    shape = tuple(int(n) for n in hdr.get_data_shape())
    if not shape or 0 in shape:
        raise HeaderDataError(f"the header gives the shape {shape}, which holds no voxel")
    unit = hdr.get_xyzt_units()[0]
    # float32 in the header: each size as its shortest text (0.8, not 0.800000011920929), then in mm
    pixdim = [float(str(v)) * _TO_MM.get(unit, 1.0) for v in hdr["pixdim"][1:4]]
    slope, inter = hdr.get_slope_inter()
    return VolumeHeader(
        format=fmt,
        shape=shape,
        dtype=hdr.get_data_dtype(),
        datatype=str(hdr.get_value_label("datatype")),
        spacing=tuple(pixdim),
        affine=np.asarray(hdr.get_best_affine(), dtype=np.float64),
        offset=offset,
        slope=slope,
        inter=inter,
        notes=tuple(notes),
    )


def slice_plane(affine: np.ndarray) -> str | None:
    """``axial``, ``coronal``, ``sagittal`` or ``oblique``: the plane of the slices (the first two voxel axes).

    The slices' normal (the cross product of the first two columns of the affine)
    names the plane by the world axis it follows; more than :data:`OBLIQUE_DEGREES`
    away from every axis it is ``oblique``. None for an affine that spans no plane.

    >>> slice_plane(np.diag([-0.8, -0.8, 2.5, 1.0])), slice_plane(np.array([[1., 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]]))
    ('axial', 'coronal')
    """
    normal = np.cross(affine[:3, 0], affine[:3, 1])
    norm = float(np.linalg.norm(normal))
    if not math.isfinite(norm) or norm == 0.0:
        return None
    unit = np.abs(normal) / norm
    k = int(np.argmax(unit))
    return _PLANES[k] if unit[k] >= math.cos(math.radians(OBLIQUE_DEGREES)) else "oblique"


def axis_codes(affine: np.ndarray) -> str | None:
    """nibabel's axis codes of the affine (``RAS``, ``LPS``, ...): where each voxel axis points; None when one points nowhere.

    >>> axis_codes(np.diag([-0.8, -0.8, 2.5, 1.0]))
    'LPS'
    """
    from nibabel.orientations import aff2axcodes

    codes = aff2axcodes(affine)
    return None if any(c is None for c in codes) else "".join(codes)


# ----------------------------------------------------------------------------- reading the stream


def _inflate(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The uncompressed bytes of the gzip stream in ``chunks`` (every member; bytes after the last are ignored).

    Pieces of at most :data:`CHUNK` bytes. The iteration simply ends when the stream
    is cut short (the caller compares what it got with what the header declares).
    """
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    done = False
    for chunk in chunks:
        data = bytes(chunk)
        while data and not done:
            try:
                out = d.decompress(data, CHUNK)
            except zlib.error as exc:
                raise DamagedGzip(f"the gzip stream is damaged: {exc}") from None
            if out:
                yield out
            if d.eof:
                data = d.unused_data
                if data[:2] == _GZIP_MAGIC:  # the next member
                    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                else:
                    done = True
            else:
                data = d.unconsumed_tail


class _Stream:
    """Reads of exact sizes from an iterator of byte pieces."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces
        self._left = memoryview(b"")
        self.consumed = 0  # bytes handed out or skipped

    def _next(self) -> bool:
        for piece in self._pieces:
            if piece:
                self._left = memoryview(piece)
                return True
        return False

    def readinto(self, out: memoryview) -> int:
        """Fill ``out`` as far as the stream goes; the bytes written."""
        done = 0
        while done < len(out):
            if not self._left and not self._next():
                break
            n = min(len(self._left), len(out) - done)
            out[done : done + n] = self._left[:n]
            self._left = self._left[n:]
            done += n
        self.consumed += done
        return done

    def read(self, n: int) -> bytes:
        buf = bytearray(n)
        got = self.readinto(memoryview(buf))
        return bytes(buf[:got])

    def skip(self, n: int) -> int:
        """Pass over ``n`` bytes; the bytes passed."""
        done = 0
        while done < n:
            if not self._left and not self._next():
                break
            k = min(len(self._left), n - done)
            self._left = self._left[k:]
            done += k
        self.consumed += done
        return done

    def drain(self) -> int:
        """Pass over the rest; the bytes passed."""
        n = len(self._left)
        self._left = memoryview(b"")
        for piece in self._pieces:
            n += len(piece)
        self.consumed += n
        return n


def _uncompressed(chunks: Iterable[bytes]) -> tuple[_Stream, bool]:
    """The file's uncompressed stream, and whether the file is gzip-compressed (told by its first two bytes)."""
    it = iter(chunks)
    first: bytes = b""
    for piece in it:
        first = piece if not first else bytes(first) + bytes(piece)
        if len(first) >= 2:
            break
    it = itertools.chain([first], it)
    gz = bytes(first[:2]) == _GZIP_MAGIC
    return _Stream(_inflate(it) if gz else it), gz


#: Bytes read at a time while only the header is wanted (a URL's first ranged read holds them).
HEAD_CHUNK = 16 << 10


def _chunks(fh: BinaryIO, size: int = CHUNK) -> Iterator[bytes]:
    return iter(lambda: fh.read(size), b"")


def _cut_message(header: VolumeHeader, got: int, gz: bool) -> str:
    if gz:
        return f"the gzip stream ends after {got:,} bytes, before the end of the voxel data at byte {header.data_end:,} that the {header.format} header gives (the file is cut short)"
    return f"the {header.format} voxel data run to byte {header.data_end:,} but the file ends at {got:,}"


def volume_columns(fh: BinaryIO, size: int) -> tuple[tuple, tuple[str, ...]]:
    """The :data:`VOLUME_COLUMNS` of the NIfTI file open in ``fh`` (``size`` bytes), and the header's notes.

    The header only: for a file that is not compressed the check that the voxel
    data lie within the file is its size; for a gzip-compressed one it is the
    uncompressed size in the gzip trailer (its last 4 bytes, modulo 2**32), and
    only when that differs (a file cut short, several gzip members, bytes after
    the stream) is the stream inflated to its end, without keeping it, and counted.

    Raises
    ------
    NotNifti, TruncatedFile, DamagedGzip, nibabel's HeaderDataError
        See :func:`parse_header`; the voxel data end after the file or its stream.
    """
    stream, gz = _uncompressed(_chunks(fh, HEAD_CHUNK))
    head = stream.read(HEADER_BYTES)
    header = parse_header(head)
    if not gz:
        if header.data_end > size:
            raise TruncatedFile(_cut_message(header, size, gz))
    else:
        fh.seek(max(0, size - 4))
        trailer = int.from_bytes(fh.read(4), "little")
        if trailer != header.data_end % (1 << 32):
            fh.seek(0)
            stream, _ = _uncompressed(_chunks(fh))
            got = stream.drain()
            if got < header.data_end:
                raise TruncatedFile(_cut_message(header, got, gz))
    shape = header.shape + (1,) * max(0, 3 - len(header.shape))
    sizes = (*shape[:3], math.prod(shape[3:]))
    if max(sizes) > 2**31 - 1:
        from nibabel.spatialimages import HeaderDataError

        raise HeaderDataError(f"the header gives the shape {header.shape}, whose sizes pass the 2**31 - 1 a manifest column holds")
    values = (
        *sizes,
        list(header.spacing),
        slice_plane(header.affine),
        axis_codes(header.affine),
        header.datatype,
        header.format,
    )
    return values, header.notes


# ----------------------------------------------------------------------------- hashes


def read_voxels(chunks: Iterable[bytes], *, max_bytes: int) -> tuple[VolumeHeader, np.ndarray]:
    """The header and the stored voxel array (header shape, Fortran order, the header's dtype) of a file's bytes.

    ``chunks`` are the file's bytes in order; gzip is inflated as it comes, into the
    array itself. The uncompressed voxel data may not pass ``max_bytes`` (a small
    gzip file can inflate to any size): the header says how many there are before
    any is read.

    Raises
    ------
    mdprep.hashing.TooLarge
        The header declares more than ``max_bytes`` of voxel data.
    NotNifti, TruncatedFile, DamagedGzip, nibabel's HeaderDataError
        As for :func:`volume_columns`.
    """
    from .hashing import TooLarge

    stream, gz = _uncompressed(chunks)
    head = stream.read(HEADER_BYTES)
    header = parse_header(head)
    if header.data_end > max_bytes:
        raise TooLarge(
            f"the volume's voxel data end at byte {header.data_end:,} of its uncompressed stream (from its header), "
            f"over the limit of {max_bytes:,} bytes; raise --max-bytes to read it"
        )
    buf = np.empty(header.data_bytes, dtype=np.uint8)
    view = memoryview(buf)
    start = min(header.offset, len(head))
    got = len(head[start : header.data_end])
    view[:got] = head[start : header.data_end]
    if header.offset > len(head):
        stream.skip(header.offset - len(head))
    got += stream.readinto(view[got:])
    if got < header.data_bytes:
        raise TruncatedFile(_cut_message(header, header.offset + got, gz))
    return header, buf.view(header.dtype).reshape(header.shape, order="F")


def canonical(arr: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """A view of ``arr`` (x, y, z, ...) on the closest canonical (RAS+) axes, as ``nibabel.as_closest_canonical`` gives them.

    Axes are flipped and permuted, never resampled: ``io_orientation`` of the
    affine, then ``apply_orientation``. An affine that names no axis for some voxel
    axis (a zero column) leaves the array as it is.
    """
    from nibabel.orientations import apply_orientation, io_orientation

    ornt = io_orientation(affine)
    if np.isnan(ornt).any():
        return arr
    return apply_orientation(arr, ornt)


def _grey(values: np.ndarray) -> np.ndarray:
    """Values that a maximum can be taken of: RGB averaged, complex as magnitude, anything else as it is."""
    if values.dtype.names:
        return np.mean([values[name].astype(np.float32) for name in values.dtype.names], axis=0)
    if values.dtype.kind == "c":
        return np.abs(values)
    return values


def _window(mip: np.ndarray) -> np.ndarray:
    """A projection as 8-bit grey, windowed to its own finite range (NaN as the minimum, infinities clipped)."""
    mip = np.asarray(mip, dtype=np.float64)
    finite = np.isfinite(mip)
    if not finite.any():
        return np.zeros(mip.shape, dtype=np.uint8)
    lo, hi = float(mip[finite].min()), float(mip[finite].max())
    unit = np.zeros(mip.shape) if hi <= lo else np.clip(np.nan_to_num((mip - lo) / (hi - lo), nan=0.0), 0.0, 1.0)
    return np.rint(unit * 255).astype(np.uint8)


def projections(canon: np.ndarray, *, slope: float | None = None, inter: float | None = None, digest: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three maximum-intensity projections of a canonical volume, read once, a slab of slices at a time.

    ``canon`` is indexed (x, y, z, ...): the projection along z is an (y, x) image,
    along y a (z, x) one, along x a (z, y) one (rows first); further axes (time) are
    projected too. The volume is walked in NIfTI's own storage order (x fastest,
    then y, z, then the further axes), little-endian; with ``slope`` the values are
    ``stored * slope + inter`` in float64, made a slab at a time. ``digest`` (a
    ``hashlib`` object), if given, is updated with the bytes of each slab, so that it
    ends as the SHA-256 of the whole array in that order (:func:`volume_hashes`).
    NaN is ignored by the maxima (``numpy.fmax``).
    """
    v = canon.T  # (..., z, y, x): C order is NIfTI's storage order
    zdim, ydim, xdim = v.shape[-3:]
    out_dtype = np.dtype(np.float64) if slope is not None else v.dtype.newbyteorder("<")
    rows = max(1, SLAB_BYTES // max(1, ydim * xdim * out_dtype.itemsize))
    along_z = np.full((ydim, xdim), np.nan)
    along_y = np.full((zdim, xdim), np.nan)
    along_x = np.full((zdim, ydim), np.nan)
    for index in np.ndindex(*v.shape[:-3]):
        vol = v[index]
        for z0 in range(0, zdim, rows):
            part = vol[z0 : z0 + rows]
            if slope is not None:
                slab = np.multiply(part, slope, dtype=np.float64)
                if inter:
                    slab += inter
            else:
                slab = np.ascontiguousarray(part, dtype=out_dtype)
            if digest is not None:
                digest.update(slab)
            grey = _grey(slab)
            top = np.fmax.reduce if grey.dtype.kind in "fc" else np.maximum.reduce
            np.fmax(along_z, top(grey, axis=0), out=along_z)
            np.fmax(along_y[z0 : z0 + rows], top(grey, axis=1), out=along_y[z0 : z0 + rows])
            np.fmax(along_x[z0 : z0 + rows], top(grey, axis=2), out=along_x[z0 : z0 + rows])
    return along_z, along_y, along_x


def projections_phash(along_z: np.ndarray, along_y: np.ndarray, along_x: np.ndarray) -> int:
    """One 64-bit perceptual hash of the three projections: each windowed to 8 bits and resized to 32 x 32, tiled side by side, pHashed.

    The strip (z, y and x projections, 32 x 96 pixels) goes through
    :func:`mdprep.hashing.phash64`, imagehash's pHash, as a 2-D image does: one
    64-bit value that the audit compares with its Hamming threshold. Of the
    combinations tried on 30 synthetic CT volumes (the strip; a 2 x 2 mosaic of
    16 x 16 tiles; 21 + 21 + 22 low DCT bits of each projection) the strip kept
    distinct volumes furthest apart (at least 10 bits, median 24) while noise of
    40 HU, a gamma of 1.05 or one slice cropped at each end moved a volume's hash
    by at most 2, 2 and 6 bits.
    """
    import imagehash
    from PIL import Image

    from .hashing import phash64

    tiles = [np.asarray(Image.fromarray(_window(mip), mode="L").resize((32, 32), imagehash.ANTIALIAS)) for mip in (along_z, along_y, along_x)]
    return phash64(np.concatenate(tiles, axis=1))


def volume_hashes(chunks: Iterable[bytes], *, max_bytes: int) -> tuple[str, int]:
    """``(pixel_sha256, phash)`` of the NIfTI volume whose file bytes are ``chunks``.

    The voxels are reoriented to the closest canonical (RAS+) axes first
    (:func:`canonical`), so a copy with flipped or permuted axes (and the affine
    that says so) gets the same hashes. ``pixel_sha256`` is
    :func:`mdprep.hashing.pixel_digest` of that array indexed (..., z, y, x), the
    NIfTI storage order: its shape, its dtype (little-endian; float64 when the
    header scales the values with scl_slope and scl_inter, as a rescaled DICOM
    image's is) and its values. ``phash`` is :func:`projections_phash` of the
    three maximum-intensity projections (:func:`projections`). Hashing reads the array once, a slab at
    a time; the only copies are slabs of a few megabytes.
    """
    header, arr = read_voxels(chunks, max_bytes=max_bytes)
    if arr.ndim < 3:
        arr = arr.reshape(arr.shape + (1,) * (3 - arr.ndim), order="F")
    canon = canonical(arr, header.affine)
    slope, inter = (header.slope, header.inter) if header.scaled else (None, None)
    out_dtype = np.dtype(np.float64) if slope is not None else arr.dtype.newbyteorder("<")
    digest = hashlib.sha256(f"{canon.T.shape}|{out_dtype.str}|".encode())
    mips = projections(canon, slope=slope, inter=inter, digest=digest)
    return digest.hexdigest(), projections_phash(*mips)

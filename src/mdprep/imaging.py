"""Decoding image files to pixel arrays: DICOM through pydicom, everything else through Pillow.

Touches image files only; never imports torch. :func:`load_pixels` is shared by
``mdprep hash`` (content hashes) and the trainers, so both decode the same pixels.
The trainers' model input is :func:`decode_grey`: a grey image in [0, 1], which for
a DICOM file follows the file's own display window (VOI LUT or window centre and
width, :func:`voi_unit`) when it has one.
"""

from __future__ import annotations

import io

import numpy as np

_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


def _is_dicom(path: str, head: bytes) -> bool:
    return head[128:132] == b"DICM" or path.lower().endswith(_DICOM_SUFFIXES)


def load_pixels(path: str, data: bytes | None = None) -> tuple[np.ndarray, bool]:
    """Decoded pixels of one image, and whether they are MONOCHROME1 (inverted grey).

    DICOM values go through the modality LUT (rescale slope and intercept); a
    multi-frame image is represented by its middle frame.
    """
    ds, arr = _decode(path, data)
    if ds is None:
        return arr, False
    return _modality(arr, ds), _photometric(ds) == "MONOCHROME1"


def _decode(path: str, data: bytes | None) -> tuple[object | None, np.ndarray]:
    """The pydicom dataset (None for a non-DICOM file) and the stored pixels (a DICOM's middle frame)."""
    if data is None:
        with open(path, "rb") as fh:
            data = fh.read()
    if _is_dicom(path, data[:132]):
        import pydicom

        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        arr = ds.pixel_array
        if arr.ndim == 3 and int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            arr = arr[arr.shape[0] // 2]  # middle frame stands for a multi-frame image
        return ds, arr
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return None, np.asarray(im)


def _modality(arr: np.ndarray, ds) -> np.ndarray:
    """Stored DICOM pixels through the rescale slope and intercept, when the file has them."""
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        from pydicom.pixels import apply_modality_lut

        return apply_modality_lut(arr, ds)
    return arr


def _photometric(ds) -> str:
    return str(getattr(ds, "PhotometricInterpretation", ""))


def _present(value) -> bool:
    return value is not None and not (isinstance(value, (str, bytes, list, tuple)) and len(value) == 0)


def voi_kind(ds) -> str | None:
    """Which display transform a DICOM dataset holds: ``"lut"``, ``"window"`` or None.

    The choice of pydicom's :func:`~pydicom.pixels.apply_voi_lut` with
    ``prefer_lut=True``: a VOI LUT Sequence whose first item has a LUT Descriptor
    and LUT Data wins over Window Center and Window Width; empty values count as
    absent.
    """
    seq = ds.get("VOILUTSequence")
    if seq and _present(seq[0].get("LUTDescriptor")) and _present(seq[0].get("LUTData")):
        return "lut"
    if _present(ds.get("WindowCenter")) and _present(ds.get("WindowWidth")):
        return "window"
    return None


#: What a broken VOI module raises in pydicom: the image then falls back to its own range.
_VOI_ERRORS = (ValueError, TypeError, AttributeError, KeyError, IndexError, NotImplementedError, OverflowError)


def voi_unit(arr: np.ndarray, ds) -> np.ndarray | None:
    """Grey DICOM pixels through the file's first VOI LUT or window, scaled to [0, 1]; None without one.

    ``arr`` holds the pixels after the modality LUT (as :func:`load_pixels` returns
    them). pydicom's :func:`~pydicom.pixels.apply_voi_lut` (``index=0``,
    ``prefer_lut=True``) maps them, then the result is scaled by the transform's own
    output range, never by the image's minimum and maximum:

    * a window (LINEAR, LINEAR_EXACT or SIGMOID) by the values it gives below and
      above the window, so pixels below it become 0, pixels above it 1 and the
      centre about 0.5;
    * a VOI LUT by the smallest and largest of its entries (so a 12-bit table
      whose descriptor says 16 bits still reaches 1); values are rounded to whole
      numbers first, and values beyond the table take its first or last entry.

    MONOCHROME1 is *not* inverted here (:func:`decode_grey` does it). Returns None
    for colour images, for files without a VOI module, and for a module pydicom
    cannot apply (a width below 1, an unknown VOI LUT Function, a flat LUT), so
    that the caller falls back to the image's own range.
    """
    if arr.ndim != 2 or _photometric(ds) not in ("MONOCHROME1", "MONOCHROME2"):
        return None
    kind = voi_kind(ds)
    if kind is None:
        return None
    from pydicom.pixels import apply_voi_lut

    if not np.isfinite(arr).all():
        return None
    try:
        if kind == "lut":
            descriptor = ds.VOILUTSequence[0].LUTDescriptor
            entries, first = int(descriptor[0]) or 1 << 16, int(descriptor[1])
            probe = np.arange(first, first + entries, dtype=np.int64)  # every entry of the table
            # The table is indexed by whole numbers; values beyond it take its first or last entry.
            arr = np.clip(np.rint(arr), first, first + entries - 1).astype(np.int64)
        else:
            probe = np.array([-1e300, 1e300])  # far below and far above any window
        with np.errstate(over="ignore", invalid="ignore"):
            out = np.asarray(apply_voi_lut(arr, ds, index=0, prefer_lut=True), dtype=np.float64)
            ends = np.asarray(apply_voi_lut(probe, ds, index=0, prefer_lut=True), dtype=np.float64)
    except _VOI_ERRORS:
        return None
    lo, hi = (float(ends.min()), float(ends.max())) if kind == "lut" else (float(ends[0]), float(ends[-1]))
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi == lo or not np.isfinite(out).all():
        return None
    return np.clip((out - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _stored_voi_unit(stored: np.ndarray, ds) -> np.ndarray | None:
    """:func:`voi_unit` of the stored pixels after the modality LUT, through a table when they are integers.

    Both LUTs map each stored value on its own, so for an integer image they are
    applied once to every value between its minimum and maximum (at most 65,536
    for 16-bit pixels), and the image then indexes that table: the same result,
    as fast as scaling to the image's own range, where mapping every pixel through
    pydicom took about eight times as long (2048 x 2048, 12 bits).
    """
    if stored.ndim == 2 and stored.size and stored.dtype.kind in "iu":
        lo, hi = int(stored.min()), int(stored.max())
        if hi - lo < 1 << 17:
            table = voi_unit(_modality(np.arange(lo, hi + 1, dtype=np.int64)[None, :], ds), ds)
            return None if table is None else table[0][stored.astype(np.intp) - lo]
    return voi_unit(_modality(stored, ds), ds)


def decode_grey(path: str, data: bytes | None = None) -> np.ndarray:
    """One image file as a 2-D float32 grey array in [0, 1]: the decoding step of training.

    Without ``data`` the file is read like ``mdprep hash`` reads it (regular files
    up to 2 GiB only, so a FIFO or a device never blocks or fills memory). A DICOM
    file with a VOI LUT or a window is shown through it (:func:`voi_unit`);
    any other image is averaged to grey and scaled to its own range
    (:func:`unit_grey`). MONOCHROME1 is inverted either way.

    Raises
    ------
    ValueError
        The file decodes to something that is not a 2-D image, or to values that
        are not finite.
    OSError, and whatever pydicom or Pillow raise for a file they cannot decode.
    """
    if data is None:
        from .hashing import MAX_BYTES, read_image_bytes  # hashing imports this module

        data = read_image_bytes(path, max_bytes=MAX_BYTES)
    ds, arr = _decode(path, data)
    if ds is None:
        grey = unit_grey(arr)
    else:
        invert = _photometric(ds) == "MONOCHROME1"
        windowed = _stored_voi_unit(arr, ds)
        if windowed is None:
            grey = unit_grey(_modality(arr, ds), invert)
        else:
            grey = 1.0 - windowed if invert else windowed
    if grey.ndim != 2 or grey.size == 0:
        raise ValueError(f"decoded to an array of shape {tuple(arr.shape)}, not a 2-D image")
    if not np.isfinite(grey).all():
        raise ValueError("decoded pixels hold NaN or infinite values")
    return grey


def grey_8bit(arr: np.ndarray, invert: bool = False) -> np.ndarray:
    """An 8-bit grey view of any image: 8-bit grey kept as is, anything else through :func:`unit_grey`.

    >>> grey_8bit(np.array([[0, 4095]], dtype=np.uint16)).tolist()
    [[0, 255]]
    """
    if arr.dtype == np.uint8 and arr.ndim == 2:
        return 255 - arr if invert else arr
    return np.rint(unit_grey(arr, invert) * 255).astype(np.uint8)


def unit_grey(arr: np.ndarray, invert: bool = False) -> np.ndarray:
    """A float32 grey image in [0, 1]: colour averaged, windowed to the image's own range.

    >>> unit_grey(np.array([[10, 30]], dtype=np.uint16)).tolist()
    [[0.0, 1.0]]
    """
    a = np.asarray(arr, dtype=np.float32)
    if a.ndim == 3:
        a = a[..., :3].mean(axis=2) if a.shape[-1] in (3, 4) else a[..., 0]
    lo, hi = float(a.min()), float(a.max())
    a = np.zeros_like(a) if hi <= lo else (a - lo) / (hi - lo)
    return 1.0 - a if invert else a

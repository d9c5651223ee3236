"""Decoding image files to pixel arrays: DICOM through pydicom, everything else through Pillow.

Touches image files only. Shared by ``mdprep hash`` (content hashes) and
``mdprep train`` (model input), so both see the same pixels.
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
    if data is None:
        with open(path, "rb") as fh:
            data = fh.read()
    if _is_dicom(path, data[:132]):
        import pydicom

        from pydicom.pixels import apply_modality_lut

        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        arr = ds.pixel_array
        if arr.ndim == 3 and int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            arr = arr[arr.shape[0] // 2]  # middle frame stands for a multi-frame image
        if "RescaleSlope" in ds or "RescaleIntercept" in ds:
            arr = apply_modality_lut(arr, ds)
        return arr, str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1"
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return np.asarray(im), False


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

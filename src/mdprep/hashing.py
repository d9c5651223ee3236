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

Hashes are computed once (``mdprep hash``) so that the audit runs on manifests alone.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from .errors import InputError
from .executor import map_chunks
from .imaging import grey_8bit, load_pixels
from .manifest import Manifest, provenance_step

HASH_COLUMNS = ("file_sha256", "pixel_sha256", "phash")
def phash64(grey: np.ndarray) -> int:
    """imagehash's pHash of an 8-bit grey array as an unsigned 64-bit integer."""
    import imagehash
    from PIL import Image

    bits = imagehash.phash(Image.fromarray(grey, mode="L")).hash.flatten()
    return int(np.packbits(bits).view(">u8")[0])


def pixel_digest(arr: np.ndarray) -> str:
    """SHA-256 of a pixel array with its shape and dtype."""
    head = f"{arr.shape}|{arr.dtype.str}|".encode()
    return hashlib.sha256(head + np.ascontiguousarray(arr).tobytes()).hexdigest()


def hash_image(path: str) -> tuple[str | None, str | None, int | None, str, str]:
    """``(file_sha256, pixel_sha256, phash, error_type, message)`` of one file; never raises."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        return None, None, None, type(exc).__name__, str(exc)
    file_hash = hashlib.sha256(data).hexdigest()
    try:
        arr, invert = load_pixels(path, data)
        return file_hash, pixel_digest(arr), phash64(grey_8bit(arr, invert)), "", ""
    except Exception as exc:  # noqa: BLE001 - any decoder failure is this file's error row
        return file_hash, None, None, type(exc).__name__, str(exc) or repr(exc)


def _hash_chunk(paths: Sequence[str], *, root: str) -> list[tuple]:
    return [hash_image(os.path.join(root, p)) for p in paths]


@dataclass(frozen=True)
class HashResult:
    manifest: Manifest
    errors: pd.DataFrame  # path, error_type, message
    hashed: int
    failed: int


def hash_manifest(
    manifest: Manifest,
    *,
    root: str | os.PathLike | None = None,
    workers: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> HashResult:
    """Add ``file_sha256``, ``pixel_sha256`` and ``phash`` columns, reading every image once.

    ``root`` defaults to the manifest's recorded root. A file that cannot be read or
    decoded keeps null hashes and gets a row in ``errors``; the audit counts such rows
    as unchecked.
    """
    root_s = os.fspath(root) if root is not None else manifest.root
    if not root_s:
        raise InputError("this manifest records no image folder; pass --root DIR, the folder its paths are relative to")
    if not os.path.isdir(root_s):
        raise InputError(f"image root {root_s!r} is not a folder; pass --root DIR", path=root_s)
    paths = manifest.frame["path"].tolist()
    parts = map_chunks(functools.partial(_hash_chunk, root=os.path.abspath(root_s)), paths, workers=workers, on_progress=on_progress)
    rows = [r for part in parts for r in part]
    frame = manifest.frame.copy()
    frame["file_sha256"] = pd.Series([r[0] for r in rows], index=frame.index, dtype="str")
    frame["pixel_sha256"] = pd.Series([r[1] for r in rows], index=frame.index, dtype="str")
    frame["phash"] = pd.array([r[2] for r in rows], dtype="UInt64")
    failed = [(p, r[3], r[4]) for p, r in zip(paths, rows) if r[3]]
    errors = pd.DataFrame(failed, columns=["path", "error_type", "message"]).astype("str")
    step = provenance_step("hash", {"root": os.path.abspath(root_s)}, [])
    result = manifest.with_frame(frame).with_step(step)
    return HashResult(result, errors, hashed=len(paths) - len(failed), failed=len(failed))

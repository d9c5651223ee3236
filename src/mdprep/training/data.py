"""A torch Dataset over manifest rows, and the ``cxr-safe`` augmentation."""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from ..executor import map_chunks
from ..hashing import MAX_BYTES, error_text, read_image_bytes
from ..imaging import load_pixels, unit_grey
from ..manifest import NEGATIVE, POSITIVE

AUGMENTS = ("cxr-safe", "none")


#: The column that holds each row's real file when ``path`` holds a pseudonym (``train --path-map``).
FILE_COLUMN = "_file"


def file_column(frame: pd.DataFrame) -> pd.Series:
    """Each row's file relative to the root: :data:`FILE_COLUMN` when the paths were mapped, else ``path``."""
    return frame[FILE_COLUMN if FILE_COLUMN in frame.columns else "path"].astype("str")


def image_paths(frame: pd.DataFrame, root: str) -> list[str]:
    """The file of each row, joined to ``root``, as the dataset opens it."""
    return [os.path.join(root, p) for p in file_column(frame)]


def decode_grey(path: str) -> np.ndarray:
    """One image file as a 2-D float32 grey array in [0, 1]: the decoding step of training.

    The file is read like ``mdprep hash`` reads it (regular files up to 2 GiB only,
    so a FIFO or a device never blocks or fills memory), decoded by the shared
    pixel loader, averaged to grey and windowed to its own range.
    """
    arr, invert = load_pixels(path, read_image_bytes(path, max_bytes=MAX_BYTES))
    grey = unit_grey(arr, invert)
    if grey.ndim != 2 or grey.size == 0:
        raise ValueError(f"decoded to an array of shape {tuple(arr.shape)}, not a 2-D image")
    if not np.isfinite(grey).all():
        raise ValueError("decoded pixels hold NaN or infinite values")
    return grey


def _check_chunk(paths: Sequence[str]) -> list[tuple[str, str]]:
    out = []
    for path in paths:
        try:
            decode_grey(path)
            out.append(("", ""))
        except Exception as exc:  # noqa: BLE001 - any failure is this image's problem, reported with its row
            out.append(error_text(exc))
    return out


def unreadable_images(frame: pd.DataFrame, root: str, *, workers: int = 1) -> pd.DataFrame:
    """Rows whose image is missing or does not decode, found by decoding each distinct file once.

    The check runs the dataset's own decoding step (:func:`decode_grey`) on every
    distinct path, spread over ``workers`` processes by :func:`mdprep.executor.map_chunks`.

    Returns
    -------
    pandas.DataFrame
        One row per bad manifest row, in manifest order: ``image_id``, ``path``,
        ``error_type`` and ``message`` (messages are the same on every run).
    """
    files = pd.Series(image_paths(frame, root), index=frame.index, dtype="object")
    distinct = pd.unique(files.to_numpy())
    results = [r for part in map_chunks(_check_chunk, list(distinct), workers=max(1, workers)) for r in part]
    table = pd.DataFrame(results, columns=["error_type", "message"], index=pd.Index(distinct, dtype="object"))
    found = table.reindex(files.to_numpy())
    bad = found["error_type"].to_numpy() != ""
    out = pd.DataFrame(
        {
            "image_id": frame["image_id"].astype("str").to_numpy()[bad],
            "path": frame["path"].astype("str").to_numpy()[bad],
            "error_type": found["error_type"].to_numpy()[bad],
            "message": found["message"].to_numpy()[bad],
        }
    )
    if FILE_COLUMN in frame.columns:
        # Messages name the manifest's (pseudonymised) path, never the real file.
        real = file_column(frame).to_numpy()[bad]
        out["message"] = [m.replace(os.path.join(root, r), p).replace(r, p) for m, r, p in zip(out["message"], real, out["path"])]
    return out.astype("str")


class ManifestDataset(torch.utils.data.Dataset):
    """Images of manifest rows as ``(image, target, mask)`` tensors.

    * image: float32 ``(channels, size, size)`` in [0, 1]: decoded by
      :func:`decode_grey` (DICOM through pydicom with the modality LUT and
      MONOCHROME1 inverted, other files through Pillow, colour averaged to grey,
      windowed to the image's own range), resized, and repeated to ``channels``;
    * target: float32 per label, 1 for positive and 0 otherwise;
    * mask: float32 per label, 1 where the label is 1 or 0, and 0 where it is
      uncertain (-1) or missing, so that such labels add nothing to the loss.
    """

    def __init__(self, frame: pd.DataFrame, root: str, labels: Sequence[str], *, size: int = 224, channels: int = 1) -> None:
        self.paths = image_paths(frame, root)
        values = frame[list(labels)].to_numpy(dtype="float64", na_value=np.nan) if labels else np.zeros((len(frame), 0))
        self.targets = torch.from_numpy((values == POSITIVE).astype(np.float32))
        self.masks = torch.from_numpy(((values == POSITIVE) | (values == NEGATIVE)).astype(np.float32))
        self.size = size
        self.channels = channels

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, path: str) -> torch.Tensor:
        img = torch.from_numpy(np.ascontiguousarray(decode_grey(path)))[None, None]
        img = F.interpolate(img, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)[0]
        return img.expand(self.channels, -1, -1).contiguous()

    def __getitem__(self, i: int):
        return self.load(self.paths[i]), self.targets[i], self.masks[i]


def cxr_safe(images: torch.Tensor, generator: torch.Generator, *, hflip: bool = False) -> torch.Tensor:
    """Augment a batch the way chest radiographs allow.

    Per image: rotation within 10 degrees, scaling by 0.9 to 1.1, translation within
    5% of the size, brightness within +-0.1 and contrast within 0.9 to 1.1, mild
    Gaussian noise (sigma 0.02). No vertical flips; horizontal flips only when asked
    (anatomy is not left-right symmetric). Torch operations only.
    """
    n = images.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=generator)

    angle = uniform(-10, 10) * math.pi / 180
    scale = uniform(0.9, 1.1)
    tx, ty = uniform(-0.05, 0.05) * 2, uniform(-0.05, 0.05) * 2  # affine_grid works in [-1, 1]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    if hflip:
        flip = torch.rand(n, generator=generator) < 0.5
        theta[flip, 0, :2] *= -1
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    contrast = uniform(0.9, 1.1).view(n, 1, 1, 1)
    brightness = uniform(-0.1, 0.1).view(n, 1, 1, 1)
    out = (out - mean) * contrast + mean + brightness
    out = out + 0.02 * torch.randn(out.shape, generator=generator)
    return out.clamp(0.0, 1.0)

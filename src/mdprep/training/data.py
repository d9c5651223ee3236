"""A torch Dataset over manifest rows, and the ``cxr-safe`` augmentation."""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from ..imaging import load_pixels, unit_grey
from ..manifest import NEGATIVE, POSITIVE

AUGMENTS = ("cxr-safe", "none")


class ManifestDataset(torch.utils.data.Dataset):
    """Images of manifest rows as ``(image, target, mask)`` tensors.

    * image: float32 ``(channels, size, size)`` in [0, 1]: DICOM through pydicom
      (modality LUT, MONOCHROME1 inverted), other files through Pillow, colour
      averaged to grey, windowed to the image's own range, resized, and repeated
      to ``channels``;
    * target: float32 per label, 1 for positive and 0 otherwise;
    * mask: float32 per label, 1 where the label is 1 or 0, and 0 where it is
      uncertain (-1) or missing, so that such labels add nothing to the loss.
    """

    def __init__(self, frame: pd.DataFrame, root: str, labels: Sequence[str], *, size: int = 224, channels: int = 1) -> None:
        self.paths = [os.path.join(root, p) for p in frame["path"].astype("str")]
        values = frame[list(labels)].to_numpy(dtype="float64", na_value=np.nan) if labels else np.zeros((len(frame), 0))
        self.targets = torch.from_numpy((values == POSITIVE).astype(np.float32))
        self.masks = torch.from_numpy(((values == POSITIVE) | (values == NEGATIVE)).astype(np.float32))
        self.size = size
        self.channels = channels

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, path: str) -> torch.Tensor:
        arr, invert = load_pixels(path)
        img = torch.from_numpy(np.ascontiguousarray(unit_grey(arr, invert)))[None, None]
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

"""A torch Dataset over manifest rows, ImageNet normalisation, per-row sampling weights, and the ``cxr-safe`` augmentation."""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from ..errors import UsageError
from ..executor import map_chunks
from ..hashing import error_text, remote_reads
from ..imaging import decode_grey
from ..manifest import NEGATIVE, POSITIVE, Manifest
from ..storage import join

AUGMENTS = ("cxr-safe", "none")

#: ``--normalize`` choices: ``auto`` is ImageNet's when ImageNet-style weights are loaded (see :func:`normalisation_for`).
NORMALIZE_CHOICES = ("auto", "imagenet", "none")
#: ImageNet's per-channel mean and standard deviation of [0, 1] RGB images (torchvision's weights expect them).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


#: The column that holds each row's real file when ``path`` holds a pseudonym (``train --path-map``).
FILE_COLUMN = "_file"


def file_column(frame: pd.DataFrame) -> pd.Series:
    """Each row's file relative to the root: :data:`FILE_COLUMN` when the paths were mapped, else ``path``."""
    return frame[FILE_COLUMN if FILE_COLUMN in frame.columns else "path"].astype("str")


def image_paths(frame: pd.DataFrame, root: str) -> list[str]:
    """The file of each row, joined to ``root`` (a folder or a URL, :func:`mdprep.storage.join`), as the dataset opens it."""
    return [join(root, p) for p in file_column(frame)]


def _check_chunk(paths: Sequence[str]) -> list[tuple[str, str]]:
    out = []
    for path, read in zip(paths, remote_reads(paths)):
        try:
            decode_grey(path, read())
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
        out["message"] = [m.replace(join(root, r), p).replace(r, p) for m, r, p in zip(out["message"], real, out["path"])]
    return out.astype("str")


def normalisation_for(option: str | None, *, pretrained: bool, channels: int) -> str | None:
    """The normalisation a run uses: ``"imagenet"`` or None.

    ``option`` is ``--normalize``: ``"auto"`` (or None) gives ImageNet's mean and
    standard deviation when pretrained weights are loaded into a 3-channel model
    (ImageNet weights expect them), and none otherwise; ``"imagenet"`` and
    ``"none"`` force the choice.

    >>> normalisation_for("auto", pretrained=True, channels=3)
    'imagenet'
    >>> normalisation_for("auto", pretrained=True, channels=1) is None
    True
    """
    if option not in (None, *NORMALIZE_CHOICES):
        raise UsageError(f"unknown --normalize {option!r}; choose one of {', '.join(NORMALIZE_CHOICES)}", normalize=option)
    if option in (None, "auto"):
        return "imagenet" if pretrained and channels == 3 else None
    return None if option == "none" else option


def normalise(images: torch.Tensor, how: str | None) -> torch.Tensor:
    """Images in [0, 1], ``(C, H, W)`` or a batch ``(N, C, H, W)``, normalised the way ``how`` says.

    ``how`` None or ``"none"`` returns ``images`` unchanged. ``"imagenet"`` returns
    ``(x - mean) / std`` per channel with :data:`IMAGENET_MEAN` and
    :data:`IMAGENET_STD` for 3 channels; a 1-channel image uses the mean of the
    three means (0.449) and of the three standard deviations (0.226), which is what
    a grey image repeated to 3 channels gets on average. A new tensor is returned.

    Apply it last, after any augmentation that works in [0, 1] (``cxr_safe``
    clamps to [0, 1]).

    Raises
    ------
    mdprep.errors.UsageError
        ``how`` is not one of them, or ``"imagenet"`` for other than 1 or 3 channels.

    >>> normalise(torch.full((3, 1, 1), 0.5), "imagenet").flatten().tolist()  # doctest: +ELLIPSIS
    [0.06550..., 0.19642..., 0.41777...]
    """
    if how is None or how == "none":
        return images
    if how != "imagenet":
        raise UsageError(f"unknown normalisation {how!r}; choose imagenet or none", normalize=how)
    channels = images.shape[-3] if images.ndim >= 3 else 0
    if channels not in (1, 3):
        raise UsageError(f"ImageNet normalisation needs 1 or 3 channels, not images of shape {tuple(images.shape)}", normalize=how)
    mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device)
    std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device)
    if channels == 1:
        mean, std = mean.mean(dim=0, keepdim=True), std.mean(dim=0, keepdim=True)
    return (images - mean.view(-1, 1, 1)) / std.view(-1, 1, 1)


class ManifestDataset(torch.utils.data.Dataset):
    """Images of manifest rows as ``(image, target, mask)`` tensors; usable in any torch loop.

    * image: float32 ``(channels, size, size)``: decoded by
      :func:`mdprep.imaging.decode_grey` (DICOM through pydicom with the modality
      LUT, then the file's VOI LUT or window when it has one, MONOCHROME1
      inverted; other files through Pillow; colour averaged to grey; scaled to
      [0, 1]), resized (bilinear, antialiased) and repeated to ``channels``; then
      ``transform`` (which sees [0, 1] values), then ``normalize``;
    * target: float32 per label, 1 for positive and 0 otherwise;
    * mask: float32 per label, 1 where the label is 1 or 0, and 0 where it is
      uncertain (-1) or missing, so that such labels add nothing to the loss.

    Parameters
    ----------
    frame : pandas.DataFrame
        Manifest rows (``path`` relative to ``root``, and the label columns).
    root : str
        The folder the paths are relative to.
    labels : sequence of str
        The label columns, in the order of the targets.
    size : int
        Images are resized to ``size`` x ``size``.
    channels : int
        The grey image is repeated to this many channels (the model's ``in_channels``).
    transform : callable, optional
        Applied to each image tensor ``(channels, size, size)`` in [0, 1] after the
        resize and before the normalisation; must return a tensor. Use it for
        per-image augmentation in your own loop.
    normalize : {None, "none", "imagenet"}
        Applied last, by :func:`normalise`. ``mdprep train`` leaves it None and
        normalises each batch after its augmentation.

    Attributes
    ----------
    frame : pandas.DataFrame
        The rows, in the dataset's order (pass it to :func:`sample_weights`).
    """

    def __init__(
        self,
        frame: pd.DataFrame,
        root: str,
        labels: Sequence[str],
        *,
        size: int = 224,
        channels: int = 1,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        normalize: str | None = None,
    ) -> None:
        if normalize not in (None, "none", "imagenet"):
            raise UsageError(f"unknown normalize {normalize!r}; choose None, 'none' or 'imagenet'", normalize=normalize)
        if normalize == "imagenet" and channels not in (1, 3):
            raise UsageError(f"ImageNet normalisation needs 1 or 3 channels, not {channels}", normalize=normalize)
        if transform is not None and not callable(transform):
            raise UsageError(f"transform must be a callable that takes and returns an image tensor, not {type(transform).__name__}")
        self.frame = frame
        self.paths = image_paths(frame, str(root))
        values = frame[list(labels)].to_numpy(dtype="float64", na_value=np.nan) if labels else np.zeros((len(frame), 0))
        self.labels = list(labels)
        self.targets = torch.from_numpy((values == POSITIVE).astype(np.float32))
        self.masks = torch.from_numpy(((values == POSITIVE) | (values == NEGATIVE)).astype(np.float32))
        self.size = size
        self.channels = channels
        self.transform = transform
        self.normalize = None if normalize == "none" else normalize

    @classmethod
    def from_manifest(
        cls, manifest: Manifest, split: str | None = None, *, root: str | None = None, labels: Sequence[str] | None = None, split_col: str = "split", **options: Any
    ) -> "ManifestDataset":
        """The dataset of a manifest's rows, or of one split of them.

        ``root`` defaults to the manifest's recorded root and ``labels`` to its
        label columns. Synthetic rows (SMOTE/ADASYN, column ``synthetic``) are left
        out: they are not images. ``options`` are those of the constructor
        (``size``, ``channels``, ``transform``, ``normalize``).

        Raises
        ------
        mdprep.errors.UsageError
            No root is known, ``split_col`` is missing, or no row has that split.
        """
        root = root or manifest.root
        if not root:
            raise UsageError("the manifest records no image root; pass root=, the folder its paths are relative to")
        frame = manifest.frame
        if "synthetic" in frame.columns:
            frame = frame[~frame["synthetic"].fillna(False).astype(bool)]
        if split is not None:
            if split_col not in frame.columns:
                raise UsageError(f"the manifest has no {split_col!r} column; run `mdprep split` first", column=split_col)
            frame = frame[(frame[split_col] == split).to_numpy(dtype=bool, na_value=False)]
            if frame.empty:
                raise UsageError(f"no rows have {split_col} == {split!r}", split=split)
        return cls(frame, root, list(manifest.labels if labels is None else labels), **options)

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, path: str) -> torch.Tensor:
        """One file as a ``(channels, size, size)`` tensor in [0, 1] (no transform, no normalisation)."""
        img = torch.from_numpy(np.ascontiguousarray(decode_grey(path)))[None, None]
        img = F.interpolate(img, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)[0]
        return img.expand(self.channels, -1, -1).contiguous()

    def __getitem__(self, i: int):
        img = self.load(self.paths[i])
        if self.transform is not None:
            img = self.transform(img)
            if not isinstance(img, torch.Tensor):
                raise TypeError(f"the dataset's transform returned {type(img).__name__}, not a torch.Tensor")
        return normalise(img, self.normalize), self.targets[i], self.masks[i]


def sample_weights(data: Manifest | pd.DataFrame, weights: str | os.PathLike | Mapping[str, Any], *, reduce: str = "max") -> np.ndarray:
    """One sampling weight per row, for :class:`torch.utils.data.WeightedRandomSampler`.

    Each row's weight comes from the class weights of ``mdprep weights``: for each
    label of the weights document that the row has labelled, ``w_pos`` if it is
    positive and ``w_neg`` if it is negative (uncertain and missing labels do not
    count); ``reduce`` combines them:

    * ``"max"`` (default): the largest, so a row is drawn as often as its rarest
      labelled class asks. A row positive for one rare finding keeps that
      finding's weight however many common labels it is negative for, where
      ``"mean"`` would dilute it (one rare positive among 14 labels would weigh
      about 1/14 of it).
    * ``"mean"``: the mean over the row's labelled labels.

    A row with none of the document's labels labelled gets 1, the weight of a
    label whose two classes are equally frequent. Sampling by these weights and
    weighting the loss by the same document would count the imbalance twice:
    use one, or the other with a milder scheme.

    Parameters
    ----------
    data : Manifest or pandas.DataFrame
        The rows, in the order the sampler will index them (for a
        :class:`ManifestDataset`, its ``frame``).
    weights : str, os.PathLike or dict
        A ``weights.json`` path, or the parsed document (schema ``mdprep-weights``,
        checked by :func:`mdprep.weights.weights_from_document`).
    reduce : {"max", "mean"}

    Returns
    -------
    numpy.ndarray
        float64, one weight per row, 0 or more.

    Raises
    ------
    mdprep.errors.InputError
        The file is missing, is not JSON, or is not a usable weights document.
    mdprep.errors.UsageError
        The document weighs labels that are not label columns of ``data``, or
        ``reduce`` is unknown.
    """
    from ..weights import weights_from_document
    from .loop import read_weights

    if reduce not in ("max", "mean"):
        raise UsageError(f"unknown reduce {reduce!r}; choose max or mean", reduce=reduce)
    frame = data.frame if isinstance(data, Manifest) else data
    columns = list(data.labels) if isinstance(data, Manifest) else [str(c) for c in frame.columns]
    if isinstance(weights, Mapping):
        names, w_pos, w_neg = weights_from_document(dict(weights), columns, source="the weights document")
    else:
        names, w_pos, w_neg = read_weights(os.fspath(weights), columns)
    values = frame[names].to_numpy(dtype="float64", na_value=np.nan)
    positive, negative = values == POSITIVE, values == NEGATIVE
    labelled = positive | negative
    per_label = np.where(positive, w_pos.astype(np.float64), np.where(negative, w_neg.astype(np.float64), 0.0))
    if reduce == "max":
        rows = np.where(labelled, per_label, -np.inf).max(axis=1, initial=-np.inf)
    else:
        rows = per_label.sum(axis=1) / np.maximum(labelled.sum(axis=1), 1)
    return np.where(labelled.any(axis=1), rows, 1.0).astype(np.float64)


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

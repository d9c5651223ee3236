"""Cross-validation plumbing shared by both trainers (PyTorch and Keras).

Which rows train, validate and test in each run (a split, or fold K of the
non-test rows), the options and the result of one fit, the out-of-fold
predictions table, and per-label AUCs with a bootstrap confidence interval
drawn over patients. Needs numpy and pandas only: no torch, no Keras.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol, Sequence

import numpy as np


@dataclass(frozen=True)
class FitOptions:
    """The settings of one model fit, the same for both frameworks.

    ``arch`` names a model of the chosen framework; ``pretrained`` is a local
    weights file (nothing is downloaded); ``device`` is ``auto``, ``cpu`` or ``cuda``;
    ``workers`` is the number of loader processes (0: load in the main process).
    """

    arch: str = "densenet121"
    epochs: int = 5
    batch_size: int = 32
    image_size: int = 224
    lr: float = 1e-3
    pretrained: str | None = None
    freeze: bool = False
    augment: str = "cxr-safe"
    hflip: bool = False
    device: str = "auto"
    seed: int = 0
    workers: int = 0


@dataclass
class FitResult:
    """What one fit returns to :func:`mdprep.training.train`.

    Attributes
    ----------
    history
        One record per epoch: ``epoch``, ``train_loss``, ``seconds``,
        ``images_per_second`` and, when there are validation rows, ``val_loss``,
        ``val_auc`` (label -> AUC or None) and ``val_mean_auc``.
    best_epoch
        The epoch whose weights were kept (best validation mean AUC, else the last).
    checkpoint
        Path of the saved best weights.
    probabilities
        Part name (``val``, ``test``) -> float32 array ``(rows, labels)`` of the
        kept model's sigmoid outputs, rows in the order of that part's frame.
    device
        The device the fit ran on, as text.
    details
        Framework-specific facts for metrics.json (pretrained report, frozen tensors).
    """

    history: list[dict]
    best_epoch: int
    checkpoint: str
    probabilities: dict[str, np.ndarray]
    device: str
    details: dict = field(default_factory=dict)


class Fit(Protocol):
    """The signature both frameworks' ``fit`` functions share."""

    def __call__(
        self,
        parts: Mapping[str, "object"],
        *,
        root: str,
        labels: Sequence[str],
        w_pos: np.ndarray,
        w_neg: np.ndarray,
        options: FitOptions,
        out_dir: str,
        on_batch: Callable[[int, int], None] | None = None,
        on_epoch: Callable[[dict], None] | None = None,
    ) -> FitResult: ...

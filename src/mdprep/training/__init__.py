"""The bundled trainer (``mdprep train``); needs the train extra (torch).

Importing this package imports torch; the command line imports it only for `mdprep train`.
"""

from .data import ManifestDataset, normalise, sample_weights
from .loop import DivergedError, LeakageError, fit, masked_weighted_bce, read_weights, train
from .models import ARCHITECTURES, build_model

__all__ = [
    "ARCHITECTURES", "DivergedError", "LeakageError", "ManifestDataset", "build_model", "fit", "masked_weighted_bce", "normalise",
    "read_weights", "sample_weights", "train",
]

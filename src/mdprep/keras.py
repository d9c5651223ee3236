"""The Keras path of the bundled trainer: Keras 3 on its torch backend, no TensorFlow.

:func:`fit` trains one run with the contract of :mod:`mdprep.crossval` (the same
options, history records and result as the PyTorch path), so ``mdprep train`` can
plan the runs and write ``predictions.parquet`` and ``metrics.json`` for either
framework. Both frameworks read identical pixels: :class:`ManifestPyDataset` wraps
:class:`mdprep.training.data.ManifestDataset` (the same decoding and resizing) and
augments with the same :func:`~mdprep.training.data.cxr_safe`.

Keras picks its backend once, when it is first imported: this module sets
``KERAS_BACKEND=torch`` (unless it is set) before importing Keras, and refuses to
run when Keras was already imported with another backend, or when
``KERAS_BACKEND`` names another one. Needs the ``keras`` extra
(``pip install 'mdprep[keras]'``: Keras 3 and torch).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable, Mapping, Sequence

import numpy as np

from .errors import InputError, UsageError, cut_text

BACKEND = "torch"

_WRONG_BACKEND = (
    "mdprep.keras runs Keras 3 on its torch backend, but {what}; set KERAS_BACKEND=torch "
    "before Keras is first imported (in the shell, or with os.environ before `import keras`)"
)


def _require_torch_backend() -> None:
    """Raise :class:`UsageError` unless Keras is (or will be) on the torch backend."""
    if "keras" in sys.modules:
        name = sys.modules["keras"].backend.backend()
        if name != BACKEND:
            raise UsageError(_WRONG_BACKEND.format(what=f"Keras was already imported with the {name!r} backend"), backend=name)
    elif os.environ.get("KERAS_BACKEND", BACKEND) != BACKEND:
        name = os.environ["KERAS_BACKEND"]
        raise UsageError(_WRONG_BACKEND.format(what=f"KERAS_BACKEND is {name!r}"), backend=name)


os.environ.setdefault("KERAS_BACKEND", BACKEND)
_require_torch_backend()
try:
    import keras
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise UsageError(f"mdprep.keras needs Keras 3 and torch ({exc}); install them with pip install 'mdprep[keras]'") from None
_require_torch_backend()

import torch  # noqa: E402 - after the backend is chosen

from .crossval import FitOptions, FitResult, mean_defined  # noqa: E402
from .training.data import AUGMENTS, ManifestDataset, cxr_safe  # noqa: E402
from .training.loop import DivergedError, pick_device, roc_auc_per_label  # noqa: E402

#: The Keras models :func:`build_model` makes.
ARCHITECTURES = ("densenet121", "resnet50", "small")
#: Input channels of each model: the applications take grey repeated to 3 channels.
CHANNELS = {"densenet121": 3, "resnet50": 3, "small": 1}
#: The smallest ``image_size`` each model takes (the applications refuse less than 32 pixels).
MIN_SIZE = {"densenet121": 32, "resnet50": 32, "small": 16}
#: ImageNet input statistics of ``keras.applications`` preprocessing, per model:
#: ``(mean, std)`` on pixels in [0, 1], channels in the order the network expects.
IMAGENET_STATS = {
    # densenet.preprocess_input, mode "torch": x / 255, then (x - mean) / std per RGB channel.
    "densenet121": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # resnet.preprocess_input, mode "caffe": RGB -> BGR, then x - mean on 0..255 pixels (no scaling),
    # that is (x01 - mean / 255) / (1 / 255) with the BGR means.
    "resnet50": (tuple(m / 255.0 for m in (103.939, 116.779, 123.68)), (1 / 255.0,) * 3),
}
#: Name of the checkpoint :func:`fit` writes in ``out_dir``.
CHECKPOINT = "best.keras"

__all__ = [
    "ARCHITECTURES",
    "CHANNELS",
    "CHECKPOINT",
    "ManifestPyDataset",
    "MaskedWeightedBCE",
    "build_model",
    "fit",
    "freeze_backbone",
    "imagenet_preprocess",
    "load_pretrained",
    "masked_weighted_bce",
    "pretrained_normalizes",
]


class ManifestPyDataset(keras.utils.PyDataset):
    """Batches of manifest rows for Keras: ``(x, y)`` numpy float32 arrays.

    * ``x``: ``(batch, size, size, channels)``, channels last, in [0, 1]: each image
      decoded and resized by :class:`mdprep.training.data.ManifestDataset` (exactly the
      PyTorch path's pixels) and, with ``augment="cxr-safe"``, augmented by
      :func:`mdprep.training.data.cxr_safe`;
    * ``y``: ``(batch, 2 * labels)``: the targets (1 for a positive label, else 0) in
      the first ``labels`` columns, then the masks (1 where the label is 1 or 0, 0
      where it is uncertain -1 or missing), which :class:`MaskedWeightedBCE` applies.

    Rows come in frame order unless ``shuffle``; then each epoch (set by
    :meth:`set_epoch`) draws its own order from ``seed``. Augmentation draws from a
    generator seeded by ``(seed, epoch, batch)``. ``drop_last`` leaves out the last
    partial batch.

    ``workers`` threads (0: none) decode the images of a batch in parallel and, while
    the model trains on a batch, the next one. Keras' own ``PyDataset`` workers are
    not used: their queue carries batches over from one pass to the next, which
    would make runs depend on thread timing. Batches are the same whatever
    ``workers`` is, so a seeded run is too. Call :meth:`close` to stop the threads.
    """

    def __init__(
        self,
        frame,
        root: str,
        labels: Sequence[str],
        *,
        batch_size: int = 32,
        size: int = 224,
        channels: int = 1,
        shuffle: bool = False,
        seed: int = 0,
        augment: str = "none",
        hflip: bool = False,
        drop_last: bool = False,
        workers: int = 0,
    ) -> None:
        if augment not in AUGMENTS:
            raise UsageError(f"unknown --augment {augment!r}; choose one of {', '.join(AUGMENTS)}")
        super().__init__(workers=1, use_multiprocessing=False)
        self.images = ManifestDataset(frame, root, list(labels), size=size, channels=channels)
        self.n_labels = len(labels)
        self.batch_size = int(batch_size)
        self.shuffle, self.seed, self.augment, self.hflip, self.drop_last = shuffle, int(seed), augment, hflip, drop_last
        self.threads = max(0, int(workers))
        self._pool = None
        self._ahead: dict = {}
        self.set_epoch(0)

    @property
    def targets(self) -> np.ndarray:
        """float32 ``(rows, labels)``: 1 for a positive label, else 0, in frame order."""
        return self.images.targets.numpy()

    @property
    def masks(self) -> np.ndarray:
        """float32 ``(rows, labels)``: 1 where the label is 1 or 0, else 0, in frame order."""
        return self.images.masks.numpy()

    @property
    def rows_per_epoch(self) -> int:
        """How many rows one pass yields (fewer than the frame's with ``drop_last``)."""
        n = len(self.images)
        return (n // self.batch_size) * self.batch_size if self.drop_last and n > self.batch_size else n

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch: its row order (with ``shuffle``) and its augmentation draws."""
        self.epoch = int(epoch)
        n = len(self.images)
        self.order = np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle else np.arange(n)

    def __len__(self) -> int:
        return -(-self.rows_per_epoch // self.batch_size)

    def _rows(self, index: int) -> tuple[int, ...]:
        return tuple(int(i) for i in self.order[index * self.batch_size : min((index + 1) * self.batch_size, self.rows_per_epoch)])

    def _images(self, rows: Sequence[int], parallel: bool) -> torch.Tensor:
        if parallel and self._pool is not None:
            return torch.stack(list(self._pool.map(lambda i: self.images[i][0], rows)))
        return torch.stack([self.images[i][0] for i in rows])

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of a dataset of {len(self)} batches")
        rows = self._rows(index)
        if self.threads and self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="mdprep-keras-loader")
        ahead = self._ahead.pop(rows, None)
        for stale in self._ahead.values():
            stale.cancel()
        self._ahead.clear()
        if self._pool is not None and index + 1 < len(self):
            following = self._rows(index + 1)
            self._ahead[following] = self._pool.submit(self._images, following, False)
        images = ahead.result() if ahead is not None else self._images(rows, parallel=True)
        if self.augment == "cxr-safe":
            state = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(2, dtype=np.uint32)
            generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
            images = cxr_safe(images, generator, hflip=self.hflip)
        x = images.permute(0, 2, 3, 1).contiguous().numpy()
        y = np.concatenate([self.images.targets[list(rows)].numpy(), self.images.masks[list(rows)].numpy()], axis=1)
        return x, y

    def close(self) -> None:
        """Stop the loader threads (a later batch starts them again)."""
        for pending in self._ahead.values():
            pending.cancel()
        self._ahead.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


@keras.saving.register_keras_serializable(package="mdprep")
class MaskedWeightedBCE(keras.losses.Loss):
    """Weighted binary cross-entropy from logits, summed over labels, each label averaged over its unmasked rows.

    The formula of :func:`mdprep.training.loop.masked_weighted_bce` and
    :func:`mdprep.weights.weighted_bce`: ``-(w_pos * y * log s(x) + w_neg * (1 - y) *
    log(1 - s(x)))``. ``y_true`` is a :class:`ManifestPyDataset` target, ``(batch, 2 *
    labels)``: targets, then masks; uncertain and missing labels (mask 0) add nothing.
    The result is already one number per batch, so no further reduction applies.
    """

    def __init__(self, w_pos: Sequence[float], w_neg: Sequence[float], name: str = "masked_weighted_bce", **kwargs) -> None:
        kwargs.pop("reduction", None)
        super().__init__(name=name, reduction="sum", **kwargs)
        self.w_pos = [float(v) for v in np.asarray(w_pos, dtype="float64").ravel()]
        self.w_neg = [float(v) for v in np.asarray(w_neg, dtype="float64").ravel()]
        if len(self.w_pos) != len(self.w_neg):
            raise UsageError(f"w_pos has {len(self.w_pos)} weights but w_neg has {len(self.w_neg)}; give one of each per label")

    def call(self, y_true, y_pred):
        ops = keras.ops
        n = len(self.w_pos)
        targets, masks = y_true[:, :n], y_true[:, n:]
        w_pos = ops.convert_to_tensor(self.w_pos, dtype=y_pred.dtype)
        w_neg = ops.convert_to_tensor(self.w_neg, dtype=y_pred.dtype)
        per = -(w_pos * targets * ops.log_sigmoid(y_pred) + w_neg * (1 - targets) * ops.log_sigmoid(-y_pred)) * masks
        return ops.sum(ops.sum(per, axis=0) / ops.maximum(ops.sum(masks, axis=0), 1.0))

    def get_config(self) -> dict:
        return {"name": self.name, "w_pos": self.w_pos, "w_neg": self.w_neg}


def masked_weighted_bce(w_pos: Sequence[float], w_neg: Sequence[float]) -> MaskedWeightedBCE:
    """The Keras loss of the trainer for these per-label weights (see :class:`MaskedWeightedBCE`)."""
    return MaskedWeightedBCE(w_pos, w_neg)


def _check_arch(arch: str, image_size: int) -> None:
    if arch not in ARCHITECTURES:
        raise UsageError(f"unknown --arch {arch!r} for --framework keras; choose one of {', '.join(ARCHITECTURES)}", option="--arch", value=arch)
    if image_size < MIN_SIZE[arch]:
        raise UsageError(f"--image-size {image_size}: the Keras {arch} takes images of {MIN_SIZE[arch]} pixels or more", option="--image-size", value=image_size)


def _small_backbone(size: int) -> keras.Model:
    """Like :class:`mdprep.training.models.SmallCNN`: four conv-BN-ReLU-pool blocks and global average pooling."""
    L = keras.layers
    blocks: list = [keras.Input((size, size, CHANNELS["small"]))]
    for i, width in enumerate((32, 64, 128, 128), start=1):
        # Fixed layer names (legacy .h5 files load by name); torch's BatchNorm2d defaults
        # (momentum 0.1, eps 1e-5), as the PyTorch SmallCNN has.
        blocks += [
            L.Conv2D(width, 3, padding="same", use_bias=False, name=f"block{i}_conv"),
            L.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"block{i}_bn"),
            L.ReLU(name=f"block{i}_relu"),
            L.MaxPooling2D(2, name=f"block{i}_pool"),
        ]
    blocks.append(L.GlobalAveragePooling2D(name="avg_pool"))
    return keras.Sequential(blocks, name="backbone")


def imagenet_preprocess(arch: str) -> keras.layers.Layer:
    """The layer that normalises [0, 1] grey pixels (repeated to 3 channels) for an ImageNet-trained ``arch``.

    It gives what ``keras.applications.densenet.preprocess_input`` (mode ``torch``)
    or ``keras.applications.resnet.preprocess_input`` (mode ``caffe``: BGR, zero-centred
    0..255 pixels) give on the same image as 0..255 RGB pixels: the channels of a
    grey image are equal, so the BGR reordering is the order of the means.
    """
    mean, std = IMAGENET_STATS[arch]
    return keras.layers.Normalization(mean=list(mean), variance=[s * s for s in std], name="imagenet_preprocess")


def build_model(arch: str, n_labels: int, *, image_size: int = 224, imagenet_normalize: bool = False) -> keras.Model:
    """A fresh Keras model with random weights giving one logit per label.

    The input is ``(image_size, image_size, CHANNELS[arch])`` float32 in [0, 1]
    (what :class:`ManifestPyDataset` yields); the layers are ``backbone`` (the
    ``keras.applications`` DenseNet121 or ResNet50 without its top, average-pooled,
    or the small CNN) and ``head`` (a Dense layer, one logit per label). With
    ``imagenet_normalize`` (pretrained ImageNet weights), an ``imagenet_preprocess``
    layer first normalises the input as ``keras.applications`` preprocessing does for
    that network (see :data:`IMAGENET_STATS`), so the saved model takes [0, 1] pixels.
    """
    _check_arch(arch, image_size)
    channels = CHANNELS[arch]
    inputs = keras.Input((image_size, image_size, channels), name="image")
    x = imagenet_preprocess(arch)(inputs) if imagenet_normalize and arch in IMAGENET_STATS else inputs
    if arch == "small":
        backbone = _small_backbone(image_size)
    else:
        app = keras.applications.DenseNet121 if arch == "densenet121" else keras.applications.ResNet50
        backbone = app(include_top=False, weights=None, input_shape=(image_size, image_size, channels), pooling="avg", name="backbone")
    logits = keras.layers.Dense(n_labels, name="head")(backbone(x))
    return keras.Model(inputs, logits, name=f"mdprep_{arch}")


def _expected(arch: str) -> str:
    return (
        f"expected a Keras weights file of the {arch} backbone (a .weights.h5 from model.save_weights, or the "
        f"{'ImageNet .h5 file keras.applications uses' if arch != 'small' else 'legacy .h5'}), or a {CHECKPOINT} "
        f"written by mdprep.keras with arch {arch}"
    )


def _h5_layer_names(path: str) -> list[str] | None:
    """Layer names of a legacy Keras HDF5 weights file, or ``None`` when it is not one."""
    import h5py

    with h5py.File(path, "r") as f:
        group = f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f
        if "layer_names" not in group.attrs:
            return None
        return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in group.attrs["layer_names"]]


def _donor_backbone(path: str, arch: str) -> keras.Model:
    """The ``backbone`` of a ``best.keras`` written by :func:`fit`."""
    try:
        donor = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - load_model fails in many ways on a foreign or damaged file
        raise InputError(f"--pretrained {path} is not a readable Keras model ({type(exc).__name__}: {cut_text(' '.join(str(exc).split()), 120)}); {_expected(arch)}", path=path) from None
    try:
        return donor.get_layer("backbone")
    except ValueError:
        raise InputError(f"--pretrained {path} is a Keras model without a 'backbone' layer, not a {CHECKPOINT} of mdprep.keras; {_expected(arch)}", path=path) from None


def pretrained_normalizes(path: str, arch: str) -> bool:
    """Whether a model loading ``path`` with ``--pretrained`` takes ImageNet-normalised input.

    ImageNet backbone files do (for the applications); a ``best.keras`` of
    mdprep.keras keeps the input scaling it was trained with.
    """
    if path.endswith(".keras") and os.path.isfile(path):
        try:
            import zipfile

            with zipfile.ZipFile(path) as zf:
                return b'"imagenet_preprocess"' in zf.read("config.json")
        except (OSError, KeyError, zipfile.BadZipFile):
            return False
    return arch in IMAGENET_STATS


def _normalizes(options: FitOptions) -> bool:
    """Whether the model gets the ImageNet preprocessing layer, from ``--normalize`` (``auto``: as the pretrained file needs)."""
    how = getattr(options, "normalize", "auto")
    if how == "none":
        return False
    if how == "imagenet":
        if options.arch not in IMAGENET_STATS:
            raise UsageError(f"--normalize imagenet: the Keras {options.arch!r} model takes one grey channel; ImageNet normalisation is for {', '.join(IMAGENET_STATS)}", option="--normalize")
        return True
    if how != "auto":
        raise UsageError(f"unknown --normalize {how!r}; choose one of auto, imagenet, none", option="--normalize")
    return bool(options.pretrained) and pretrained_normalizes(options.pretrained, options.arch)


def load_pretrained(model: keras.Model, path: str, arch: str) -> dict:
    """Load a local weights file into the model's ``backbone``; nothing is downloaded.

    Accepted files:

    * a Keras 3 ``.weights.h5`` of the backbone (``backbone.save_weights``); a file that
      also holds a top (``include_top=True``) loads too, its top ignored;
    * a legacy HDF5 ``.h5``/``.hdf5`` file, such as the ImageNet files that
      ``keras.applications`` downloads, with or without their top: loaded by layer
      name (``by_name``), after checking that it holds every layer of the backbone
      that has weights (a backbone left partly random would train silently worse);
    * a ``best.keras`` written by :func:`fit` for the same ``arch``: its backbone.

    Returns ``{"file", "format", "loaded"}`` (``loaded``: backbone variables set).

    Raises
    ------
    InputError
        Naming the file and what was expected, when it is missing, of another format,
        does not fit the backbone, or holds NaN or infinite values.
    """
    backbone = model.get_layer("backbone")
    expected = _expected(arch)
    if os.path.isdir(path):
        raise InputError(f"--pretrained {path!r} is a folder; {expected}", path=path)
    if not os.path.isfile(path):
        raise InputError(f"--pretrained {path!r} does not exist; {expected}", path=path)
    if path.endswith(".keras"):
        fmt = "keras"
        donor = _donor_backbone(path, arch)
        try:
            backbone.set_weights(donor.get_weights())
        except ValueError as exc:
            raise InputError(f"--pretrained {path} does not fit the Keras {arch} backbone ({cut_text(' '.join(str(exc).split()), 160)}); {expected}", path=path) from None
    elif path.endswith((".weights.h5", ".h5", ".hdf5")):
        try:
            legacy = None if path.endswith(".weights.h5") else _h5_layer_names(path)
        except OSError as exc:
            raise InputError(f"--pretrained {path} is not an HDF5 file ({cut_text(' '.join(str(exc).split()), 120)}); {expected}", path=path) from None
        fmt = "h5 by layer name" if legacy is not None else "weights.h5"
        if legacy is not None:
            missing = [layer.name for layer in backbone.layers if layer.weights and layer.name not in set(legacy)]
            if missing:
                shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
                n = sum(1 for layer in backbone.layers if layer.weights)
                raise InputError(
                    f"--pretrained {path} does not fit the Keras {arch} backbone: {len(missing)} of its {n} layers with weights "
                    f"are missing from the file ({shown}); {expected}",
                    path=path,
                    missing=missing,
                )
        elif not path.endswith(".weights.h5"):
            raise InputError(f"--pretrained {path} is an HDF5 file without Keras layer names; {expected}", path=path)
        try:
            if legacy is not None:
                backbone.load_weights(path, by_name=True)
            else:
                backbone.load_weights(path)
        except (ValueError, KeyError, OSError, TypeError) as exc:
            raise InputError(f"--pretrained {path} does not fit the Keras {arch} backbone ({cut_text(' '.join(str(exc).split()), 160)}); {expected}", path=path) from None
    else:
        raise InputError(f"--pretrained {path}: not a Keras weights file (.weights.h5, .h5, .hdf5 or .keras); {expected}", path=path)
    not_finite = [w.path for w in backbone.weights if not bool(np.isfinite(keras.ops.convert_to_numpy(w.value)).all())]
    if not_finite:
        shown = ", ".join(not_finite[:3]) + (", ..." if len(not_finite) > 3 else "")
        raise InputError(f"--pretrained {path} holds NaN or infinite values in {len(not_finite)} variable(s) ({shown}); training from them cannot work", path=path)
    return {"file": path, "format": fmt, "loaded": len(backbone.weights)}


def freeze_backbone(model: keras.Model) -> int:
    """Make the ``backbone`` not trainable; returns how many of its variables were trainable.

    Keras semantics: a frozen backbone's BatchNormalization layers also run in
    inference mode (their moving statistics stay as loaded), unlike the PyTorch path,
    where frozen BatchNorm layers still update their running statistics.
    """
    backbone = model.get_layer("backbone")
    n = len(backbone.trainable_weights)
    backbone.trainable = False
    return n


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * logits.astype("float64")))).astype(np.float32)


class _Epochs(keras.callbacks.Callback):
    """Times each epoch, validates, keeps the best weights, and calls ``on_batch``/``on_epoch``."""

    def __init__(self, net, train_set, val_set, loss, labels, checkpoint, hint, on_batch, on_epoch) -> None:
        super().__init__()
        self.net, self.train_set, self.val_set, self.loss = net, train_set, val_set, loss
        self.labels, self.checkpoint, self.hint = list(labels), checkpoint, hint
        self.on_batch, self.on_epoch = on_batch, on_epoch
        self.history: list[dict] = []
        self.best_epoch, self.best_score, self.best_weights = 0, None, None

    def on_epoch_begin(self, epoch, logs=None):
        self.train_set.set_epoch(epoch)
        self.start = self.mark = time.perf_counter()
        self.wait = 0.0

    def on_train_batch_begin(self, batch, logs=None):
        self.wait += time.perf_counter() - self.mark

    def on_train_batch_end(self, batch, logs=None):
        loss = float(logs["loss"])
        if not np.isfinite(loss):
            # The running mean is finite until the first step whose loss is not.
            raise DivergedError(f"the training loss became {loss} at epoch {self.epoch_number}, step {batch + 1}; {self.hint}", epoch=self.epoch_number, step=batch + 1)
        if self.on_batch:
            self.on_batch(batch + 1, len(self.train_set))
        self.mark = time.perf_counter()

    @property
    def epoch_number(self) -> int:
        return self.train_set.epoch + 1

    def evaluate(self) -> dict:
        """Validation loss (mean over batches, as the PyTorch path), AUCs per label and their mean."""
        logits = np.asarray(self.model.predict(self.val_set, verbose=0), dtype=np.float32)
        probs = _sigmoid(logits)
        if not np.isfinite(probs).all():
            raise DivergedError(f"the model's outputs are no longer finite numbers (NaN); {self.hint}")
        y = np.concatenate([self.val_set.targets, self.val_set.masks], axis=1)
        b = self.val_set.batch_size
        losses = [float(keras.ops.convert_to_numpy(self.loss(y[i : i + b], logits[i : i + b]))) for i in range(0, len(y), b)]
        aucs = roc_auc_per_label(probs, self.val_set.targets, self.val_set.masks, self.labels)
        return {"loss": float(np.mean(losses)), "auc": aucs, "mean_auc": mean_defined(aucs)}

    def on_epoch_end(self, epoch, logs=None):
        elapsed = time.perf_counter() - self.start
        seen = self.train_set.rows_per_epoch
        record = {
            "epoch": epoch + 1,
            "train_loss": float(logs["loss"]),
            "seconds": elapsed,
            "images_per_second": seen / elapsed if elapsed else None,
            "data_wait_share": self.wait / elapsed if elapsed else None,
        }
        if self.val_set is not None:
            val = self.evaluate()
            record.update(val_loss=val["loss"], val_auc=val["auc"], val_mean_auc=val["mean_auc"])
            score = val["mean_auc"] if val["mean_auc"] is not None else -val["loss"]
        else:
            score = epoch  # no validation rows: the last epoch is kept
        self.history.append(record)
        if self.best_score is None or score > self.best_score:
            self.best_score, self.best_epoch = score, epoch + 1
            self.best_weights = [np.array(w) for w in self.net.get_weights()]
            # Written beside it, then renamed: a run stopped mid-write keeps the previous best.keras whole.
            partial = os.path.join(os.path.dirname(self.checkpoint), f".partial-{os.getpid()}-{CHECKPOINT}")
            self.net.save(partial, overwrite=True)
            os.replace(partial, self.checkpoint)
        if self.on_epoch:
            self.on_epoch(record)


def fit(
    parts: Mapping[str, object],
    *,
    root: str,
    labels: Sequence[str],
    w_pos: np.ndarray,
    w_neg: np.ndarray,
    options: FitOptions,
    out_dir: str,
    on_batch: Callable[[int, int], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> FitResult:
    """Train one Keras model on ``parts["train"]``, keep the best epoch on ``parts["val"]``.

    The Keras implementation of :class:`mdprep.crossval.Fit`. Every epoch trains on
    the train rows (AdamW, weight decay 1e-4, the loss :class:`MaskedWeightedBCE`
    with ``w_pos`` and ``w_neg``), then, when there are val rows, scores them: loss
    and ROC AUC per label over the rows whose label is 0 or 1. The epoch with the
    best mean AUC (else the lowest loss; without val rows, the last epoch) is kept:
    its model is saved to ``out_dir/best.keras`` (Keras format, not compiled: input
    ``(image_size, image_size, channels)`` float32 pixels in [0, 1], output one logit
    per label; ``keras.saving.load_model`` reads it without mdprep), and with its
    weights the val and test rows (when there are any) are predicted.

    ``on_batch(step, steps_per_epoch)`` runs after each training step (from 1) and
    ``on_epoch(record)`` after each epoch, with the record added to the history.
    ``options.device`` ``cpu`` keeps every tensor on the CPU even where CUDA is
    available; ``auto`` takes CUDA when torch sees it. Same seed, same device: same
    run (on the CPU, identical losses).

    Raises
    ------
    UsageError
        Unknown ``arch`` or ``augment``, an image size the model does not take, an
        unavailable device, or Keras on another backend.
    InputError
        A ``pretrained`` file that cannot be used (see :func:`load_pretrained`).
    mdprep.training.loop.DivergedError
        The loss or the outputs stopped being finite numbers.
    """
    _require_torch_backend()
    _check_arch(options.arch, options.image_size)
    if options.augment not in AUGMENTS:
        raise UsageError(f"unknown --augment {options.augment!r}; choose one of {', '.join(AUGMENTS)}", option="--augment", value=options.augment)
    labels = list(labels)
    w_pos = np.asarray(w_pos, dtype=np.float32).ravel()
    w_neg = np.asarray(w_neg, dtype=np.float32).ravel()
    if len(w_pos) != len(labels) or len(w_neg) != len(labels):
        raise UsageError(f"{len(labels)} labels but {len(w_pos)} positive and {len(w_neg)} negative weights; give one of each per label")
    if not len(parts["train"]):
        raise UsageError("no train rows to fit on; every run needs train rows", part="train")
    device = pick_device(options.device).type
    keras.utils.set_random_seed(options.seed)
    common = dict(root=root, labels=labels, size=options.image_size, channels=CHANNELS[options.arch], workers=options.workers)
    train_frame = parts["train"]
    train_set = ManifestPyDataset(
        train_frame, batch_size=options.batch_size, shuffle=True, seed=options.seed, augment=options.augment,
        hflip=options.hflip, drop_last=len(train_frame) > options.batch_size, **common,
    )
    evals = {k: ManifestPyDataset(parts[k], batch_size=options.batch_size, **common) for k in ("val", "test") if k in parts and len(parts[k])}
    checkpoint = os.path.join(out_dir, CHECKPOINT)
    largest = float(max(w_pos.max(initial=0), w_neg.max(initial=0)))
    hint = ", or ".join(
        [f"lower the learning rate (now {options.lr:g})", f"check the class weights (largest {largest:g})"]
        + (["check the pretrained weights"] if options.pretrained else [])
    )
    try:
        return _fit(device, train_set, evals, labels, w_pos, w_neg, options, checkpoint, hint, on_batch, on_epoch)
    finally:
        for ds in (train_set, *evals.values()):
            ds.close()


def _fit(device, train_set, evals, labels, w_pos, w_neg, options, checkpoint, hint, on_batch, on_epoch) -> FitResult:
    with keras.device(device):
        normalize = _normalizes(options)
        net = build_model(options.arch, len(labels), image_size=options.image_size, imagenet_normalize=normalize)
        pretrained = load_pretrained(net, options.pretrained, options.arch) if options.pretrained else None
        frozen = freeze_backbone(net) if options.freeze else 0
        os.makedirs(os.path.dirname(checkpoint), exist_ok=True)
        # A second model over the same layers is the one compiled and trained, so the
        # saved checkpoint (net) carries no optimizer or loss: plain Keras reads it.
        trainer = keras.Model(net.inputs, net.outputs, name=net.name)
        loss = masked_weighted_bce(w_pos, w_neg)
        trainer.compile(optimizer=keras.optimizers.AdamW(learning_rate=options.lr, weight_decay=1e-4, epsilon=1e-8), loss=loss, jit_compile=False)
        epochs = _Epochs(net, train_set, evals.get("val"), loss, labels, checkpoint, hint, on_batch, on_epoch)
        trainer.fit(train_set, epochs=options.epochs, shuffle=False, verbose=0, callbacks=[epochs])
        net.set_weights(epochs.best_weights)
        probabilities = {k: _sigmoid(np.asarray(net.predict(ds, verbose=0))) for k, ds in evals.items()}
    details = {
        "framework": "keras",
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
        "checkpoint_format": "keras: uncompiled model, input (size, size, channels) float32 in [0, 1], output logits",
        "channels": CHANNELS[options.arch],
        "normalize": "imagenet" if normalize else None,
        "pretrained": pretrained,
        "frozen_tensors": frozen,
        "loader_threads": train_set.threads,
    }
    return FitResult(history=epochs.history, best_epoch=epochs.best_epoch, checkpoint=checkpoint, probabilities=probabilities, device=device, details=details)

"""The PyTorch training loop (:func:`fit`) and the run driver both frameworks share (:func:`train`).

:func:`train` plans the runs (a split, fold K, or every fold; :mod:`mdprep.crossval`),
refuses leakage and unreadable images before the first epoch, calls a framework's
``fit`` per run, and writes ``predictions.parquet`` and ``metrics.json``.
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from .. import __version__
from ..audit import value_overlap
from ..crossval import FitOptions, FitResult, RunPlan, auc_summary, check_prediction_columns, mean_defined, plan_runs, predictions_table, roc_auc_per_label
from ..errors import InputError, LeakageError, MdprepError, MdprepWarning, UsageError, cut_text, examples_text, short_repr
from ..fileio import atomic_write, paths_outside_root
from ..storage import canonical_root, is_url
from ..manifest import Manifest, write_table
from ..params import MAX_BATCH_SIZE, MAX_IMAGE_SIZE, MAX_LR, MIN_IMAGE_SIZE, check_number, check_seed
from ..weights import weights_from_document
from .data import AUGMENTS, FILE_COLUMN, NORMALIZE_CHOICES, ManifestDataset, cxr_safe, file_column, normalisation_for, normalise, unreadable_images
from .models import ARCHITECTURES, build_model, check_arch, freeze_backbone, load_pretrained

FRAMEWORKS = ("torch", "keras")


class DivergedError(MdprepError):
    """The loss or the model's outputs stopped being finite numbers: the run cannot go on."""

    code = "diverged"


def masked_weighted_bce(logits: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor, w_pos: torch.Tensor, w_neg: torch.Tensor) -> torch.Tensor:
    """Weighted binary cross-entropy summed over labels, each label averaged over its unmasked rows.

    The same formula as :func:`mdprep.weights.weighted_bce` (the numpy reference):
    ``-(w_pos * y * log s(x) + w_neg * (1 - y) * log(1 - s(x)))``; uncertain and
    missing labels (mask 0) add nothing.
    """
    log_p = torch.nn.functional.logsigmoid(logits)
    log_q = torch.nn.functional.logsigmoid(-logits)
    per = -(w_pos * targets * log_p + w_neg * (1 - targets) * log_q) * masks
    counts = masks.sum(dim=0)
    return (per.sum(dim=0) / counts.clamp(min=1)).sum()


def read_weights_document(path: str) -> dict:
    """The parsed ``weights.json`` at ``path``; an :class:`InputError` naming the file when it cannot be read."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise InputError(f"weights file {path!r} does not exist; create it with `mdprep weights`", path=path) from None
    except ValueError as exc:  # UnicodeDecodeError included
        raise InputError(f"{path} is not valid JSON ({cut_text(str(exc), 100)}); create it with `mdprep weights`", path=path) from None


def read_weights(path: str, labels: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Labels, w_pos and w_neg from ``weights.json`` (schema ``mdprep-weights``).

    Every scheme of ``mdprep weights`` gives a positive and a negative weight per
    label, used as is by :func:`masked_weighted_bce` (``pos-weight`` has ``w_neg = 1``,
    which is PyTorch's ``pos_weight``). The document's shape and values are checked
    by :func:`mdprep.weights.weights_from_document` (NaN, infinite and negative
    weights are refused), so a bad file stops the run before it starts.
    """
    return weights_from_document(read_weights_document(path), labels, source=path)


def _image_examples(bad, limit: int = 3) -> str:
    """``'id' at 'path' (Error: reason)`` for the first rows of an :func:`unreadable_images` table."""
    shown = "; ".join(
        f"{short_repr(r.image_id)} at {short_repr(r.path)} ({r.error_type}: {cut_text(r.message, 80)})" for r in bad.head(limit).itertuples()
    )
    return shown + (f"; ... ({len(bad)} in all)" if len(bad) > limit else "")


def _seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def pick_device(name: str) -> torch.device:
    """The torch device of ``--device`` (``auto``: CUDA when available); a UsageError for cuda without CUDA."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available to this torch build; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise UsageError(f"--device {name!r}: choose auto, cpu or cuda")
    return torch.device(name)


def _evaluate(model, loader, device, w_pos, w_neg, labels, how: str | None = None) -> dict:
    """Loss, per-label AUC and the sigmoid outputs (``probs``, rows in loader order) of one part."""
    model.eval()
    probs, targets, masks, loss_sum, batches = [], [], [], 0.0, 0
    with torch.no_grad():
        for images, y, m in loader:
            logits = model(normalise(images, how).to(device))
            loss_sum += float(masked_weighted_bce(logits, y.to(device), m.to(device), w_pos, w_neg))
            batches += 1
            probs.append(torch.sigmoid(logits).float().cpu().numpy())
            targets.append(y.numpy())
            masks.append(m.numpy())
    p, t, k = np.concatenate(probs), np.concatenate(targets), np.concatenate(masks)
    if not np.isfinite(p).all():
        raise DivergedError("the model's outputs are no longer finite numbers (NaN); lower --lr, or check the --weights and --pretrained files")
    aucs = roc_auc_per_label(p, t, k, labels)
    return {"loss": loss_sum / max(batches, 1), "auc": aucs, "mean_auc": mean_defined(aucs), "probs": p}


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
    """Train one PyTorch model on ``parts["train"]``, keep its best epoch on ``parts["val"]``.

    Follows the :class:`mdprep.crossval.Fit` contract: writes ``out_dir/best.pt``
    (weights, labels and settings of the kept epoch) and returns the kept model's
    probabilities for the ``val`` and ``test`` rows (when there are any).
    """
    o = options
    dev = pick_device(o.device)
    generator = _seed_everything(o.seed)
    model = build_model(o.arch, len(labels))
    pretrained_report = load_pretrained(model, o.pretrained, o.arch) if o.pretrained else None
    if pretrained_report and "normalize" in pretrained_report and o.normalize == "auto":
        how = pretrained_report["normalize"]  # fine-tuning a best.pt: its inputs' normalisation, whatever it was
    else:
        how = normalisation_for(o.normalize, pretrained=bool(o.pretrained), channels=model.in_channels)
    frozen = freeze_backbone(model) if o.freeze else 0
    model.to(dev)
    w_pos_t = torch.tensor(np.asarray(w_pos, dtype=np.float32), device=dev)
    w_neg_t = torch.tensor(np.asarray(w_neg, dtype=np.float32), device=dev)
    sets = {k: ManifestDataset(v, root, labels, size=o.image_size, channels=model.in_channels) for k, v in parts.items()}
    loader_kw = dict(batch_size=o.batch_size, num_workers=o.workers)
    train_loader = torch.utils.data.DataLoader(sets["train"], shuffle=True, generator=generator, drop_last=len(sets["train"]) > o.batch_size, **loader_kw)
    eval_loaders = {k: torch.utils.data.DataLoader(sets[k], shuffle=False, **loader_kw) for k in ("val", "test") if k in sets and len(sets[k])}
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=o.lr, weight_decay=1e-4)
    os.makedirs(out_dir, exist_ok=True)
    history, best_epoch, best_score = [], 0, None
    divergence_hint = ", or ".join(
        [f"lower --lr (now {o.lr:g})"]
        + ([f"check the --weights file (largest weight {float(max(np.max(w_pos), np.max(w_neg))):g})"] if np.any(np.asarray(w_pos) != 1) or np.any(np.asarray(w_neg) != 1) else [])
        + (["check the --pretrained weights"] if o.pretrained else [])
    )
    checkpoint = os.path.join(out_dir, "best.pt")
    for epoch in range(1, o.epochs + 1):
        model.train()
        start, loss_sum, seen, wait = time.perf_counter(), 0.0, 0, 0.0
        t_fetch = time.perf_counter()
        for step, (images, y, m) in enumerate(train_loader, start=1):
            wait += time.perf_counter() - t_fetch
            if o.augment == "cxr-safe":
                images = cxr_safe(images, generator, hflip=o.hflip)
            logits = model(normalise(images, how).to(dev))
            loss = masked_weighted_bce(logits, y.to(dev), m.to(dev), w_pos_t, w_neg_t)
            if not torch.isfinite(loss):
                raise DivergedError(f"the training loss became {loss.item()} at epoch {epoch}, step {step}; {divergence_hint}", epoch=epoch, step=step)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            loss_sum += loss.item() * len(images)
            seen += len(images)
            if on_batch:
                on_batch(step, len(train_loader))
            t_fetch = time.perf_counter()
        elapsed = time.perf_counter() - start
        record = {
            "epoch": epoch,
            "train_loss": loss_sum / max(seen, 1),
            "seconds": elapsed,
            "images_per_second": seen / elapsed if elapsed else None,
            "data_wait_share": wait / elapsed if elapsed else None,
        }
        if "val" in eval_loaders:
            val = _evaluate(model, eval_loaders["val"], dev, w_pos_t, w_neg_t, labels, how)
            record.update(val_loss=val["loss"], val_auc=val["auc"], val_mean_auc=val["mean_auc"])
            score = val["mean_auc"] if val["mean_auc"] is not None else -val["loss"]
        else:
            score = epoch  # no validation rows: the last epoch is kept
        history.append(record)
        if best_score is None or score > best_score:
            best_score, best_epoch = score, epoch
            torch.save(
                {
                    "model": model.state_dict(), "arch": o.arch, "labels": list(labels), "image_size": o.image_size, "channels": model.in_channels,
                    "normalize": how, "epoch": epoch, "mdprep_version": __version__,
                },
                checkpoint,
            )
        if on_epoch:
            on_epoch(record)
    probabilities = {}
    if eval_loaders:
        model.load_state_dict(torch.load(checkpoint, map_location=dev, weights_only=True)["model"])
        probabilities = {k: _evaluate(model, loader, dev, w_pos_t, w_neg_t, labels, how)["probs"] for k, loader in eval_loaders.items()}
    details = {"pretrained": pretrained_report, "frozen_tensors": frozen, "normalize": how}
    return FitResult(history, best_epoch, checkpoint, probabilities, str(dev), details)


def _check_images(frame, read: np.ndarray, root: str, *, allow_outside_root: bool, skip_missing: bool, workers: int, hint: str = ""):
    """The rows to leave out (a boolean mask over ``frame``), and the table of unreadable images.

    ``read`` marks the rows some run will read. Raises :class:`InputError` for paths
    outside the root (unless allowed) and, without ``skip_missing``, for images that
    are missing or do not decode.
    """
    used = frame[read]
    outside = paths_outside_root(root, file_column(used), allow_outside_root=allow_outside_root)
    if outside.any():
        warnings.warn(f"{int(outside.sum())} row(s) read from outside the image root {root!r} (--allow-outside-root)", MdprepWarning, stacklevel=3)
    bad = unreadable_images(used, root, workers=workers)
    drop = np.zeros(len(frame), dtype=bool)
    if bad.empty:
        return drop, bad
    what = f"{len(bad)} image(s) that training would read are missing or do not decode: {_image_examples(bad)}"
    if not skip_missing:
        raise InputError(f"{what}. {hint}Fix or remove these rows, or pass --skip-missing to train without them", path=root, count=len(bad), examples=bad.head(5).to_dict(orient="records"))
    warnings.warn(f"{what}; skipped (--skip-missing), listed in metrics.json", MdprepWarning, stacklevel=3)
    drop = read & frame["image_id"].astype("str").isin(set(bad["image_id"])).to_numpy()
    return drop, bad


def _refuse_leakage(frame, plan: RunPlan, *, allow_leakage: bool) -> int:
    """Patients shared by the train, validation and test rows of any run stop training (or warn); returns how many."""
    shared: dict[str, None] = {}
    for run in plan.runs:
        roles = run.roles()
        keep = roles != None  # noqa: E711 - elementwise over an object array
        sub = frame[keep].assign(_part=roles[keep])
        found = value_overlap(sub, "patient_id", split_col="_part", check="patient_overlap").findings
        shared.update(dict.fromkeys(found["key"].tolist()) if not found.empty else {})
    if not shared:
        return 0
    keys = list(shared)
    where = "the folds or the test split" if plan.mode != "split" else "more than one split"
    message = f"{len(keys)} patient(s) appear in {where} (for example {examples_text(keys, len(keys), limit=3)}); metrics on such a split are inflated"
    if not allow_leakage:
        raise LeakageError(f"{message}. Re-split with `mdprep split`, or pass --allow-leakage")
    warnings.warn(f"{message}; training anyway (--allow-leakage), recorded in metrics.json", MdprepWarning, stacklevel=3)
    return len(keys)


def _run_weights(paths: Sequence[str], labels: Sequence[str], plan: RunPlan, manifest_sha: str | None = None) -> tuple[list[str], list[tuple[np.ndarray, np.ndarray]]]:
    """The labels and the (w_pos, w_neg) of each run from the ``--weights`` files.

    A file written by ``mdprep weights --fold K`` serves the run that validates on
    fold K; a file without a fold serves the fold runs that have none, with a
    warning (its rows include the validation fold). Without ``--fold``, a per-fold
    file, or one counted on the validation or test rows, is refused; one counted on
    another split, or on every row, warns. A file counted on another manifest
    (``manifest_sha``, the SHA-256 of the one training) warns.
    """
    if not paths:
        ones = np.ones(len(labels), dtype=np.float32)
        return list(labels), [(ones, ones)] * len(plan.runs)
    by_fold: dict[int | None, tuple[str, dict]] = {}
    for path in paths:
        doc = read_weights_document(path)
        key = doc.get("fold") if isinstance(doc, dict) else None
        if key is not None and (isinstance(key, bool) or not isinstance(key, int)):
            raise InputError(f"{path}: 'fold' is {short_repr(key)}, not a fold number; create it with `mdprep weights --fold K`", path=path)
        if key in by_fold:
            raise UsageError(f"--weights {by_fold[key][0]} and {path} are both for {'fold ' + str(key) if key is not None else 'the whole training split'}; give one file per fold")
        by_fold[key] = (path, doc)
    names: list[str] | None = None
    parsed = {}
    for key, (path, doc) in by_fold.items():
        got, w_pos, w_neg = weights_from_document(doc, labels, source=path)
        if names is not None and got != names:
            raise UsageError(f"the --weights files weigh different labels ({', '.join(names)} against {', '.join(got)} in {path}); compute them with the same --labels")
        names = got
        parsed[key] = (w_pos, w_neg)
        counted_on = ((doc.get("provenance") or {}).get("manifest") or {}).get("sha256") if isinstance(doc.get("provenance"), dict) else None
        if manifest_sha and isinstance(counted_on, str) and counted_on != manifest_sha:
            warnings.warn(f"{path} was counted on another manifest file (SHA-256 {counted_on[:12]}..., this one is {manifest_sha[:12]}...); check that its rows are this manifest's", MdprepWarning, stacklevel=3)
    folds = {run.fold for run in plan.runs}
    if plan.mode == "split":
        path, doc = next(iter(by_fold.values()))
        if len(by_fold) > 1 or None not in by_fold:
            k = next(k for k in by_fold if k is not None)
            raise UsageError(
                f"{by_fold[k][0]} was counted on the training part of fold {k}, but this run trains on the {plan.train_split!r} split; "
                "use `mdprep weights` without --fold, or train with --fold K"
            )
        counted = doc.get("split")
        leaking = {plan.val_split, plan.test_split} - {None}
        if isinstance(counted, str) and any(counted in names_.split(", ") for names_ in leaking):
            raise UsageError(f"{path} was counted on the {counted!r} rows, which validate or test this run: their labels would leak into training; compute it with `mdprep weights --split {plan.train_split.split(', ')[0]}`")
        if counted == "all":
            warnings.warn(f"{path} was counted on every row, validation and test rows included (--split all)", MdprepWarning, stacklevel=3)
        elif isinstance(counted, str) and counted not in plan.train_split.split(", "):
            warnings.warn(f"{path} was counted on the {counted!r} rows, not on the {plan.train_split!r} rows this run trains on", MdprepWarning, stacklevel=3)
    else:
        ignored = sorted(k for k in parsed if k is not None and k not in folds)
        if ignored:
            warnings.warn(f"--weights for fold(s) {', '.join(map(str, ignored))} are not used: this run trains fold(s) {', '.join(map(str, sorted(folds)))}", MdprepWarning, stacklevel=3)
    out = []
    for run in plan.runs:
        key = run.fold if run.fold in parsed else None
        if key not in parsed:
            have = ", ".join(f"fold {k}" for k in sorted(k for k in parsed if k is not None))
            raise UsageError(f"no --weights file for fold {run.fold} (the files are for {have}); compute it with `mdprep weights --fold {run.fold}`")
        path, doc = by_fold[key]
        if run.fold is not None and key is None:
            warnings.warn(
                f"{path} was counted on the {short_repr(doc.get('split'))} rows, which include the rows fold {run.fold} validates on; "
                f"compute per-fold weights with `mdprep weights --fold {run.fold}`",
                MdprepWarning,
                stacklevel=3,
            )
        out.append(parsed[key])
    return names or [], out


def library_versions(framework: str) -> dict[str, str | None]:
    """Versions of Python and the libraries that shape a run's numbers."""
    from importlib import metadata

    names = ["mdprep", "numpy", "pandas", "pyarrow", "pydicom", "Pillow", "torch"] + (["keras"] if framework == "keras" else [])
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = __version__ if name == "mdprep" else None
    return out


def _framework_fit(framework: str):
    """The ``fit`` function and the architectures of a framework."""
    if framework == "torch":
        return fit, (*ARCHITECTURES, "tv:NAME")
    if framework == "keras":
        try:
            from .. import keras as keras_path
        except ImportError as exc:
            raise UsageError(f"--framework keras needs Keras 3 ({exc}); install it with pip install 'mdprep[keras]'") from None
        return keras_path.fit, keras_path.ARCHITECTURES
    raise UsageError(f"unknown --framework {framework!r}; choose one of {', '.join(FRAMEWORKS)}")


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` wrote: ``metrics`` is the metrics.json document."""

    run_dir: str
    metrics: dict
    plan: RunPlan

    @property
    def best_epoch(self) -> int:
        """The kept epoch of the first (or only) run."""
        return self.metrics["runs"][0]["best_epoch"]


def train(
    manifest: Manifest,
    *,
    root: str | None,
    out_dir: str,
    weights_path: str | Sequence[str] | None = None,
    framework: str = "torch",
    fold: int | str | None = None,
    train_split: str | None = None,
    val_split: str | None = None,
    test_split: str | None = None,
    no_val: bool = False,
    arch: str = "densenet121",
    epochs: int = 5,
    batch_size: int = 32,
    image_size: int = 224,
    lr: float = 1e-3,
    pretrained: str | None = None,
    freeze: bool = False,
    augment: str = "cxr-safe",
    hflip: bool = False,
    normalize: str = "auto",
    device: str = "auto",
    seed: int = 0,
    evaluate_test: bool = False,
    allow_leakage: bool = False,
    allow_outside_root: bool = False,
    skip_missing: bool = False,
    path_map: Mapping[str, str] | None = None,
    workers: int = 0,
    split_col: str = "split",
    fold_col: str = "fold",
    bootstrap: int = 1000,
    provenance: Mapping | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train multi-label classifiers on a manifest's splits or folds; write predictions and metrics.

    The runs come from :func:`mdprep.crossval.plan_runs`: the ``train`` rows train and
    the validation split (``val``, ``valid``, ``validation`` or ``dev``, or
    ``val_split``) picks the epoch; with ``fold=K`` fold K of the non-test rows
    validates and the other folds train; ``fold="all"`` trains one model per fold.
    ``framework`` is ``torch`` (:func:`fit`) or ``keras`` (:func:`mdprep.keras.fit`).

    Writes into ``out_dir``: ``best.pt`` (``best.keras``) per run (in ``fold-K/``
    with every fold), ``predictions.parquet`` (:func:`mdprep.crossval.predictions_table`:
    validation, out-of-fold and, with ``evaluate_test``, test probabilities) and
    ``metrics.json`` (per run and epoch; AUCs with a bootstrap interval over
    patients; with every fold, the pooled out-of-fold AUCs; the fingerprints in
    ``provenance``, the seed and the library versions).

    Before the first epoch, patients shared between the parts of any run stop the
    run (:class:`LeakageError`, unless ``allow_leakage``), and every image to read
    must lie under the root (see :func:`mdprep.fileio.paths_outside_root`) and
    decode (``skip_missing`` leaves out those that do not, listed in the metrics).
    ``path_map`` (pseudonymised path -> real path) trains on a pseudonymised
    manifest: images are read at their real paths; messages and outputs name only
    the pseudonymised ones.

    The trainer is 2D: a series- or volume-level manifest (``manifest.level``) is
    refused with a :class:`UsageError` before anything is read.
    """
    if manifest.level != "image":
        raise UsageError(
            f"mdprep train is 2D and this manifest is {manifest.level}-level (one row per "
            f"{'DICOM series' if manifest.level == 'series' else 'volume'}); train a 3D model on it from "
            "`mdprep export monai` (a MONAI datalist), or ingest the images at instance level for 2D training",
            level=manifest.level,
        )
    fit_fn, arches = _framework_fit(framework)
    if framework == "torch":
        check_arch(arch)
    elif arch not in arches:
        raise UsageError(f"unknown --arch {arch!r} for --framework {framework}; choose one of {', '.join(arches)}")
    if normalize not in NORMALIZE_CHOICES:
        raise UsageError(f"unknown --normalize {normalize!r}; choose one of {', '.join(NORMALIZE_CHOICES)}")
    if augment not in AUGMENTS:
        raise UsageError(f"unknown --augment {augment!r}; choose one of {', '.join(AUGMENTS)}")
    check_number(epochs, "--epochs", minimum=1, integer=True)
    check_number(batch_size, "--batch-size", minimum=1, maximum=MAX_BATCH_SIZE, integer=True)
    check_number(image_size, "--image-size", minimum=MIN_IMAGE_SIZE, maximum=MAX_IMAGE_SIZE, integer=True)
    check_number(lr, "--lr", above=0, maximum=MAX_LR)
    check_number(workers, "--workers", minimum=0, integer=True)
    check_number(bootstrap, "--bootstrap", minimum=0, integer=True)
    seed = check_seed(seed)
    options = FitOptions(arch, epochs, batch_size, image_size, lr, pretrained, freeze, augment, hflip, device, seed, workers, normalize)
    frame = manifest.frame
    if path_map is not None:
        from ..pseudonyms import resolve_paths

        frame = frame.assign(**{FILE_COLUMN: resolve_paths(manifest, path_map).frame["path"]})
    root = root or manifest.root
    if is_url(root):
        root = canonical_root(root)  # images read through fsspec (mdprep.storage)
    if not root:
        raise InputError("the manifest records no image folder (root); pass --root, the folder the manifest's paths are relative to")
    if not (is_url(root) or os.path.isdir(root)):
        raise InputError(f"image folder {root!r} not found; pass --root, the folder the manifest's paths are relative to")
    synthetic = frame["synthetic"].fillna(False).astype(bool).to_numpy() if "synthetic" in frame.columns else np.zeros(len(frame), dtype=bool)
    frame = frame[~synthetic].reset_index(drop=True)
    labels = list(manifest.labels)
    if not labels:
        raise UsageError("the manifest has no label columns to train on")
    check_prediction_columns(labels)
    plan = plan_runs(frame, fold=fold, split_col=split_col, fold_col=fold_col, train_split=train_split, val_split=val_split, test_split=test_split, no_val=no_val)
    leaking_patients = _refuse_leakage(frame, plan, allow_leakage=allow_leakage)
    plan, unused = _scored_rows(frame, plan, evaluate_test=evaluate_test)
    surprising = {name: n for name, n in unused.items() if not name.startswith("test (")}  # held-out test rows are expected
    if surprising:
        shown = ", ".join(f"{n:,} {name}" for name, n in surprising.items())
        warnings.warn(f"{sum(surprising.values()):,} row(s) are neither trained on nor scored ({shown}); counted in metrics.json (plan.unused_rows)", MdprepWarning, stacklevel=2)
    paths = [weights_path] if isinstance(weights_path, str) else list(weights_path or [])
    manifest_sha = ((provenance or {}).get("manifest") or {}).get("sha256") if isinstance((provenance or {}).get("manifest"), dict) else None
    labels, run_weights = _run_weights(paths, labels, plan, manifest_sha)
    read = np.zeros(len(frame), dtype=bool)
    for run in plan.runs:
        read |= run.train | run.val | run.test
    hint = ""
    if path_map is None:
        from ..pseudonyms import pseudonymization_state

        if pseudonymization_state(manifest).passes:
            hint = "This manifest was pseudonymised: pass --path-map with the map `mdprep pseudonymize --path-map` wrote, to read each image at its real path. "
    dropped, skipped = _check_images(frame, read, root, allow_outside_root=allow_outside_root, skip_missing=skip_missing, workers=workers, hint=hint)
    for index, run in enumerate(plan.runs):  # every run is checked before the first one trains
        masks = {part: run.mask(part) & ~dropped for part in ("train", "val", "test")}
        for part, what in (("train", "training"), ("val", "validation")):
            if run.mask(part).any() and not masks[part].any():
                raise UsageError(f"{run.name}: no {what} rows are left after skipping {len(skipped)} unreadable image(s): {_image_examples(skipped)}")
        plan = _with_masks(plan, index, masks)
    values = frame[labels].to_numpy(dtype="float64", na_value=np.nan)
    patients = frame["patient_id"].astype("string").to_numpy(dtype=object, na_value=None)
    records, probabilities = [], []
    for run, (w_pos, w_neg) in zip(plan.runs, run_weights):
        parts = {part: frame[run.mask(part)] for part in ("train", "val", "test")}
        run_dir = os.path.join(out_dir, run.name) if plan.mode == "folds" else out_dir
        tagged = (lambda record, k=run.fold: on_epoch({**record, "fold": k})) if on_epoch else None
        result = fit_fn(parts, root=root, labels=labels, w_pos=w_pos, w_neg=w_neg, options=options, out_dir=run_dir, on_batch=on_batch, on_epoch=tagged)
        probabilities.append(result.probabilities)
        summary = {}
        for part in ("val", "test"):
            if part in result.probabilities:
                rows = run.mask(part)
                summary[part] = auc_summary(result.probabilities[part], values[rows], labels, patients[rows], replicates=bootstrap, seed=seed)
        records.append(
            {
                "fold": run.fold,
                "rows": {part: int(run.mask(part).sum()) for part in ("train", "val", "test")},
                "epochs": result.history,
                "best_epoch": result.best_epoch,
                "best_val_mean_auc": next((r.get("val_mean_auc") for r in result.history if r["epoch"] == result.best_epoch), None),
                "checkpoint": os.path.relpath(result.checkpoint, out_dir),
                "device": result.device,
                "val": summary.get("val"),
                "test": summary.get("test"),
                **result.details,
            }
        )
    pooled = {}
    if plan.mode == "folds":
        oof = np.zeros(len(frame), dtype=bool)
        oof_probs = np.zeros((len(frame), len(labels)), dtype=np.float32)
        for run, probs in zip(plan.runs, probabilities):
            if "val" in probs:
                oof_probs[run.val] = probs["val"]
                oof |= run.val
        pooled["fold_mean"] = _fold_mean([r["val"] for r in records], labels)
        pooled["out_of_fold"] = auc_summary(oof_probs[oof], values[oof], labels, patients[oof], replicates=bootstrap, seed=seed)
        if evaluate_test and all("test" in p for p in probabilities):
            test = plan.runs[0].test
            mean_probs = np.mean([p["test"] for p in probabilities], axis=0)
            pooled["test_mean_of_folds"] = auc_summary(mean_probs, values[test], labels, patients[test], replicates=bootstrap, seed=seed)
    provenance_doc = {**(dict(provenance) if provenance else {}), "seed": seed, "versions": library_versions(framework)}
    predictions = predictions_table(frame, plan, probabilities, labels, split_col=split_col, metadata={"provenance": provenance_doc, "framework": framework, "arch": arch})
    write_table(predictions, os.path.join(out_dir, "predictions.parquet"))
    metrics = {
        "schema": "mdprep-train-metrics",
        "version": 2,
        "framework": framework,
        "labels": labels,
        "arch": arch,
        "device": records[0]["device"],
        "plan": {**plan.describe(), "unused_rows": unused, "synthetic_rows_left_out": int(synthetic.sum())},
        "leakage": {"patients_shared": leaking_patients, "allowed": allow_leakage},
        "options": {
            "epochs": epochs, "batch_size": batch_size, "image_size": image_size, "lr": lr, "augment": augment, "hflip": hflip, "normalize": normalize,
            "seed": seed, "weights": paths, "pretrained": pretrained, "freeze_backbone": freeze, "evaluate_test": evaluate_test,
            "skip_missing": skip_missing, "allow_outside_root": allow_outside_root, "allow_leakage": allow_leakage, "path_map": path_map is not None,
            "bootstrap": bootstrap,
        },
        "provenance": provenance_doc,
        "skipped_images": {"count": len(skipped), "rows": skipped.to_dict(orient="records")},
        "runs": records,
        **pooled,
        "predictions": {"file": "predictions.parquet", "rows": predictions.num_rows},
    }
    if plan.mode == "folds":
        stale = sorted(d for d in os.listdir(out_dir) if re.fullmatch(r"fold-\d+", d) and d not in {r.name for r in plan.runs})
        if stale:
            warnings.warn(f"{out_dir} holds {', '.join(stale)} from an earlier run, which this run did not write", MdprepWarning, stacklevel=2)
    with atomic_write(os.path.join(out_dir, "metrics.json")) as tmp:
        tmp.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return TrainResult(out_dir, metrics, plan)


def _scored_rows(frame, plan: RunPlan, *, evaluate_test: bool) -> tuple[RunPlan, dict[str, int]]:
    """The plan with the rows no run scores taken out, and every row no run uses, counted by why.

    Copies made by ``mdprep resample`` (``copy_index`` above 0) never validate or test: a
    cloned image would count twice in the AUC. Test rows are scored only with
    ``evaluate_test``.
    """
    from dataclasses import replace

    unused = dict(plan.unused)
    clones = frame["copy_index"].fillna(0).to_numpy(dtype="int64") > 0 if "copy_index" in frame.columns else np.zeros(len(frame), dtype=bool)
    test = plan.runs[0].test
    if not evaluate_test and test.any():
        unused[f"test ({plan.test_split}; scored only with --evaluate-test)"] = int(test.sum())
    elif evaluate_test and not test.any():
        warnings.warn(f"--evaluate-test: no rows have split {plan.test_split!r}, so nothing is tested; pass --test-split NAME", MdprepWarning, stacklevel=3)
    scored_clones = clones & (np.logical_or.reduce([r.val for r in plan.runs]) | test)
    if scored_clones.any():
        unused["copies made by mdprep resample (never validated or tested)"] = int(scored_clones.sum())
    runs = tuple(replace(r, val=r.val & ~clones, test=r.test & ~clones & evaluate_test) for r in plan.runs)
    return replace(plan, runs=runs), unused


def _fold_mean(summaries: Sequence[dict | None], labels: Sequence[str]) -> dict:
    """Per label, the mean and standard deviation over folds of each fold's validation AUC."""
    out = {}
    for label in labels:
        values = [s["auc"][label] for s in summaries if s and s["auc"].get(label) is not None]
        out[label] = {"mean": float(np.mean(values)), "sd": float(np.std(values)), "folds": len(values)} if values else None
    means = [s["mean_auc"] for s in summaries if s and s["mean_auc"] is not None]
    return {"auc": out, "mean_auc": {"mean": float(np.mean(means)), "sd": float(np.std(means)), "folds": len(means)} if means else None}


def _with_masks(plan: RunPlan, index: int, masks: Mapping[str, np.ndarray]) -> RunPlan:
    """``plan`` with run ``index`` narrowed to the rows it really used (skipped images and unread test rows left out)."""
    from dataclasses import replace

    runs = list(plan.runs)
    runs[index] = replace(runs[index], **masks)
    return replace(plan, runs=tuple(runs))

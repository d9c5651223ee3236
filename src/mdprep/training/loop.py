"""The training loop: weighted masked loss, per-epoch validation AUC, best checkpoint, test at the end."""

from __future__ import annotations

import json
import os
import random
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from .. import __version__
from ..audit import value_overlap
from ..errors import InputError, LeakageError, MdprepError, MdprepWarning, UsageError, cut_text, examples_text, short_repr
from ..fileio import atomic_write, paths_outside_root
from ..manifest import Manifest
from ..params import MAX_BATCH_SIZE, MAX_IMAGE_SIZE, MAX_LR, MIN_IMAGE_SIZE, check_number, check_seed
from ..weights import weights_from_document
from .data import AUGMENTS, FILE_COLUMN, ManifestDataset, cxr_safe, file_column, unreadable_images
from .models import ARCHITECTURES, build_model, freeze_backbone, load_pretrained


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


def read_weights(path: str, labels: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Labels, w_pos and w_neg from ``weights.json`` (schema ``mdprep-weights``).

    Every scheme of ``mdprep weights`` gives a positive and a negative weight per
    label, used as is by :func:`masked_weighted_bce` (``pos-weight`` has ``w_neg = 1``,
    which is PyTorch's ``pos_weight``). The document's shape and values are checked
    by :func:`mdprep.weights.weights_from_document` (NaN, infinite and negative
    weights are refused), so a bad file stops the run before it starts.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except FileNotFoundError:
        raise InputError(f"weights file {path!r} does not exist; create it with `mdprep weights`", path=path) from None
    except ValueError as exc:  # UnicodeDecodeError included
        raise InputError(f"{path} is not valid JSON ({cut_text(str(exc), 100)}); create it with `mdprep weights`", path=path) from None
    return weights_from_document(doc, labels, source=path)


def roc_auc_per_label(probs: np.ndarray, targets: np.ndarray, masks: np.ndarray, labels: Sequence[str]) -> dict[str, float | None]:
    """ROC AUC per label over unmasked rows; ``None`` (undefined) when only one class is present."""
    from sklearn.metrics import roc_auc_score

    out: dict[str, float | None] = {}
    for j, label in enumerate(labels):
        keep = masks[:, j] > 0
        y = targets[keep, j]
        out[label] = float(roc_auc_score(y, probs[keep, j])) if len(np.unique(y)) == 2 else None
    return out


def _image_examples(bad, limit: int = 3) -> str:
    """``'id' at 'path' (Error: reason)`` for the first rows of an :func:`unreadable_images` table."""
    shown = "; ".join(
        f"{short_repr(r.image_id)} at {short_repr(r.path)} ({r.error_type}: {cut_text(r.message, 80)})" for r in bad.head(limit).itertuples()
    )
    return shown + (f"; ... ({len(bad)} in all)" if len(bad) > limit else "")


def _mean(aucs: dict) -> float | None:
    defined = [v for v in aucs.values() if v is not None]
    return float(np.mean(defined)) if defined else None


@dataclass(frozen=True)
class TrainResult:
    run_dir: str
    best_epoch: int
    metrics: dict


def _seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available to this torch build; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise UsageError(f"--device {name!r}: choose auto, cpu or cuda")
    return torch.device(name)


def _evaluate(model, loader, device, w_pos, w_neg, labels) -> dict:
    model.eval()
    probs, targets, masks, loss_sum, batches = [], [], [], 0.0, 0
    with torch.no_grad():
        for images, y, m in loader:
            logits = model(images.to(device))
            loss_sum += float(masked_weighted_bce(logits, y.to(device), m.to(device), w_pos, w_neg))
            batches += 1
            probs.append(torch.sigmoid(logits).cpu().numpy())
            targets.append(y.numpy())
            masks.append(m.numpy())
    p, t, k = np.concatenate(probs), np.concatenate(targets), np.concatenate(masks)
    if not np.isfinite(p).all():
        raise DivergedError("the model's outputs are no longer finite numbers (NaN); lower --lr, or check the --weights and --pretrained files")
    aucs = roc_auc_per_label(p, t, k, labels)
    return {"loss": loss_sum / max(batches, 1), "auc": aucs, "mean_auc": _mean(aucs), "rows": int(len(p))}


def _check_images(parts: dict, root: str, *, evaluate_test: bool, allow_outside_root: bool, skip_missing: bool, workers: int):
    """The parts with unreadable images left out (``skip_missing``), and the table of those images.

    Raises :class:`InputError` for paths outside the root (unless allowed) and, without
    ``skip_missing``, for images that are missing or do not decode.
    """
    import pandas as pd

    read = [k for k in ("train", "val", "test") if k != "test" or evaluate_test]
    used = pd.concat([parts[k] for k in read])
    outside = paths_outside_root(root, file_column(used), allow_outside_root=allow_outside_root)
    if outside.any():
        warnings.warn(f"{int(outside.sum())} row(s) read from outside the image root {root!r} (--allow-outside-root)", MdprepWarning, stacklevel=3)
    bad = unreadable_images(used, root, workers=workers)
    if bad.empty:
        return parts, bad
    what = f"{len(bad)} image(s) that training would read are missing or do not decode: {_image_examples(bad)}"
    if not skip_missing:
        raise InputError(f"{what}. Fix or remove these rows, or pass --skip-missing to train without them", path=root, count=len(bad), examples=bad.head(5).to_dict(orient="records"))
    warnings.warn(f"{what}; skipped (--skip-missing), listed in metrics.json", MdprepWarning, stacklevel=3)
    ids = set(bad["image_id"])
    kept = {k: (v[~v["image_id"].astype("str").isin(ids)] if k in read else v) for k, v in parts.items()}
    return kept, bad


def train(
    manifest: Manifest,
    *,
    root: str | None,
    out_dir: str,
    weights_path: str | None = None,
    arch: str = "densenet121",
    epochs: int = 5,
    batch_size: int = 32,
    image_size: int = 224,
    lr: float = 1e-3,
    pretrained: str | None = None,
    freeze: bool = False,
    augment: str = "cxr-safe",
    hflip: bool = False,
    device: str = "auto",
    seed: int = 0,
    evaluate_test: bool = False,
    allow_leakage: bool = False,
    allow_outside_root: bool = False,
    skip_missing: bool = False,
    path_map: Mapping[str, str] | None = None,
    workers: int = 0,
    split_col: str = "split",
    on_batch: Callable[[int, int], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train a multi-label classifier on the ``train`` rows; select the epoch on ``val``.

    Writes ``out_dir/best.pt`` (the best epoch's weights, labels and settings) and
    ``out_dir/metrics.json`` (per epoch and label); returns the same metrics.

    Before the first epoch, every image the run will read (train and val rows, and
    test rows with ``evaluate_test``) must lie under the root (see
    :func:`mdprep.fileio.paths_outside_root`; ``allow_outside_root`` reads the
    others with a warning) and must decode, through the dataset's own decoding step,
    using ``max(1, workers)`` processes. Images that are missing or do not decode
    raise an :class:`~mdprep.errors.InputError` naming their rows, or with
    ``skip_missing`` are left out with a warning and listed in the metrics
    (``skipped_images``).

    ``path_map`` (pseudonymised path -> real path, :func:`mdprep.pseudonyms.load_path_map`)
    trains on a pseudonymised manifest: each image is read at its real path, while
    messages and metrics name only the pseudonymised ones.
    """
    if arch not in ARCHITECTURES:
        raise UsageError(f"unknown --arch {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    if augment not in AUGMENTS:
        raise UsageError(f"unknown --augment {augment!r}; choose one of {', '.join(AUGMENTS)}")
    check_number(epochs, "--epochs", minimum=1, integer=True)
    check_number(batch_size, "--batch-size", minimum=1, maximum=MAX_BATCH_SIZE, integer=True)
    check_number(image_size, "--image-size", minimum=MIN_IMAGE_SIZE, maximum=MAX_IMAGE_SIZE, integer=True)
    check_number(lr, "--lr", above=0, maximum=MAX_LR)
    check_number(workers, "--workers", minimum=0, integer=True)
    seed = check_seed(seed)
    frame = manifest.frame
    if path_map is not None:
        from ..pseudonyms import resolve_paths

        frame = frame.assign(**{FILE_COLUMN: resolve_paths(manifest, path_map).frame["path"]})
    if split_col not in frame.columns:
        raise UsageError(f"the manifest has no {split_col!r} column; run `mdprep split` first")
    root = root or manifest.root
    if not root or not os.path.isdir(root):
        raise InputError(f"image folder {root!r} not found; pass --root, the folder the manifest's paths are relative to")
    overlap = value_overlap(frame, "patient_id", split_col=split_col, check="patient_overlap")
    if not overlap.findings.empty:
        n = len(overlap.findings)
        message = (
            f"{n} patient(s) appear in more than one split (for example {examples_text(overlap.findings['key'].tolist(), n, limit=3)}); "
            "metrics on such a split are inflated. Re-split with `mdprep split`, or pass --allow-leakage"
        )
        if not allow_leakage:
            raise LeakageError(message)
        warnings.warn(message, MdprepWarning, stacklevel=2)
    if "synthetic" in frame.columns:
        frame = frame[~frame["synthetic"].fillna(False).astype(bool)]
    labels = list(manifest.labels)
    if weights_path:
        labels, w_pos_np, w_neg_np = read_weights(weights_path, labels)
    else:
        w_pos_np = w_neg_np = np.ones(len(labels), dtype=np.float32)
    if not labels:
        raise UsageError("the manifest has no label columns to train on")
    parts = {name: frame[frame[split_col] == name] for name in ("train", "val", "test")}
    if parts["train"].empty:
        raise UsageError(f"no rows have {split_col} == 'train'")
    dev = _device(device)
    generator = _seed_everything(seed)
    model = build_model(arch, len(labels))
    pretrained_report = load_pretrained(model, pretrained, arch) if pretrained else None
    parts, skipped = _check_images(parts, root, evaluate_test=evaluate_test, allow_outside_root=allow_outside_root, skip_missing=skip_missing, workers=workers)
    if parts["train"].empty:
        raise UsageError(f"no train rows are left after skipping {len(skipped)} unreadable image(s): {_image_examples(skipped)}")
    frozen = freeze_backbone(model) if freeze else 0
    model.to(dev)
    w_pos, w_neg = torch.tensor(w_pos_np, device=dev), torch.tensor(w_neg_np, device=dev)
    sets = {k: ManifestDataset(v, root, labels, size=image_size, channels=model.in_channels) for k, v in parts.items()}
    loader_kw = dict(batch_size=batch_size, num_workers=workers)
    train_loader = torch.utils.data.DataLoader(sets["train"], shuffle=True, generator=generator, drop_last=len(sets["train"]) > batch_size, **loader_kw)
    eval_loaders = {k: torch.utils.data.DataLoader(sets[k], shuffle=False, **loader_kw) for k in ("val", "test") if len(sets[k])}
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    os.makedirs(out_dir, exist_ok=True)
    history, best_epoch, best_score = [], 0, None
    divergence_hint = ", or ".join(
        [f"lower --lr (now {lr:g})"]
        + ([f"check the --weights file (largest weight {float(max(w_pos_np.max(), w_neg_np.max())):g})"] if weights_path else [])
        + (["check the --pretrained weights"] if pretrained else [])
    )
    checkpoint = os.path.join(out_dir, "best.pt")
    for epoch in range(1, epochs + 1):
        model.train()
        start, loss_sum, seen, wait = time.perf_counter(), 0.0, 0, 0.0
        t_fetch = time.perf_counter()
        for step, (images, y, m) in enumerate(train_loader, start=1):
            wait += time.perf_counter() - t_fetch
            images = images.to(dev)
            if augment == "cxr-safe":
                images = cxr_safe(images.cpu(), generator, hflip=hflip).to(dev)
            logits = model(images)
            loss = masked_weighted_bce(logits, y.to(dev), m.to(dev), w_pos, w_neg)
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
            val = _evaluate(model, eval_loaders["val"], dev, w_pos, w_neg, labels)
            record.update(val_loss=val["loss"], val_auc=val["auc"], val_mean_auc=val["mean_auc"])
            score = val["mean_auc"] if val["mean_auc"] is not None else -val["loss"]
        else:
            score = epoch  # no validation rows: the last epoch is kept
        history.append(record)
        if best_score is None or score > best_score:
            best_score, best_epoch = score, epoch
            torch.save(
                {"model": model.state_dict(), "arch": arch, "labels": labels, "image_size": image_size, "channels": model.in_channels, "epoch": epoch, "mdprep_version": __version__},
                checkpoint,
            )
        if on_epoch:
            on_epoch(record)
    test = None
    if evaluate_test and "test" in eval_loaders:
        model.load_state_dict(torch.load(checkpoint, map_location=dev, weights_only=True)["model"])
        test = _evaluate(model, eval_loaders["test"], dev, w_pos, w_neg, labels)
    metrics = {
        "schema": "mdprep-train-metrics",
        "version": 1,
        "labels": labels,
        "arch": arch,
        "device": str(dev),
        "rows": {k: len(v) for k, v in sets.items()},
        "skipped_images": {"count": len(skipped), "rows": skipped.to_dict(orient="records")},
        "options": {
            "epochs": epochs, "batch_size": batch_size, "image_size": image_size, "lr": lr, "augment": augment, "hflip": hflip,
            "seed": seed, "weights": weights_path, "pretrained": pretrained, "freeze_backbone": freeze, "frozen_tensors": frozen,
            "skip_missing": skip_missing, "allow_outside_root": allow_outside_root, "path_map": path_map is not None,
        },
        "pretrained": pretrained_report,
        "epochs": history,
        "best_epoch": best_epoch,
        "best_val_mean_auc": next((r.get("val_mean_auc") for r in history if r["epoch"] == best_epoch), None),
        "test": test,
    }
    with atomic_write(os.path.join(out_dir, "metrics.json")) as tmp:
        tmp.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return TrainResult(out_dir, best_epoch, metrics)

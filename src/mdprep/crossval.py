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
    ``workers`` is the number of loader processes (0: load in the main process);
    ``normalize`` is ``auto`` (ImageNet mean and std when pretrained weights are
    loaded into a 3-channel model), ``imagenet`` or ``none``.
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
    normalize: str = "auto"


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


#: Split names read as validation rows when ``--val-split`` is not given.
VAL_NAMES = ("val", "valid", "validation", "dev")
#: Split names read as training rows when ``--train-split`` is not given.
TRAIN_NAMES = ("train", "training")
#: The split every mode holds out for the final test.
TEST_SPLIT = "test"
PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class Run:
    """The rows of one fit: boolean masks over the manifest's rows.

    ``fold`` is the validating fold (None outside cross-validation); ``name`` is how
    outputs name the run (``fold-2``, or ``split``).
    """

    fold: int | None
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    @property
    def name(self) -> str:
        return "split" if self.fold is None else f"fold-{self.fold}"

    def mask(self, part: str) -> np.ndarray:
        return getattr(self, part)

    def roles(self) -> np.ndarray:
        """Each row's part in this run (``train``, ``val``, ``test``), or None for unused rows."""
        out = np.full(len(self.train), None, dtype=object)
        for part in PARTS:
            out[self.mask(part)] = part
        return out


@dataclass(frozen=True)
class RunPlan:
    """Every run of one ``mdprep train`` call, and how their rows were chosen.

    ``mode`` is ``split`` (named splits), ``fold`` (one fold validates) or ``folds``
    (every fold in turn); ``unused`` counts rows no run reads, by their split (or
    ``fold missing``), so that the rows reconcile.
    """

    mode: str
    runs: tuple[Run, ...]
    train_split: str | None
    val_split: str | None
    test_split: str
    unused: dict[str, int]

    def describe(self) -> dict:
        return {
            "mode": self.mode,
            "folds": [r.fold for r in self.runs] if self.mode != "split" else None,
            "train_split": self.train_split,
            "val_split": self.val_split,
            "test_split": self.test_split,
            "unused_rows": self.unused,
        }


def _names(values) -> str:
    return ", ".join(map(repr, values)) or "none"


def _split_values(frame, split_col: str) -> np.ndarray:
    return frame[split_col].astype("string").fillna("").to_numpy(dtype=object)


def plan_runs(
    frame,
    *,
    fold: int | str | None = None,
    split_col: str = "split",
    fold_col: str = "fold",
    train_split: str | None = None,
    val_split: str | None = None,
    no_val: bool = False,
) -> RunPlan:
    """Choose the train, validation and test rows of each run.

    Without ``fold``: the ``train_split`` rows train (default: a split named
    ``train`` or ``training``), the ``val_split`` rows validate (default: the one
    split named ``val``, ``valid``, ``validation`` or ``dev``), and the ``test``
    rows test. A manifest with no validation rows is refused unless ``no_val``.

    With ``fold=K``: fold K of the non-test rows validates and the other folds
    train; ``fold="all"`` plans one run per fold present. Test rows (split ``test``)
    never train or validate.

    Raises
    ------
    mdprep.errors.UsageError
        A missing column, an unknown split or fold, options that cannot go together,
        or no training (or, without ``no_val``, no validation) rows.

    Examples
    --------
    >>> import pandas as pd
    >>> f = pd.DataFrame({"split": ["train", "train", "valid", "test"]})
    >>> p = plan_runs(f)
    >>> p.val_split, p.runs[0].val.tolist()
    ('valid', [False, False, True, False])
    >>> f = pd.DataFrame({"split": ["train"] * 4 + ["test"], "fold": pd.array([0, 1, 2, 0, None], dtype="Int16")})
    >>> [r.val.nonzero()[0].tolist() for r in plan_runs(f, fold="all").runs]
    [[0, 3], [1], [2]]
    """
    from .errors import UsageError

    n = len(frame)
    has_split = split_col in frame.columns
    splits = _split_values(frame, split_col) if has_split else np.full(n, "", dtype=object)
    present = sorted({s for s in splits.tolist() if s})
    test = splits == TEST_SPLIT
    if fold is None:
        if not has_split:
            hint = f"; or pass --fold K to cross-validate on the {fold_col!r} column" if fold_col in frame.columns else ""
            raise UsageError(f"the manifest has no {split_col!r} column; run `mdprep split` first{hint}")
        if train_split is None:
            known = [s for s in TRAIN_NAMES if s in present]
            if not known:
                raise UsageError(f"no rows have {split_col} == 'train' (the splits present are {_names(present)}); pass --train-split NAME")
            train_split = known[0]
        elif train_split not in present:
            raise UsageError(f"--train-split {train_split!r}: no rows have that {split_col}; the splits present are {_names(present)}")
        if val_split is not None and no_val:
            raise UsageError("--val-split and --no-val cannot go together: choose the validation split, or none")
        if val_split is None and not no_val:
            known = [s for s in VAL_NAMES if s in present]
            if len(known) > 1:
                raise UsageError(f"several splits could be the validation rows ({_names(known)}); choose one with --val-split NAME")
            if not known:
                raise UsageError(
                    f"the manifest has no validation rows (no {split_col} named {', '.join(VAL_NAMES)}; the splits present are {_names(present)}): "
                    "pass --val-split NAME, --fold K to validate on a fold, or --no-val to train without validation (the last epoch is kept)"
                )
            val_split = known[0]
        elif val_split is not None and val_split not in present:
            raise UsageError(f"--val-split {val_split!r}: no rows have that {split_col}; the splits present are {_names(present)}")
        if val_split in (train_split, TEST_SPLIT) or train_split == TEST_SPLIT:
            raise UsageError(f"the train, validation and test rows must be different splits (train {train_split!r}, validation {val_split!r}, test {TEST_SPLIT!r})")
        train = splits == train_split
        val = splits == val_split if val_split else np.zeros(n, dtype=bool)
        runs = (Run(None, train, val, test),)
        used = train | val | test
        unused = _count(splits[~used])
        return RunPlan("split", runs, train_split, val_split, TEST_SPLIT, unused)

    if train_split is not None or val_split is not None or no_val:
        raise UsageError("--fold chooses the training and validation rows itself; drop --train-split, --val-split and --no-val")
    if fold_col not in frame.columns:
        raise UsageError(f"--fold needs a {fold_col!r} column; make folds with `mdprep split --folds K`")
    folds = frame[fold_col].astype("Int64").to_numpy(dtype="float64", na_value=np.nan)
    cv = ~test
    missing = cv & np.isnan(folds)
    present_folds = sorted(int(k) for k in np.unique(folds[cv & ~missing]))
    if len(present_folds) < 2:
        raise UsageError(f"cross-validation needs at least 2 folds among the non-test rows; the {fold_col} values present are {_names(present_folds)}")
    if isinstance(fold, str):
        if fold != "all":
            raise UsageError(f"--fold {fold!r}: give a fold number ({_names(present_folds)}) or 'all'")
        chosen = present_folds
    else:
        if int(fold) not in present_folds:
            raise UsageError(f"--fold {fold!r}: no non-test row is in that fold; the folds are {_names(present_folds)}")
        chosen = [int(fold)]
    runs = tuple(Run(k, cv & ~missing & (folds != k), cv & (folds == k), test) for k in chosen)
    unused = {f"{fold_col} missing": int(missing.sum())} if missing.any() else {}
    return RunPlan("folds" if fold == "all" else "fold", runs, None, None, TEST_SPLIT, unused)


def _count(values: np.ndarray) -> dict[str, int]:
    names, counts = np.unique(np.asarray(values, dtype=object).astype(str), return_counts=True)
    return {("(no split)" if k == "" else str(k)): int(c) for k, c in zip(names, counts)}


def _auc_from_weights(scores: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC of one label for each row of ``weights`` (replicates x rows); NaN where a class is absent.

    Ties count one half, as in scikit-learn's ``roc_auc_score``. Sorted once; each
    replicate is a weighted count of the positive-negative pairs in order.
    """
    order = np.argsort(scores, kind="stable")
    s, yy, w = scores[order], y[order], weights[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    pos = np.add.reduceat(w * yy, starts, axis=1)
    neg = np.add.reduceat(w * (1 - yy), starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    total_pos, total_neg = pos.sum(axis=1), neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (pos * (below + 0.5 * neg)).sum(axis=1) / (total_pos * total_neg)
    return np.where((total_pos > 0) & (total_neg > 0), auc, np.nan)


def auc_summary(
    probs: np.ndarray,
    values: np.ndarray,
    labels: Sequence[str],
    groups: np.ndarray,
    *,
    replicates: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict:
    """Per-label ROC AUC with a percentile bootstrap confidence interval over patients.

    ``values`` holds the manifest's label coding (1, 0, -1, NaN); only 1 and 0 rows
    count for a label. Each replicate draws as many patients as there are, with
    replacement, and weighs every image by how often its patient was drawn, so the
    interval reflects that images of one patient are not independent. A label with
    one class only has AUC ``None``.

    Returns ``auc``, ``ci`` (label -> [low, high] or None), ``mean_auc`` and
    ``mean_auc_ci`` (the mean over defined labels, per replicate), ``rows``,
    ``patients`` and ``bootstrap`` (replicates, level, unit).

    Examples
    --------
    >>> y = np.array([[1.0], [0.0], [1.0], [0.0]])
    >>> s = auc_summary(np.array([[0.9], [0.1], [0.8], [0.3]]), y, ["A"], np.array(["p", "p", "q", "q"]), replicates=50)
    >>> s["auc"]["A"], s["patients"]
    (1.0, 2)
    """
    rng = np.random.default_rng(seed)
    codes, uniq = _factorize(groups)
    n_groups = len(uniq)
    draws = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=replicates) if n_groups else np.zeros((replicates, 0))
    weights = draws[:, codes].astype(np.float64)
    point: dict[str, float | None] = {}
    ci: dict[str, list[float] | None] = {}
    per_rep = np.full((replicates, len(labels)), np.nan)
    lo_q, hi_q = 50 * (1 - level), 50 * (1 + level)
    for j, label in enumerate(labels):
        keep = (values[:, j] == 1) | (values[:, j] == 0)
        y = values[keep, j].astype(np.float64)
        if keep.sum() == 0 or y.min() == y.max():
            point[label], ci[label] = None, None
            continue
        score = probs[keep, j].astype(np.float64)
        point[label] = float(_auc_from_weights(score, y, np.ones((1, len(y))))[0])
        reps = np.concatenate([_auc_from_weights(score, y, weights[i : i + 64][:, keep]) for i in range(0, replicates, 64)])
        per_rep[:, j] = reps
        ci[label] = [float(np.nanpercentile(reps, lo_q)), float(np.nanpercentile(reps, hi_q))] if np.isfinite(reps).any() else None
    defined = [j for j, label in enumerate(labels) if point[label] is not None]
    mean = float(np.mean([point[labels[j]] for j in defined])) if defined else None
    chosen = per_rep[:, defined]
    counted = np.isfinite(chosen).sum(axis=1)
    mean_reps = np.where(counted > 0, np.nansum(chosen, axis=1) / np.maximum(counted, 1), np.nan)
    finite = mean_reps[np.isfinite(mean_reps)]
    return {
        "auc": point,
        "ci": ci,
        "mean_auc": mean,
        "mean_auc_ci": [float(np.percentile(finite, lo_q)), float(np.percentile(finite, hi_q))] if finite.size else None,
        "rows": int(len(values)),
        "patients": n_groups,
        "bootstrap": {"replicates": replicates, "level": level, "unit": "patient", "seed": seed},
    }


def _factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes of the patients; a row with no patient is a patient of its own."""
    import pandas as pd

    text = pd.Series(values, dtype="string")
    text = text.fillna("\x00row:" + pd.Series(np.arange(len(text)), dtype="string"))
    codes, uniq = pd.factorize(text, sort=True)
    return codes, np.asarray(uniq)


def roc_auc_per_label(probs: np.ndarray, targets: np.ndarray, masks: np.ndarray, labels: Sequence[str]) -> dict[str, float | None]:
    """ROC AUC per label over unmasked rows; ``None`` (undefined) when only one class is present.

    The same number as scikit-learn's ``roc_auc_score`` (ties count one half).

    Examples
    --------
    >>> roc_auc_per_label(np.array([[0.2], [0.7], [0.7]]), np.array([[0.0], [1.0], [0.0]]), np.ones((3, 1)), ["A"])
    {'A': 0.75}
    """
    out: dict[str, float | None] = {}
    for j, label in enumerate(labels):
        keep = masks[:, j] > 0
        y = targets[keep, j].astype(np.float64)
        defined = keep.any() and y.min() != y.max()
        out[label] = float(_auc_from_weights(probs[keep, j].astype(np.float64), y, np.ones((1, len(y))))[0]) if defined else None
    return out


def mean_defined(aucs: Mapping[str, float | None]) -> float | None:
    """The mean of the defined AUCs, or None when none is defined."""
    defined = [v for v in aucs.values() if v is not None]
    return float(np.mean(defined)) if defined else None


PREDICTION_COLUMNS = ("image_id", "split", "fold", "part")


def predictions_table(frame, plan: RunPlan, probabilities: Sequence[Mapping[str, np.ndarray]], labels: Sequence[str], *, split_col: str = "split", metadata: Mapping | None = None):
    """One Arrow table of every run's predictions: ``predictions.parquet``.

    Columns: ``image_id`` (text), ``split`` (the row's split in the manifest, or
    null), ``fold`` (the validating fold of the model that predicted the row, or null
    outside cross-validation), ``part`` (``val`` or ``test``: the row's part in that
    run) and one float32 probability per label. With every fold, each non-test row
    appears once, as ``val`` of its own fold: the out-of-fold predictions. Rows are
    ordered by part, fold, then manifest order. ``metadata`` goes into the Parquet
    key-value metadata under ``mdprep``.
    """
    import json

    import pyarrow as pa

    clash = sorted(set(labels) & set(PREDICTION_COLUMNS))
    if clash:
        from .errors import UsageError

        raise UsageError(f"label column(s) {_names(clash)} have the name of a predictions column; rename them in the manifest")
    ids = frame["image_id"].astype("string").to_numpy(dtype=object)
    splits = frame[split_col].astype("string").to_numpy(dtype=object, na_value=None) if split_col in frame.columns else np.full(len(frame), None, dtype=object)
    pieces = []
    for part in ("val", "test"):
        for run, probs in zip(plan.runs, probabilities):
            if part not in probs:
                continue
            rows = np.flatnonzero(run.mask(part))
            p = np.asarray(probs[part], dtype=np.float32)
            if p.shape != (len(rows), len(labels)):
                raise ValueError(f"{run.name} {part}: {p.shape} probabilities for {len(rows)} rows and {len(labels)} labels")
            pieces.append((rows, run.fold, part, p))
    rows = np.concatenate([r for r, *_ in pieces]) if pieces else np.zeros(0, dtype=np.int64)
    fold = np.concatenate([np.full(len(r), -1 if f is None else f) for r, f, *_ in pieces]) if pieces else np.zeros(0, dtype=np.int64)
    part = np.concatenate([np.full(len(r), p, dtype=object) for r, _, p, _ in pieces]) if pieces else np.zeros(0, dtype=object)
    probs = np.concatenate([p for *_, p in pieces]) if pieces else np.zeros((0, len(labels)), dtype=np.float32)
    columns = {
        "image_id": pa.array(ids[rows], pa.string()),
        "split": pa.array(splits[rows], pa.string()),
        "fold": pa.array(fold.astype(np.int16), pa.int16(), mask=fold < 0),
        "part": pa.array(part, pa.string()),
    }
    columns.update({label: pa.array(probs[:, j], pa.float32()) for j, label in enumerate(labels)})
    table = pa.table(columns)
    meta = {"schema": "mdprep-predictions", "version": 1, "labels": list(labels), **(dict(metadata) if metadata else {})}
    return table.replace_schema_metadata({b"mdprep": json.dumps(meta, sort_keys=True).encode()})

"""Cross-validation plumbing shared by both trainers (PyTorch and Keras).

Which rows train, validate and test in each run (a split, or fold K of the
non-test rows), the options and the result of one fit, the out-of-fold
predictions table, and per-label AUCs with a bootstrap confidence interval
drawn over patients. Needs numpy and pandas only: no torch, no Keras.
"""

from __future__ import annotations

import re
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


#: Split names read as validation rows when ``--val-split`` is not given (any case, see :func:`split_key`).
VAL_NAMES = ("val", "valid", "validation", "dev")
#: Split names read as training rows when ``--train-split`` is not given.
TRAIN_NAMES = ("train", "training")
#: Split names held out for the final test in every mode, unless ``--test-split`` names another.
TEST_NAMES = ("test", "testing")
PARTS = ("train", "val", "test")


def split_key(name: object) -> str:
    """How a split name is recognised: lower case, runs of other characters than letters, digits and ``_`` as one ``_``.

    ``mdprep train`` and ``mdprep export`` both read split names through it, so
    ``Test``, ``test `` and ``TEST`` are the test rows for both.

    >>> split_key(" Test"), split_key("hold-out 2")
    ('test', 'hold_out_2')
    """
    return re.sub(r"\W+", "_", str(name)).strip("_").lower()


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
    test_split: str | None = None,
    no_val: bool = False,
) -> RunPlan:
    """Choose the train, validation and test rows of each run.

    Split names are recognised in any case and spacing (:func:`split_key`). The
    test rows are the split named ``test`` or ``testing`` (or exactly
    ``test_split``); they never train or validate, in any mode.

    Without ``fold``: the ``train_split`` rows train (default: the split named
    ``train`` or ``training``), the ``val_split`` rows validate (default: the split
    named ``val``, ``valid``, ``validation`` or ``dev``). A manifest with no
    validation rows is refused unless ``no_val``.

    With ``fold=K``: fold K of the non-test rows validates and the other folds
    train; ``fold="all"`` plans one run per fold present.

    Raises
    ------
    mdprep.errors.UsageError
        A missing column, an unknown split or fold, options that cannot go together,
        or no training (or, without ``no_val``, no validation) rows.

    Examples
    --------
    >>> import pandas as pd
    >>> f = pd.DataFrame({"split": ["Train", "train", "valid", "TEST"]})
    >>> p = plan_runs(f)
    >>> p.train_split, p.val_split, p.test_split, p.runs[0].test.tolist()
    ('Train, train', 'valid', 'TEST', [False, False, False, True])
    >>> f = pd.DataFrame({"split": ["train"] * 4 + ["test"], "fold": pd.array([0, 1, 2, 0, 1], dtype="Int16")})
    >>> [r.val.nonzero()[0].tolist() for r in plan_runs(f, fold="all").runs]
    [[0, 3], [1], [2]]
    """
    from .errors import UsageError

    n = len(frame)
    has_split = split_col in frame.columns
    splits = _split_values(frame, split_col) if has_split else np.full(n, "", dtype=object)
    present = sorted({s for s in splits.tolist() if s})
    keys = {name: split_key(name) for name in present}

    def named(option: str, given: str | None, known: Sequence[str]) -> list[str]:
        """The split names an option picks: exactly ``given``, or every name recognised as one of ``known``."""
        if given is None:
            return [name for name in present if keys[name] in known]
        if given not in present:
            raise UsageError(f"{option} {given!r}: no rows have that {split_col}; the splits present are {_names(present)}")
        return [given]

    test_names = named("--test-split", test_split, TEST_NAMES)
    test = np.isin(splits, test_names)
    test_label = ", ".join(test_names) or (test_split or TEST_NAMES[0])
    if fold is None:
        if not has_split:
            hint = f"; or pass --fold K to cross-validate on the {fold_col!r} column" if fold_col in frame.columns else ""
            raise UsageError(f"the manifest has no {split_col!r} column; run `mdprep split` first{hint}")
        train_names = named("--train-split", train_split, TRAIN_NAMES)
        if not train_names:
            hint = f", or --fold K|all to cross-validate on the {fold_col!r} column" if fold_col in frame.columns else ""
            raise UsageError(f"no rows have {split_col} == 'train' (the splits present are {_names(present)}); pass --train-split NAME{hint}")
        if val_split is not None and no_val:
            raise UsageError("--val-split and --no-val cannot go together: choose the validation split, or none")
        val_names = [] if no_val else named("--val-split", val_split, VAL_NAMES)
        if not no_val and not val_names:
            raise UsageError(
                f"the manifest has no validation rows (no {split_col} named {', '.join(VAL_NAMES)}; the splits present are {_names(present)}): "
                "pass --val-split NAME, --fold K to validate on a fold, or --no-val to train without validation (the last epoch is kept)"
            )
        if len({keys[v] for v in val_names}) > 1:
            raise UsageError(f"several splits could be the validation rows ({_names(val_names)}); choose one with --val-split NAME")
        clash = (set(train_names) & set(val_names)) | (set(train_names) & set(test_names)) | (set(val_names) & set(test_names))
        if clash:
            raise UsageError(f"the train, validation and test rows must be different splits ({_names(sorted(clash))} is more than one of them)")
        train = np.isin(splits, train_names)
        val = np.isin(splits, val_names)
        runs = (Run(None, train, val, test),)
        unused = _count(splits[~(train | val | test)])
        return RunPlan("split", runs, ", ".join(train_names), ", ".join(val_names) or None, test_label, unused)

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
    return RunPlan("folds" if fold == "all" else "fold", runs, None, None, test_label, unused)


def _count(values: np.ndarray) -> dict[str, int]:
    names, counts = np.unique(np.asarray(values, dtype=object).astype(str), return_counts=True)
    return {("(no split)" if k == "" else str(k)): int(c) for k, c in zip(names, counts)}


class _LabelPairs:
    """One label's rows, arranged so that a weighted AUC costs one cumulative sum.

    The negatives are sorted by score; for every positive, ``lo`` and ``hi`` count
    the negatives scored below it and at most as high as it. With weights ``w``, the
    weighted number of correctly ordered pairs (ties one half) is then
    ``sum_pos w_pos * (C[lo] + C[hi]) / 2`` where ``C`` is the running sum of the
    negatives' weights, the same for every replicate.
    """

    def __init__(self, scores: np.ndarray, y: np.ndarray, codes: np.ndarray) -> None:
        pos, neg = y == 1, y == 0
        order = np.argsort(scores[neg], kind="stable")
        neg_scores = scores[neg][order]
        self.neg_codes = codes[neg][order]
        self.pos_codes = codes[pos]
        self.lo = np.searchsorted(neg_scores, scores[pos], side="left")
        self.hi = np.searchsorted(neg_scores, scores[pos], side="right")
        self.patients = len(np.unique(codes[pos | neg]))

    def auc(self, weights: np.ndarray) -> np.ndarray:
        """AUC per row of ``weights`` (replicates x patients); NaN where a class has no weight."""
        wn = weights[:, self.neg_codes]
        running = np.zeros((len(weights), wn.shape[1] + 1), dtype=weights.dtype)
        np.cumsum(wn, axis=1, out=running[:, 1:])
        wp = weights[:, self.pos_codes]
        pairs = np.einsum("ij,ij->i", wp, running[:, self.lo] + running[:, self.hi], dtype=np.float64) / 2
        total = wp.sum(axis=1, dtype=np.float64) * running[:, -1].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, pairs / total, np.nan)


def _auc(scores: np.ndarray, y: np.ndarray) -> float:
    """ROC AUC of 0/1 targets ``y`` (ties count one half, as scikit-learn's ``roc_auc_score``)."""
    pairs = _LabelPairs(np.asarray(scores, dtype=np.float64), y, np.arange(len(y)))
    return float(pairs.auc(np.ones((1, len(y))))[0])


#: Fewest patients (with a labelled row for the label) for a bootstrap interval; below it the interval is null.
MIN_CI_PATIENTS = 10
#: Largest replicates x rows block held at once by :func:`auc_summary` (float32 elements).
_BLOCK = 4_000_000


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
    one class only has AUC ``None``. An interval needs at least
    :data:`MIN_CI_PATIENTS` patients with a labelled row; it is taken over the
    replicates in which both classes were drawn (``defined_replicates``).

    Returns ``auc``, ``ci`` (label -> [low, high] or None), ``defined_replicates``,
    ``mean_auc`` and ``mean_auc_ci`` (the mean over defined labels, per replicate),
    ``rows``, ``patients`` and ``bootstrap`` (replicates, level, unit, seed).

    Memory stays bounded: replicates are drawn in blocks of at most about four
    million weights.

    Examples
    --------
    >>> y = np.array([[1.0], [0.0], [1.0], [0.0]])
    >>> s = auc_summary(np.array([[0.9], [0.1], [0.8], [0.3]]), y, ["A"], np.array(["p", "p", "q", "q"]), replicates=50)
    >>> s["auc"]["A"], s["patients"], s["ci"]["A"]
    (1.0, 2, None)
    """
    rng = np.random.default_rng(seed)
    codes, uniq = _factorize(groups)
    n_groups = len(uniq)
    point: dict[str, float | None] = {}
    ci: dict[str, list[float] | None] = {}
    defined_reps: dict[str, int] = {}
    per_rep = np.full((replicates, len(labels)), np.nan)
    lo_q, hi_q = 50 * (1 - level), 50 * (1 + level)
    drawn = []
    for j, label in enumerate(labels):
        keep = (values[:, j] == 1) | (values[:, j] == 0)
        y = values[keep, j]
        if not keep.any() or y.min() == y.max():
            point[label], ci[label] = None, None
            continue
        pairs = _LabelPairs(probs[keep, j].astype(np.float64), y, codes[keep])
        point[label] = float(pairs.auc(np.ones((1, n_groups)))[0])
        if pairs.patients >= MIN_CI_PATIENTS:
            drawn.append((j, label, pairs))
    step = max(1, _BLOCK // max(1, len(values)))
    for start in range(0, replicates if drawn else 0, step):
        draws = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=min(step, replicates - start)).astype(np.float32)
        for j, _, pairs in drawn:
            per_rep[start : start + len(draws), j] = pairs.auc(draws)
    for j, label, _ in drawn:
        reps = per_rep[:, j]
        defined_reps[label] = int(np.isfinite(reps).sum())
        ci[label] = [float(np.nanpercentile(reps, lo_q)), float(np.nanpercentile(reps, hi_q))] if defined_reps[label] else None
    for label in labels:
        ci.setdefault(label, None)
    defined = [j for j, label in enumerate(labels) if point[label] is not None]
    mean = float(np.mean([point[labels[j]] for j in defined])) if defined else None
    with_ci = [j for j in defined if ci[labels[j]] is not None]
    mean_ci = None
    if with_ci and len(with_ci) == len(defined):  # the mean's interval only when every defined label has one
        chosen = per_rep[:, with_ci]
        counted = np.isfinite(chosen).sum(axis=1)
        mean_reps = np.where(counted == len(with_ci), np.nansum(chosen, axis=1) / np.maximum(counted, 1), np.nan)
        finite = mean_reps[np.isfinite(mean_reps)]
        mean_ci = [float(np.percentile(finite, lo_q)), float(np.percentile(finite, hi_q))] if finite.size else None
    return {
        "auc": point,
        "ci": ci,
        "defined_replicates": defined_reps,
        "mean_auc": mean,
        "mean_auc_ci": mean_ci,
        "rows": int(len(values)),
        "patients": n_groups,
        "bootstrap": {"replicates": replicates, "level": level, "unit": "patient", "seed": seed, "min_patients": MIN_CI_PATIENTS},
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
        y = targets[keep, j]
        out[label] = _auc(probs[keep, j], y) if keep.any() and y.min() != y.max() else None
    return out


def mean_defined(aucs: Mapping[str, float | None]) -> float | None:
    """The mean of the defined AUCs, or None when none is defined."""
    defined = [v for v in aucs.values() if v is not None]
    return float(np.mean(defined)) if defined else None


PREDICTION_COLUMNS = ("image_id", "split", "fold", "part")


def check_prediction_columns(labels: Sequence[str]) -> None:
    """Refuse labels named like a column of ``predictions.parquet``, before any training starts."""
    clash = sorted(set(labels) & set(PREDICTION_COLUMNS))
    if clash:
        from .errors import UsageError

        raise UsageError(f"label column(s) {_names(clash)} have the name of a predictions column ({', '.join(PREDICTION_COLUMNS)}); rename them in the manifest")


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

    check_prediction_columns(labels)
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

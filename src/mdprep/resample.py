"""Resampled training manifests in which every output row traces back to an input row.

Touches DataFrames only. Only the rows of one (training) split are resampled;
other splits pass through unchanged, and validation or test splits are refused.
Every output row carries ``source_image_id`` (the input row it copies; for a
synthetic SMOTE/ADASYN row, its source rows joined by ``|``) and ``copy_index`` (0
for the original, 1, 2, ... for clones; ``copy`` before manifest format version 2,
renamed on reading). Removed rows are returned so that they can
be written out: nothing disappears without a record.

Strategies:

* ``over`` / ``under``: imbalanced-learn's ``RandomOverSampler`` /
  ``RandomUnderSampler`` on one target (a label or a categorical column); rows
  come from their ``sample_indices_``.
* ``ml-ros`` / ``ml-rus``: multi-label random over/under-sampling (Charte, Rivera,
  del Jesus and Herrera, Neurocomputing 2015), driven by each label's imbalance
  ratio IRLbl and their mean MeanIR.
* ``patient-cap``: at most N images per patient, chosen at random (seeded).
* ``smote`` / ``adasyn``: synthetic rows in a numeric feature space (``features``,
  for example image embeddings); marked ``synthetic`` and never images.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from .choices import STRATEGIES
from .errors import MdprepWarning, MissingColumnError, UsageError
from .manifest import POSITIVE, Manifest, order_columns, provenance_step
from .params import check_number, check_seed
from .weights import EVAL_SPLITS, split_mask


# ----------------------------------------------------------------------------- measures


def irlbl(positives: np.ndarray) -> np.ndarray:
    """Imbalance ratio per label: the most frequent label's count over this label's (inf when 0).

    >>> irlbl(np.array([[1, 0], [1, 1], [1, 0], [1, 0]], bool)).tolist()
    [1.0, 4.0]
    """
    counts = np.asarray(positives, dtype=float).sum(axis=0)
    with np.errstate(divide="ignore"):
        return np.where(counts > 0, counts.max(initial=0) / np.where(counts > 0, counts, 1), np.inf)


def mean_ir(positives: np.ndarray) -> float:
    """MeanIR: the mean of IRLbl over labels that have positives."""
    ir = irlbl(positives)
    finite = ir[np.isfinite(ir)]
    return float(finite.mean()) if len(finite) else float("nan")


@dataclass(frozen=True)
class Stats:
    rows: int
    patients: int
    positives: dict[str, int]
    irlbl: dict[str, float]
    mean_ir: float


def stats(frame: pd.DataFrame, labels: Sequence[str]) -> Stats:
    pos = _positives(frame, labels)
    ir = irlbl(pos)
    return Stats(
        rows=len(frame),
        patients=int(frame["patient_id"].nunique()),
        positives={l: int(c) for l, c in zip(labels, pos.sum(axis=0))},
        irlbl={l: float(v) for l, v in zip(labels, ir)},
        mean_ir=mean_ir(pos),
    )


def _positives(frame: pd.DataFrame, labels: Sequence[str]) -> np.ndarray:
    if not labels:
        return np.zeros((len(frame), 0), dtype=bool)
    return frame[list(labels)].to_numpy(dtype="float64", na_value=np.nan) == POSITIVE


# ----------------------------------------------------------------------------- samplers (indices)


def ml_ros(positives: np.ndarray, percent: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of the rows to clone by ML-ROS: ``percent`` % of the rows, from minority-label bags.

    A label is a minority label while its IRLbl is above MeanIR (computed once, as in
    Charte et al.); clones are drawn in turn from each minority label's bag, and a
    label leaves the minority set once its IRLbl falls to MeanIR.
    """
    n, _ = positives.shape
    to_clone = int(round(n * percent / 100))
    counts = positives.sum(axis=0).astype(float)
    mir = mean_ir(positives)
    ir = irlbl(positives)
    # Labels without any positive have nothing to clone.
    bags = {l: np.flatnonzero(positives[:, l]) for l in np.flatnonzero((ir > mir) & np.isfinite(ir))}
    clones: list[int] = []
    while to_clone > 0 and bags:
        for label in list(bags):
            if to_clone == 0:
                break
            row = int(rng.choice(bags[label]))
            clones.append(row)
            counts += positives[row]
            to_clone -= 1
            if counts.max() / counts[label] <= mir:
                del bags[label]
    return np.asarray(clones, dtype=np.int64)


def ml_rus(positives: np.ndarray, percent: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of the rows to remove by ML-RUS: up to ``percent`` % of the rows, from majority-label bags.

    A row that carries any minority label (IRLbl above MeanIR) is never removed; a
    label leaves the majority set once its IRLbl rises to MeanIR.
    """
    n, _ = positives.shape
    to_remove = int(round(n * percent / 100))
    counts = positives.sum(axis=0).astype(float)
    ir = irlbl(positives)
    mir = mean_ir(positives)
    minority = ir > mir
    protected = positives[:, minority].any(axis=1)
    alive = np.ones(n, dtype=bool)
    bags = {l: rng.permutation(np.flatnonzero(positives[:, l] & ~protected)).tolist() for l in np.flatnonzero((ir < mir) & np.isfinite(ir))}
    removed: list[int] = []
    while to_remove > 0 and bags:
        for label in list(bags):
            if to_remove == 0:
                break
            bag = bags[label]
            while bag and not alive[bag[-1]]:
                bag.pop()
            if not bag:
                del bags[label]
                continue
            row = bag.pop()
            alive[row] = False
            removed.append(row)
            counts -= positives[row]
            to_remove -= 1
            with np.errstate(divide="ignore"):
                if counts[label] == 0 or counts.max() / counts[label] >= mir:
                    del bags[label]
    return np.asarray(removed, dtype=np.int64)


def patient_cap(patients: pd.Series, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of the rows kept: at most ``cap`` per patient, chosen at random (seeded)."""
    if cap < 1:
        raise UsageError(f"--cap {cap}: keep at least one image per patient")
    key = rng.permutation(len(patients))
    order = np.lexsort((key, pd.factorize(patients, sort=True)[0]))
    ranked = pd.Series(patients.to_numpy()[order]).groupby(patients.to_numpy()[order], sort=False).cumcount().to_numpy()
    return np.sort(order[ranked < cap])


def _target(frame: pd.DataFrame, target: str | None, labels: Sequence[str], strategy: str) -> np.ndarray:
    if target is None:
        raise UsageError(
            f"--strategy {strategy} (imbalanced-learn) balances one target, and imbalanced-learn rejects multi-label "
            "targets: pass --target LABEL (or a categorical column), or use --strategy ml-ros / ml-rus for all labels at once"
        )
    if target not in frame.columns:
        raise MissingColumnError([target], list(frame.columns), hint="--target names a label or a categorical column")
    if target in labels:
        return (frame[target].to_numpy(dtype="float64", na_value=np.nan) == POSITIVE).astype(int)
    values = frame[target]
    if values.isna().any():
        raise UsageError(f"--target {target!r} has {int(values.isna().sum())} empty value(s); every row needs a class")
    return values.astype("str").to_numpy()


def _ratio(ratio: str | float | None):
    if ratio is None:
        return "auto"
    try:
        return float(ratio)
    except (TypeError, ValueError):
        return str(ratio)


# ----------------------------------------------------------------------------- manifests


@dataclass(frozen=True)
class ResampleResult:
    """A resampled manifest, the rows taken out, and the statistics of the resampled rows before and after.

    Attributes
    ----------
    manifest : Manifest
        Every input row (clones added, removed rows left out), with ``source_image_id`` and
        ``copy_index``, and a ``resample`` step in its history.
    removed : pandas.DataFrame
        The rows taken out (under-sampling, ``patient-cap``); empty otherwise.
    before, after : Stats
        Rows, patients, positives, IRLbl and MeanIR of the resampled split.
    percent_reached : float or None
        ``ml-ros`` / ``ml-rus``: the rows cloned or removed, in % of the split's rows (None
        for the other strategies). Below ``percent`` when the algorithm stopped short.
    stop_reason : str or None
        Why ``ml-ros`` / ``ml-rus`` stopped short of ``percent`` (None when it did not):
        no label was left above (ML-ROS) or below (ML-RUS) the mean imbalance ratio.
    """

    manifest: Manifest
    removed: pd.DataFrame
    before: Stats
    after: Stats
    percent_reached: float | None = None
    stop_reason: str | None = None

    @property
    def stopped_short(self) -> bool:
        """Whether ``ml-ros`` / ``ml-rus`` cloned or removed fewer rows than ``percent`` asked."""
        return self.stop_reason is not None


def resample_manifest(
    manifest: Manifest,
    *,
    strategy: str,
    split: str = "train",
    split_col: str = "split",
    target: str | None = None,
    ratio: str | float | None = None,
    percent: float = 25.0,
    cap: int | None = None,
    features: Sequence[str] = (),
    seed: int = 0,
    inputs: Sequence[dict] = (),
) -> ResampleResult:
    """Resample the ``split`` rows of a manifest; every other row passes through unchanged.

    Every output row carries ``source_image_id`` and ``copy_index`` (0 for the original,
    1, 2, ... for clones, whose ``image_id`` is ``IMAGE#copyK``).

    Parameters
    ----------
    manifest : Manifest
        A manifest not resampled before (no ``source_image_id`` column).
    strategy : str
        ``over``, ``under`` (one ``target``), ``ml-ros``, ``ml-rus`` (all labels, by
        ``percent``), ``patient-cap`` (``cap``), ``smote``, ``adasyn`` (``features``).
    split, split_col : str
        The split to resample and the column that holds it; evaluation splits (``val``,
        ``test``, ...) are refused.
    target : str, optional
        ``over``/``under``/``smote``/``adasyn``: the label or categorical column to balance.
    ratio : str or float, optional
        imbalanced-learn's ``sampling_strategy`` (default ``auto``).
    percent : float
        ``ml-ros``/``ml-rus``: the rows to clone or remove, in % of the split (0 < P <= 100).
        They stop short when no label is left above (below) the mean imbalance ratio:
        :attr:`ResampleResult.stop_reason` says so, with a warning.
    cap : int, optional
        ``patient-cap``: the most images kept per patient.
    features : sequence of str
        ``smote``/``adasyn``: numeric feature columns.
    seed : int
        Seed, 0 to 2**32-1: the same seed gives the same bytes.
    inputs : sequence of dict
        Fingerprints of the files read, recorded in the history.

    Returns
    -------
    ResampleResult
        ``manifest``, ``removed`` rows, ``before`` and ``after`` statistics, and for
        ``ml-ros``/``ml-rus`` ``percent_reached`` and ``stop_reason``.

    Raises
    ------
    UsageError
        An unknown ``strategy``, an evaluation ``split``, a manifest already resampled,
        a ``percent``, ``cap`` or ``seed`` out of range, a missing ``target`` or
        ``features``, a target with a single class, a ``ratio`` imbalanced-learn refuses.
    MissingColumnError
        ``target`` or a ``features`` column is not in the manifest.

    Warns
    -----
    MdprepWarning
        ``ml-ros``/``ml-rus`` stopped short of ``percent``.

    Examples
    --------
    >>> import pandas as pd
    >>> f = pd.DataFrame({"image_id": list("abcdef"), "path": list("abcdef"), "patient_id": list("ppqqrs"),
    ...                   "split": "train", "A": pd.array([1, 0, 0, 0, 0, 0], dtype="Int8")})
    >>> r = resample_manifest(Manifest(f, labels=["A"]), strategy="over", target="A", seed=0)
    >>> int((r.manifest.frame["A"] == 1).sum()), r.manifest.frame["source_image_id"].tolist()[-1]
    (5, 'a')
    >>> r.manifest.frame["copy_index"].tolist()
    [0, 0, 0, 0, 0, 0, 1, 2, 3, 4]
    """
    if strategy not in STRATEGIES:
        raise UsageError(f"unknown --strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    seed = check_seed(seed)
    if split in EVAL_SPLITS:
        raise UsageError(f"refusing to resample the {split!r} split: evaluation data must keep its real distribution")
    frame = manifest.frame
    in_split = split_mask(frame, split, split_col)
    if "source_image_id" in frame.columns:
        raise UsageError("this manifest was already resampled (it has source_image_id); resample the original instead")
    labels = list(manifest.labels)
    train = frame[in_split].reset_index(drop=True)
    rest = frame[~in_split]
    rng = np.random.default_rng(seed)
    reached: float | None = None
    stop_reason: str | None = None
    synthetic = None
    removed_idx = np.zeros(0, dtype=np.int64)
    if strategy in ("over", "under"):
        from imblearn.over_sampling import RandomOverSampler
        from imblearn.under_sampling import RandomUnderSampler

        y = _target(train, target, labels, strategy)
        if len(np.unique(y)) < 2:
            raise UsageError(f"--target {target!r} has a single class in the {split!r} rows; there is nothing to balance")
        sampler_cls = RandomOverSampler if strategy == "over" else RandomUnderSampler
        sampler = sampler_cls(sampling_strategy=_ratio(ratio), random_state=seed)
        try:
            sampler.fit_resample(np.arange(len(train)).reshape(-1, 1), y)
        except ValueError as exc:
            raise UsageError(f"imbalanced-learn refused --ratio {ratio!r}: {exc}") from None
        index = np.asarray(sampler.sample_indices_, dtype=np.int64)
        if strategy == "under":
            removed_idx = np.setdiff1d(np.arange(len(train)), index)
            index = np.sort(index)
        else:
            index = np.concatenate([np.arange(len(train)), np.sort(index[len(train) :], kind="stable")])
    elif strategy == "ml-ros":
        _check_percent(percent)
        positives = _positives(train, labels)
        clones = ml_ros(positives, percent, rng)
        index = np.concatenate([np.arange(len(train)), np.sort(clones, kind="stable")])
        reached, stop_reason = _shortfall(strategy, len(clones), len(train), percent, split, mean_ir(positives))
    elif strategy == "ml-rus":
        _check_percent(percent)
        positives = _positives(train, labels)
        removed_idx = np.sort(ml_rus(positives, percent, rng))
        index = np.setdiff1d(np.arange(len(train)), removed_idx)
        reached, stop_reason = _shortfall(strategy, len(removed_idx), len(train), percent, split, mean_ir(positives))
    elif strategy == "patient-cap":
        if cap is None:
            raise UsageError("--strategy patient-cap needs --cap N, the most images to keep per patient")
        index = patient_cap(train["patient_id"], check_number(cap, "--cap", minimum=1, integer=True), rng)
        removed_idx = np.setdiff1d(np.arange(len(train)), index)
    else:
        index, synthetic = _synthesise(train, strategy, target, labels, features, ratio, seed)
    out = train.take(index).reset_index(drop=True)
    copy_index = pd.Series(index).groupby(index).cumcount().to_numpy()
    out["source_image_id"] = out["image_id"].astype("str")
    out["copy_index"] = pd.array(copy_index, dtype="Int32")
    clones = copy_index > 0
    out.loc[clones, "image_id"] = out.loc[clones, "image_id"] + "#copy" + pd.Series(copy_index[clones], index=out.index[clones]).astype("str")
    if synthetic is not None:
        out["synthetic"] = False
        out = pd.concat([out, synthetic], ignore_index=True)
    rest = rest.assign(source_image_id=rest["image_id"].astype("str"), copy_index=pd.array(np.zeros(len(rest), dtype=np.int32), dtype="Int32"))
    if synthetic is not None:
        rest = rest.assign(synthetic=False)
    result = pd.concat([out, rest], ignore_index=True)
    result = order_columns(result, labels)
    removed = train.take(removed_idx).reset_index(drop=True)
    options = {
        "strategy": strategy,
        "split": split,
        "split_col": split_col,
        "target": target,
        "ratio": ratio,
        "percent": percent if strategy in ("ml-ros", "ml-rus") else None,
        "cap": cap,
        "features": list(features),
    }
    step = provenance_step("resample", options, inputs, seed=seed)
    if stop_reason is not None:
        # Only when it stopped short: a run that reached --percent keeps the bytes it always had.
        step["stopped_short"] = {"percent_reached": round(reached, 4), "reason": stop_reason}
    resampled = manifest.with_frame(result).with_step(step)
    return ResampleResult(resampled, removed, stats(train, labels), stats(result.iloc[: len(out)], labels), reached, stop_reason)


def _shortfall(strategy: str, done: int, rows: int, percent: float, split: str, mir: float) -> tuple[float, str | None]:
    """The rows cloned or removed in % of ``rows``, and why ML-ROS / ML-RUS stopped short of ``percent`` (None when it did not).

    A warning (:class:`~mdprep.errors.MdprepWarning`, a ``Warning:`` line on the command
    line) says so, with the percentage reached.

    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     reached, why = _shortfall("ml-ros", 10, 1000, 5.0, "train", 50.5)
    >>> reached, why
    (1.0, 'no label is left above the mean imbalance ratio (MeanIR 50.50)')
    >>> str(caught[0].message).split(";")[0]
    "ml-ros stopped short: 10 of the 50 rows asked cloned (--percent 5 of 1,000 'train' rows), 1% reached"
    """
    reached = 100.0 * done / rows if rows else 0.0
    asked = int(round(rows * percent / 100))
    if done >= asked:
        return reached, None
    side = "above" if strategy == "ml-ros" else "below"
    mir_text = f"MeanIR {mir:.2f}" if np.isfinite(mir) else "no label has positives"
    reason = f"no label is left {side} the mean imbalance ratio ({mir_text})"
    if strategy == "ml-rus":
        reason += " with rows that may go (a row with a minority label is never removed)"
    verb = "cloned" if strategy == "ml-ros" else "removed"
    warnings.warn(
        f"{strategy} stopped short: {done:,} of the {asked:,} rows asked {verb} (--percent {percent:g} of {rows:,} {split!r} rows), "
        f"{reached:.3g}% reached; {reason}",
        MdprepWarning,
        stacklevel=3,
    )
    return reached, reason


def _check_percent(percent: float) -> None:
    if not 0 < percent <= 100:
        raise UsageError(f"--percent {percent}: give a share of the rows between 0 and 100")


def _synthesise(train, strategy, target, labels, features, ratio, seed):
    """SMOTE/ADASYN in feature space; synthetic rows cite their two nearest minority rows."""
    from imblearn.over_sampling import ADASYN, SMOTE
    from sklearn.neighbors import NearestNeighbors

    if not features:
        raise UsageError(
            f"--strategy {strategy} interpolates numeric features, never images: pass --features COL,... "
            "(for example image embeddings); without features use over or ml-ros"
        )
    missing = [c for c in features if c not in train.columns]
    if missing:
        raise MissingColumnError(missing, list(train.columns), hint="--features names numeric columns")
    not_numeric = [c for c in features if not (pd.api.types.is_numeric_dtype(train[c]) and not pd.api.types.is_bool_dtype(train[c]))]
    if not_numeric:
        kinds = ", ".join(f"{c!r} ({train[c].dtype})" for c in not_numeric[:5])
        raise UsageError(f"--features {kinds}: not numeric; {strategy} interpolates numbers only (embeddings, radiomics)", columns=not_numeric)
    X = train[list(features)].to_numpy(dtype="float64", na_value=np.nan)
    if not np.isfinite(X[~np.isnan(X)]).all():
        raise UsageError(f"--features hold infinite values in {int(np.isinf(X).any(axis=1).sum())} row(s); {strategy} needs finite numbers")
    if np.isnan(X).any():
        raise UsageError(f"--features has {int(np.isnan(X).any(axis=1).sum())} row(s) with empty values; fill or drop them first")
    y = _target(train, target, labels, strategy)
    sampler = (SMOTE if strategy == "smote" else ADASYN)(sampling_strategy=_ratio(ratio), random_state=seed)
    try:
        X_new, y_new = sampler.fit_resample(X, y)
    except (ValueError, RuntimeError) as exc:
        raise UsageError(f"imbalanced-learn {strategy} failed: {exc}") from None
    new = X_new[len(train) :]
    index = np.arange(len(train))
    if len(new) == 0:
        return index, train.iloc[:0].assign(synthetic=pd.Series([], dtype=bool))
    minority_rows = np.flatnonzero(np.isin(y, np.unique(y_new[len(train) :])))
    nn = NearestNeighbors(n_neighbors=min(2, len(minority_rows))).fit(X[minority_rows])
    _, near = nn.kneighbors(new)
    src = minority_rows[near]
    base = train.iloc[src[:, 0]].reset_index(drop=True).copy()
    for j, col in enumerate(features):
        base[col] = new[:, j]
    ids = train["image_id"].astype("str").to_numpy()
    base["source_image_id"] = ["|".join(ids[s]) for s in src]
    base["image_id"] = [f"synthetic-{strategy}-{k}" for k in range(len(new))]
    base["copy_index"] = pd.array(np.zeros(len(new), dtype=np.int32), dtype="Int32")
    base["synthetic"] = True
    if target in labels:
        base[target] = pd.array(np.where(y_new[len(train) :] == 1, 1, 0), dtype="Int8")
    elif target is not None:
        base[target] = y_new[len(train) :]
    return index, base

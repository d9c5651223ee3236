"""Per-label class weights for a weighted multi-label loss, from the training rows only.

Touches DataFrames and numbers only. Only 1 (positive) and 0 (negative) count;
uncertain (-1) and null labels are excluded and reported per label as ``n_ignored``.

Schemes (per label, two classes):

* ``balanced``: ``w_c = n / (2 * n_c)`` (scikit-learn's ``class_weight="balanced"``).
  900 negatives and 100 positives give ``w_neg = 0.5556`` and ``w_pos = 5.0``.
* ``frequency``: ``w_pos = n_neg / n``, ``w_neg = n_pos / n``. The positive and negative
  terms then weigh the same in the loss (CheXNet-style weighted binary cross-entropy).
* ``pos-weight``: ``w_pos = n_neg / n_pos`` and ``w_neg = 1``: PyTorch's
  ``BCEWithLogitsLoss(pos_weight=...)``.
* ``effective``: Cui et al., CVPR 2019. The effective number of samples is
  ``E_c = (1 - beta^n_c) / (1 - beta)``; ``w_c`` is proportional to ``1 / E_c`` and
  normalised so the two weights sum to 2, the number of classes.

``sqrt`` takes the square root of every weight; ``clip`` then caps them.

A label with no positives, no negatives, or no labelled rows at all in the chosen
rows cannot be weighed: a weight would be infinite or undefined. It gets the
scheme's *neutral* weights instead, the weights the scheme gives a label whose two
classes are equally frequent (``pos_weight`` 1), with a warning and the reason
recorded (:attr:`LabelWeight.neutral`). ``drop_empty`` leaves such labels out instead.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .choices import SCHEMES
from .errors import InputError, MdprepWarning, UsageError, examples_text, short_repr
from .manifest import NEGATIVE, POSITIVE, Manifest
from .params import check_number

EVAL_SPLITS = frozenset({"val", "valid", "validation", "test", "holdout"})
SCHEMA = "mdprep-weights"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class LabelWeight:
    label: str
    n_pos: int
    n_neg: int
    n_ignored: int
    w_pos: float
    w_neg: float
    neutral: str | None = None  # why the label got neutral weights, or None


@dataclass(frozen=True)
class WeightsResult:
    scheme: str
    weights: tuple[LabelWeight, ...]
    rows: int
    split: str
    options: dict
    dropped: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)
    fold: int | None = None  # counted on the training part of this fold (split is then None)

    @property
    def labels(self) -> list[str]:
        """The weighed labels, in order (labels left out by ``drop_empty`` are in :attr:`dropped`)."""
        return [w.label for w in self.weights]

    @property
    def pos_weight(self) -> list[float]:
        """``w_pos / w_neg`` per label, in :attr:`labels` order: what ``torch.nn.BCEWithLogitsLoss(pos_weight=...)`` takes.

        A new list each time (changing it changes nothing here). With ``scheme="pos-weight"``
        it is ``n_neg / n_pos``; a neutral label gets 1.

        Examples
        --------
        >>> import pandas as pd
        >>> from mdprep.manifest import Manifest
        >>> f = pd.DataFrame({"image_id": list("abcde"), "path": list("abcde"), "patient_id": list("abcde"),
        ...                   "split": "train", "A": pd.array([1, 0, 0, 0, 0], dtype="Int8")})
        >>> compute_weights(Manifest(f, labels=["A"]), scheme="pos-weight").pos_weight
        [4.0]
        """
        return [w.w_pos / w.w_neg if w.w_neg else float("inf") for w in self.weights]

    def to_frame(self) -> pd.DataFrame:
        """One row per label (the index): ``n_pos``, ``n_neg``, ``n_ignored``, ``w_pos``, ``w_neg``, ``pos_weight``, ``neutral``.

        >>> import pandas as pd
        >>> from mdprep.manifest import Manifest
        >>> f = pd.DataFrame({"image_id": list("abcd"), "path": list("abcd"), "patient_id": list("abcd"),
        ...                   "split": "train", "A": pd.array([1, 0, 0, 0], dtype="Int8")})
        >>> compute_weights(Manifest(f, labels=["A"]), scheme="pos-weight").to_frame().to_dict("index")["A"]["pos_weight"]
        3.0
        """
        columns = ["n_pos", "n_neg", "n_ignored", "w_pos", "w_neg"]
        frame = pd.DataFrame([[getattr(w, c) for c in columns] for w in self.weights], columns=columns, index=pd.Index(self.labels, name="label", dtype=object))
        frame = frame.astype({"n_pos": "int64", "n_neg": "int64", "n_ignored": "int64", "w_pos": "float64", "w_neg": "float64"})
        frame["pos_weight"] = pd.Series(self.pos_weight, index=frame.index, dtype="float64")
        frame["neutral"] = pd.Series([w.neutral for w in self.weights], index=frame.index, dtype=object)
        return frame

    @property
    def neutral_labels(self) -> dict[str, str]:
        """Labels that got neutral weights, and why."""
        return {w.label: w.neutral for w in self.weights if w.neutral}

    def document(self, provenance: dict | None = None) -> dict:
        """The ``weights.json`` document (schema ``mdprep-weights`` version 1, docs/weights.md)."""
        return {
            "schema": SCHEMA,
            "version": SCHEMA_VERSION,
            "scheme": self.scheme,
            "options": self.options,
            "split": self.split,
            "fold": self.fold,
            "rows": self.rows,
            "counting": "only 1 (positive) and 0 (negative) are counted; uncertain (-1) and null labels are excluded (n_ignored)",
            "labels": self.labels,
            "weights": {
                w.label: {
                    "n_pos": w.n_pos, "n_neg": w.n_neg, "n_ignored": w.n_ignored, "w_pos": w.w_pos, "w_neg": w.w_neg, "neutral": w.neutral,
                }
                for w in self.weights
            },
            "pos_weight": self.pos_weight,
            "neutral_labels": self.neutral_labels,
            "dropped": list(self.dropped),
            "provenance": provenance or {},
        }


def scheme_weights(n_pos: np.ndarray, n_neg: np.ndarray, scheme: str, *, beta: float = 0.999) -> tuple[np.ndarray, np.ndarray]:
    """``(w_pos, w_neg)`` arrays for counts of positives and negatives per label.

    >>> w_pos, w_neg = scheme_weights(np.array([100]), np.array([900]), "balanced")
    >>> round(float(w_neg[0]), 4), round(float(w_pos[0]), 4)
    (0.5556, 5.0)
    """
    n_pos = np.asarray(n_pos, dtype=float)
    n_neg = np.asarray(n_neg, dtype=float)
    n = n_pos + n_neg
    with np.errstate(divide="ignore", invalid="ignore"):
        if scheme == "balanced":
            return n / (2 * n_pos), n / (2 * n_neg)
        if scheme == "frequency":
            return n_neg / n, n_pos / n
        if scheme == "pos-weight":
            return n_neg / n_pos, np.ones_like(n)
        if scheme == "effective":
            if not 0 < beta < 1:
                raise UsageError(f"--beta {beta}: the effective-number scheme needs 0 < beta < 1 (Cui et al. use 0.9 to 0.9999)")
            inv_pos = (1 - beta) / (1 - np.power(beta, n_pos))
            inv_neg = (1 - beta) / (1 - np.power(beta, n_neg))
            total = inv_pos + inv_neg
            return 2 * inv_pos / total, 2 * inv_neg / total
    raise UsageError(f"unknown --scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")


def split_mask(frame: pd.DataFrame, split: str, split_col: str = "split") -> np.ndarray:
    """Which rows belong to ``split`` (``all``: every row); a clear error when none can."""
    if split == "all":
        return np.ones(len(frame), dtype=bool)
    if split_col not in frame.columns:
        raise UsageError(
            f"the manifest has no {split_col!r} column to pick the {split!r} rows from; "
            "run `mdprep split` first, or pass --split all to use every row"
        )
    mask = (frame[split_col] == split).fillna(False).to_numpy(dtype=bool)
    if not mask.any():
        present = sorted(map(str, frame[split_col].dropna().unique()))
        raise UsageError(f"no rows have {split_col} == {split!r}; the splits present are {', '.join(present) or 'none'}")
    return mask


def select_rows(manifest: Manifest, split: str, split_col: str = "split") -> pd.DataFrame:
    """The rows of one split (``all`` for every row, with a warning when that includes val/test)."""
    frame = manifest.frame
    if split == "all" and split_col in frame.columns and frame[split_col].isin(list(EVAL_SPLITS)).any():
        names = sorted(set(frame[split_col].dropna()) & EVAL_SPLITS)
        warnings.warn(
            f"--split all includes the {', '.join(names)} rows: their label statistics leak into training",
            MdprepWarning,
            stacklevel=3,
        )
    return frame[split_mask(frame, split, split_col)]


def compute_weights(
    manifest: Manifest,
    *,
    split: str = "train",
    split_col: str = "split",
    scheme: str = "balanced",
    beta: float = 0.999,
    sqrt: bool = False,
    clip: float | None = None,
    labels: Sequence[str] | None = None,
    drop_empty: bool = False,
    fold: int | None = None,
    fold_col: str = "fold",
) -> WeightsResult:
    """Per-label weights from the ``split`` rows of a manifest, or from the training part of ``fold``.

    With ``fold=K`` the rows are those that train when fold K validates (the
    non-test rows of the other folds, :func:`mdprep.crossval.plan_runs`), so the
    weights never see the validation labels; ``split`` is then not used and the
    document records ``fold``.

    A label with no positives, no negatives or no labelled rows in those rows gets
    the scheme's neutral weights (those of two equally frequent classes), with an
    :class:`~mdprep.errors.MdprepWarning` and the reason in ``LabelWeight.neutral``;
    with ``drop_empty`` it is left out instead and listed in ``dropped``.

    Parameters
    ----------
    manifest : Manifest
        The manifest, with label columns.
    split : str
        The rows to count: a split name (``train``), or ``all`` (warns: val and test leak).
    split_col : str
        Column holding the split names.
    scheme : {"balanced", "frequency", "pos-weight", "effective"}
        How counts become weights (module docstring, docs/weights.md).
    beta : float
        ``effective`` only: Cui et al.'s beta, 0 < beta < 1.
    sqrt : bool
        Take the square root of every weight.
    clip : float, optional
        Cap every weight at this value (above 0).
    labels : sequence of str, optional
        Only these label columns (default: all, in manifest order).
    drop_empty : bool
        Leave out labels that cannot be weighed instead of giving them neutral weights.
    fold, fold_col : int, str
        Count the training part of fold ``fold`` (column ``fold_col``) instead of ``split``.

    Returns
    -------
    WeightsResult
        ``weights`` (one :class:`LabelWeight` per label), ``labels``, ``pos_weight``
        (the list ``torch.nn.BCEWithLogitsLoss(pos_weight=...)`` takes), ``to_frame()``
        and ``document()`` (the ``weights.json`` document).

    Raises
    ------
    UsageError
        No label columns, labels that are not label columns, an unknown ``scheme``,
        ``beta`` or ``clip`` out of range, weights that come out 0 or infinite, a
        ``split`` that no row has or no ``split_col`` column.

    Warns
    -----
    MdprepWarning
        A label weighed neutrally; ``split="all"`` counting evaluation rows.

    Examples
    --------
    >>> import pandas as pd
    >>> f = pd.DataFrame({"image_id": [str(i) for i in range(1000)], "path": "x", "patient_id": "p",
    ...                   "split": "train", "A": pd.array([1] * 100 + [0] * 900, dtype="Int8")})
    >>> result = compute_weights(Manifest(f, labels=["A"]))
    >>> w = result.weights[0]
    >>> round(w.w_neg, 4), round(w.w_pos, 4)
    (0.5556, 5.0)
    >>> [round(p, 4) for p in result.pos_weight]  # w_pos / w_neg of the stored (6-decimal) weights
    [9.0]
    """
    if scheme not in SCHEMES:
        raise UsageError(f"unknown --scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    if clip is not None:
        check_number(clip, "--clip", above=0)
    names = list(manifest.labels) if labels is None else list(labels)
    if not names:
        raise UsageError("the manifest has no label columns to weigh; ingest labels first (mdprep ingest table ...)")
    unknown = [n for n in names if n not in manifest.labels]
    if unknown:
        raise UsageError(f"{', '.join(map(repr, unknown))} are not label columns; the labels are {', '.join(manifest.labels)}")
    if fold is None:
        rows = select_rows(manifest, split, split_col)
        where = f"in the chosen rows (split={split})"
    else:
        from .crossval import plan_runs

        check_number(fold, "--fold", minimum=0, integer=True)
        rows = manifest.frame[plan_runs(manifest.frame, fold=int(fold), split_col=split_col, fold_col=fold_col).runs[0].train]
        split, where = None, f"in the training part of fold {fold}"
    values = rows[names].to_numpy(dtype="float64", na_value=np.nan)
    n_pos = (values == POSITIVE).sum(axis=0)
    n_neg = (values == NEGATIVE).sum(axis=0)
    n_ignored = len(rows) - n_pos - n_neg
    reasons = {}
    for name, p, q in zip(names, n_pos.tolist(), n_neg.tolist()):
        if p == 0 and q == 0:
            reasons[name] = f"no labelled rows (every value is uncertain or missing) {where}"
        elif q == 0:
            reasons[name] = f"no negatives {where}"
        elif p == 0:
            reasons[name] = f"no positives {where}"
    dropped = [n for n in names if n in reasons] if drop_empty else []
    keep = [i for i, n in enumerate(names) if n not in dropped]
    neutral = np.array([names[i] in reasons for i in keep], dtype=bool)
    # A neutral label is weighed as if its two classes were equally frequent.
    calc_pos = np.where(neutral, 1, n_pos[keep])
    calc_neg = np.where(neutral, 1, n_neg[keep])
    w_pos, w_neg = scheme_weights(calc_pos, calc_neg, scheme, beta=beta)
    if sqrt:
        w_pos, w_neg = np.sqrt(w_pos), np.sqrt(w_neg)
    if clip is not None:
        w_pos, w_neg = np.minimum(w_pos, clip), np.minimum(w_neg, clip)
    weights = tuple(
        LabelWeight(
            names[i], int(n_pos[i]), int(n_neg[i]), int(n_ignored[i]), round(float(wp), 6), round(float(wn), 6),
            reasons[names[i]] if is_neutral else None,
        )
        for i, wp, wn, is_neutral in zip(keep, w_pos, w_neg, neutral)
    )
    if neutral.any():
        value = next(w for w in weights if w.neutral)
        by_reason: dict[str, list[str]] = {}
        for w in weights:
            if w.neutral:
                by_reason.setdefault(w.neutral.removesuffix(f" {where}"), []).append(w.label)
        parts = "; ".join(f"{', '.join(map(repr, labs))}: {why}" for why, labs in by_reason.items())
        warnings.warn(
            f"{int(neutral.sum())} label(s) cannot be weighed from the {f'fold {fold} training' if fold is not None else repr(split)} rows ({parts}), "
            f"so they get the neutral weights of --scheme {scheme} (w_pos = w_neg = {value.w_pos:g}, pos_weight 1), "
            "recorded in neutral_labels; pass --drop-empty to leave them out, or --labels to choose labels",
            MdprepWarning,
            stacklevel=2,
        )
    unusable = [w.label for w in weights if not (np.isfinite(w.w_pos) and np.isfinite(w.w_neg) and w.w_pos > 0 and w.w_neg > 0)]
    if unusable:
        raise UsageError(
            f"--scheme {scheme}{f' with --beta {beta:g}' if scheme == 'effective' else ''}{f', --clip {clip:g}' if clip is not None else ''} gives weights of 0 or not finite for "
            f"{examples_text(unusable, len(unusable))} (weights are stored to 6 decimals); choose a larger --clip or another --beta",
            labels=unusable,
        )
    options = {"beta": beta if scheme == "effective" else None, "sqrt": sqrt, "clip": clip, "split_col": split_col, "drop_empty": drop_empty}
    if fold is not None:
        options["fold_col"] = fold_col
    in_rows = repr(split) if fold is None else f"the training part of fold {fold}"
    notes = tuple(f"label {d!r} has {reasons[d].removesuffix(f' {where}')} in {in_rows}; left out (--drop-empty)" for d in dropped)
    return WeightsResult(scheme, weights, len(rows), split, options, tuple(dropped), notes, None if fold is None else int(fold))


def weights_from_document(doc: Any, labels: Sequence[str], *, source: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Label names, ``w_pos`` and ``w_neg`` (float32) of a parsed ``weights.json`` document, its shape checked.

    The document must be an object with ``schema`` ``mdprep-weights``, ``version`` 1,
    ``labels`` a non-empty list of distinct names, and under ``weights`` an object per
    label whose ``w_pos`` and ``w_neg`` are finite numbers, not negative, that fit a
    float32. Every broken rule is listed in one :class:`~mdprep.errors.InputError`
    (``source`` names the file); weights for labels that are not among ``labels``
    (the manifest's) are a :class:`~mdprep.errors.UsageError`.

    >>> doc = {"schema": "mdprep-weights", "version": 1, "labels": ["A"], "weights": {"A": {"w_pos": 2.0, "w_neg": float("nan")}}}
    >>> weights_from_document(doc, ["A"], source="w.json")
    Traceback (most recent call last):
    ...
    mdprep.errors.InputError: w.json is not a usable mdprep-weights version 1 document: 'A' has w_neg nan, not a finite number of 0 or more; create it with `mdprep weights`
    """
    problems: list[str] = []
    if not isinstance(doc, dict):
        problems.append(f"it is {short_repr(doc)}, not a JSON object")
        doc = {}
    elif doc.get("schema") != SCHEMA or doc.get("version") != SCHEMA_VERSION or isinstance(doc.get("version"), bool):
        problems.append(f"schema {short_repr(doc.get('schema'))} version {short_repr(doc.get('version'))}, not {SCHEMA!r} version {SCHEMA_VERSION}")
    names = doc.get("labels")
    entries = doc.get("weights")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        if not problems:
            problems.append(f"'labels' is {short_repr(names)}, not a list of label names")
        names = []
    elif len(set(names)) != len(names):
        problems.append(f"'labels' lists {examples_text(sorted({n for n in names if names.count(n) > 1}), len(names))} more than once")
    if names and not isinstance(entries, dict):
        problems.append(f"'weights' is {short_repr(entries)}, not an object with one entry per label")
        names = []
    w_pos = np.zeros(len(names), dtype=np.float32)
    w_neg = np.zeros(len(names), dtype=np.float32)
    for i, name in enumerate(names):
        entry = entries.get(name)
        if not isinstance(entry, dict):
            problems.append(f"{name!r} has no weights entry (found {short_repr(entry)})")
            continue
        for key, out in (("w_pos", w_pos), ("w_neg", w_neg)):
            value = entry.get(key)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value) and value >= 0
            if ok:
                with np.errstate(over="ignore"):
                    out[i] = np.float32(value)
                ok = bool(np.isfinite(out[i]))
            if not ok:
                problems.append(f"{name!r} has {key} {short_repr(value)}, not a finite number of 0 or more")
    if problems:
        raise InputError(
            f"{source} is not a usable {SCHEMA} version {SCHEMA_VERSION} document: {'; '.join(problems[:5])}"
            + (f"; ... ({len(problems)} problems in all)" if len(problems) > 5 else "")
            + "; create it with `mdprep weights`",
            path=source,
            problems=problems,
        )
    unknown = [n for n in names if n not in labels]
    if unknown:
        raise UsageError(f"{source} has weights for {', '.join(map(repr, unknown))}, which are not label columns of the manifest")
    return list(names), w_pos, w_neg


def weighted_bce(logits: np.ndarray, targets: np.ndarray, w_pos: Sequence[float], w_neg: Sequence[float]) -> float:
    """Reference multi-label weighted binary cross-entropy (pure numpy).

    For each label, the mean over the rows whose target is 0 or 1 (uncertain -1 and
    NaN are masked out) of ``-(w_pos * y * log s(x) + w_neg * (1 - y) * log(1 - s(x)))``;
    then the sum over labels. ``s`` is the logistic function, computed stably.

    >>> round(weighted_bce(np.array([[0.0]]), np.array([[1.0]]), [2.0], [1.0]), 4)
    1.3863
    """
    x = np.asarray(logits, dtype=float)
    y = np.asarray(targets, dtype=float)
    mask = (y == 0) | (y == 1)
    log_p = -np.logaddexp(0, -x)  # log sigmoid(x)
    log_q = -np.logaddexp(0, x)  # log (1 - sigmoid(x))
    yy = np.where(mask, y, 0.0)
    per = -(np.asarray(w_pos)[None, :] * yy * log_p + np.asarray(w_neg)[None, :] * (1 - yy) * log_q)
    per = np.where(mask, per, 0.0)
    counts = mask.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_label = np.where(counts > 0, per.sum(axis=0) / np.maximum(counts, 1), 0.0)
    return float(per_label.sum())

"""Patient-grouped, multi-label stratified splits and k-fold, and their quality measures.

Touches arrays and manifests only. The splitters follow scikit-learn's protocol
(keyword-only constructors that only store parameters, ``split(X, y, groups)``
yielding index arrays, ``get_n_splits``, ``random_state`` resolved inside the
method), so they work inside ``sklearn.model_selection.cross_validate``.

The algorithm is iterative stratification (Sechidis, Tsoumakas and Vlahavas,
ECML PKDD 2011) run on groups instead of examples:

1. each group (patient) becomes one row: its image count and, per label, its
   number of positive images;
2. every part (split or fold) starts with a demand: its ratio times the images
   and times each label's positive images;
3. the label with the fewest unassigned positive groups goes first; each of its
   groups (most positives first, then in seeded random order) goes to the part
   that most still needs that label, ties to the part with most room left,
   then by the seed; the demands of the chosen part drop by the group's counts;
4. groups without any positive go last, largest first, each to the part with
   most room left.

Uncertain (-1) and missing labels are not positives: such an image counts toward
sizes only.
"""

from __future__ import annotations

import numbers
import warnings
from array import array
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd

from .audit import PERSON_COLUMNS, degenerate_grouping, visible
from .choices import MISSING_GROUP_POLICIES
from .errors import MdprepWarning, MissingColumnError, UsageError, examples_text
from .manifest import Manifest, check, order_columns, provenance_step
from .params import check_seed


def _arrow_text(values: pd.Series) -> bool:
    """Whether ``values`` is text held in Arrow (pandas' ``str``, or ``pd.ArrowDtype`` of a string type).

    >>> import pyarrow as pa
    >>> _arrow_text(pd.Series(["a"], dtype=pd.ArrowDtype(pa.string()))), _arrow_text(pd.Series([1]))
    (True, False)
    """
    dtype = values.dtype
    if isinstance(dtype, pd.StringDtype):
        return dtype.storage == "pyarrow"
    if isinstance(dtype, pd.ArrowDtype):
        import pyarrow as pa

        return pa.types.is_string(dtype.pyarrow_dtype) or pa.types.is_large_string(dtype.pyarrow_dtype)
    return False


def _dtype_text(values: pd.Series) -> str:
    """The type of ``values`` as messages name it: text held in Arrow is ``str``, as pandas' own text type.

    >>> import pyarrow as pa
    >>> _dtype_text(pd.Series(["a"], dtype=pd.ArrowDtype(pa.string()))), _dtype_text(pd.Series(["a"], dtype="str"))
    ('str', 'str')
    """
    if isinstance(values.dtype, pd.ArrowDtype) and _arrow_text(values):
        return "str"
    return str(values.dtype)


def _release_arrow_memory() -> None:
    """Hand the memory Arrow has freed back to the system (its allocator keeps it for reuse otherwise)."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


def resampled_rows(frame: pd.DataFrame) -> int:
    """Rows that ``mdprep resample`` made: clones (``copy_index`` above 0) and synthetic rows (``synthetic`` true).

    >>> resampled_rows(pd.DataFrame({"copy_index": [0, 1, 2], "synthetic": [False, False, True]}))
    2
    """
    made = np.zeros(len(frame), dtype=bool)
    if "copy_index" in frame.columns:
        made |= pd.to_numeric(frame["copy_index"], errors="coerce").fillna(0).to_numpy() > 0
    if "synthetic" in frame.columns:
        made |= frame["synthetic"].fillna(False).astype(bool).to_numpy()
    return int(made.sum())


def check_ratios(ratios: Sequence[float]) -> np.ndarray:
    """Validate split ratios: at least two, each a finite number above 0, summing to 1.

    A part of ratio 0 would be named and get no rows, so it is refused like a negative one.

    >>> check_ratios([0.7, 0.1, 0.2]).tolist()
    [0.7, 0.1, 0.2]
    """
    r = np.asarray(list(ratios), dtype=float)
    if r.ndim != 1 or len(r) < 2:
        raise UsageError(f"ratios {list(ratios)} need at least two parts, for example 0.8,0.2", ratios=list(ratios))
    if not np.isfinite(r).all():
        raise UsageError(f"ratios {list(ratios)} must be finite numbers, for example 0.7,0.1,0.2", ratios=list(ratios))
    if (r <= 0).any():
        raise UsageError(f"ratios {list(ratios)} must each be above 0 (a part of 0 gets no rows); leave that part out", ratios=list(ratios))
    if abs(r.sum() - 1.0) > 1e-6:
        raise UsageError(f"ratios {list(ratios)} sum to {r.sum():g}, not 1; for example 0.7,0.1,0.2", ratios=list(ratios))
    return r


def _positives(y: Any) -> np.ndarray:
    """Positive indicator matrix (n, L) from a label matrix or a 1-D class vector."""
    if isinstance(y, pd.DataFrame):
        arr = y.to_numpy(dtype="float64", na_value=np.nan)
    elif isinstance(y, pd.Series):
        arr = y.to_numpy()
    else:
        arr = np.asarray(y)
    if arr.ndim == 1:
        # Single-label classes: one indicator column per class.
        codes, _ = pd.factorize(arr, sort=True)
        out = np.zeros((len(arr), max(codes.max() + 1, 1) if len(arr) else 0), dtype=bool)
        valid = codes >= 0
        out[np.flatnonzero(valid), codes[valid]] = True
        return out
    if arr.dtype == bool:  # already indicators (split_manifest's matrix): no float copy
        return arr
    return np.asarray(arr, dtype="float64") == 1


def group_counts(positives: np.ndarray, codes: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Per group: image count (int64) and positive images per label.

    The counts take the smallest integer type that holds the largest group's image count
    (``int8`` for groups of up to 127 images): one (G, L) table for every group and label.

    >>> sizes, counts = group_counts(np.array([[1, 0], [1, 1], [0, 0]], bool), np.array([0, 0, 1]), 2)
    >>> sizes.tolist(), counts.tolist(), counts.dtype.name
    ([2, 1], [[2, 1], [0, 0]], 'int8')
    """
    sizes = np.bincount(codes, minlength=n_groups).astype(np.int64)
    largest = int(sizes.max()) if len(sizes) else 0
    if not positives.dtype == bool:  # weights, not indicators: a count may exceed the group's images
        largest = max(largest, int(np.abs(positives).sum(axis=0).max()) if positives.size else 0)
    dtype = next(t for t in (np.int8, np.int16, np.int32, np.int64) if largest <= np.iinfo(t).max)
    counts = np.zeros((n_groups, positives.shape[1]), dtype=dtype)
    for j in range(positives.shape[1]):
        col = positives[:, j]
        # Indicators: the codes of the positive rows, counted (no float weight per row).
        counts[:, j] = np.bincount(codes[col], minlength=n_groups) if col.dtype == bool else np.bincount(codes, weights=col, minlength=n_groups)
    return sizes, counts


def iterative_group_assignment(
    sizes: np.ndarray,
    counts: np.ndarray,
    ratios: Sequence[float],
    rng: np.random.RandomState,
    fixed: np.ndarray | None = None,
) -> np.ndarray:
    """Assign each group to a part by iterative stratification (see the module docstring).

    Parameters
    ----------
    sizes : (G,) int
        Images per group.
    counts : (G, L) int
        Positive images per group and label.
    ratios : sequence of float
        Target share of the images for each part.
    rng : RandomState
        Breaks ties and orders groups of equal weight.
    fixed : (G,) int, optional
        Part already imposed on a group (-1 where free); such groups count
        against their part's demands and are not moved.

    Returns
    -------
    (G,) int array of part indices.

    Notes
    -----
    "Most still needs" is measured relative to each part's quota (remaining
    positives over ``ratio * total``), so unequal ratios compare fairly. The parts
    that need the current label within the group's own weight of the neediest
    part are all acceptable; among them the group goes where its whole content
    (every label it carries, and its images) is most needed, then to the part
    with most room, then by the seed. Groups are few (patients, not images), so
    the loop runs over plain Python lists: numpy calls on arrays of a handful of
    parts cost more than they save.
    """
    ratios = np.asarray(ratios, dtype=float)
    n_groups, n_labels = counts.shape
    k = len(ratios)
    part = np.full(n_groups, -1, dtype=np.int64) if fixed is None else np.asarray(fixed, dtype=np.int64).copy()
    totals = counts.sum(axis=0).astype(float)
    quota = ratios[:, None] * totals[None, :]
    size_quota = ratios * float(sizes.sum())
    need_arr = quota.copy()
    room_arr = size_quota.copy()
    for j in range(k):
        taken = part == j
        if taken.any():
            need_arr[j] -= counts[taken].sum(axis=0)
            room_arr[j] -= sizes[taken].sum()
    with np.errstate(divide="ignore"):
        inv_quota = np.where(quota > 0, 1.0 / np.where(quota > 0, quota, 1.0), 0.0).tolist()
        inv_room = np.where(size_quota > 0, 1.0 / np.where(size_quota > 0, size_quota, 1.0), 0.0).tolist()
    need = need_arr.tolist()
    room = room_arr.tolist()
    parts = list(range(k))
    # Each group's labels as (label, positives) pairs: groups carry few labels each. Two flat
    # arrays of machine integers rather than a tuple per pair (64 bytes) or a list of Python
    # ints: 4 bytes per pair, and 8 per group for where its pairs start.
    gi, li = np.nonzero(counts)
    pair_label = array("i", li.astype(np.intc).tobytes())
    values = counts[gi, li].astype(np.int64)
    wide = len(values) and int(values.max()) > np.iinfo(np.intc).max
    pair_count = array("q", values.tobytes()) if wide else array("i", values.astype(np.intc).tobytes())
    del values
    bounds = array("q", np.searchsorted(gi, np.arange(n_groups + 1)).astype(np.int64).tobytes())
    del gi, li
    size_list = sizes.tolist()
    priority = rng.permutation(n_groups)
    free = part < 0
    done = np.zeros(n_labels, dtype=bool)
    out = part.tolist()

    def tie_break(cands: list[int]) -> int:
        best = max(room[j] for j in cands)
        cands = [j for j in cands if room[j] == best]
        return cands[0] if len(cands) == 1 else cands[rng.randint(len(cands))]

    # Free groups carrying each label. A label's groups are found from its column of counts when
    # it is its turn: no (G, L) table of indicators beside the counts.
    unassigned = (counts[free] > 0).sum(axis=0)
    while n_labels:
        remaining = np.where(done | (unassigned == 0), np.iinfo(np.int64).max, unassigned)
        if remaining.min() == np.iinfo(np.int64).max:
            break
        label = int(np.argmin(remaining))  # rarest first; ties by label order
        members = np.flatnonzero((counts[:, label] > 0) & free)
        weights = counts[members, label]
        order = np.lexsort((priority[members], -weights))
        inv_l = [inv_quota[j][label] for j in parts]
        # Machine integers, each made a Python int when its turn comes: not a list of them all at once.
        for g, c_l in zip(array("q", members[order].astype(np.int64).tobytes()), array("q", weights[order].astype(np.int64).tobytes())):
            rel = [need[j][label] * inv_l[j] for j in parts]
            top = max(rel)
            cands = [j for j in parts if rel[j] >= top - c_l * inv_l[j]]
            mine = list(zip(pair_label[bounds[g] : bounds[g + 1]], pair_count[bounds[g] : bounds[g + 1]]))
            if len(cands) > 1:
                n_g = size_list[g]
                scores = []
                for j in cands:
                    need_j, inv_j = need[j], inv_quota[j]
                    score = n_g * room[j] * inv_room[j]
                    for ll, c in mine:
                        score += c * need_j[ll] * inv_j[ll]
                    scores.append(score)
                best = max(scores)
                cands = [j for j, sc in zip(cands, scores) if sc == best]
            j = cands[0] if len(cands) == 1 else tie_break(cands)
            out[g] = j
            need_j = need[j]
            for ll, c in mine:
                need_j[ll] -= c
            room[j] -= size_list[g]
        free[members] = False
        unassigned -= (counts[members] > 0).sum(axis=0)
        done[label] = True
    rest = np.flatnonzero(free)
    for g in rest[np.lexsort((priority[rest], -sizes[rest]))].tolist():
        rel = [room[j] * inv_room[j] for j in parts]
        top = max(rel)
        j = tie_break([j for j in parts if rel[j] == top])
        out[g] = j
        room[j] -= size_list[g]
    return np.asarray(out, dtype=np.int64)


def _group_codes(groups: Any) -> tuple[np.ndarray, int]:
    if groups is None:
        raise UsageError("groups are required: pass the patient id of every row (groups=...)")
    if isinstance(groups, (pd.Series, pd.Index)):
        values = groups
    else:
        values = np.asarray(groups)
        if values.dtype.kind in "iu" and len(values):
            # Small non-negative integers (split_manifest's group codes, or a subset of them): ranked through a
            # table of the values present, which gives the codes the general way below gives, without hashing.
            # Codes 0..G-1 that are all used are their own codes.
            low, high = int(values.min()), int(values.max())
            if low >= 0 and high < 4 * len(values):
                ints = values.astype(np.int64, copy=False)
                present = np.bincount(ints, minlength=high + 1) > 0
                if present.all():
                    return ints, high + 1
                return (np.cumsum(present) - 1)[ints], int(present.sum())
        if values.dtype.kind not in "iu":  # integer codes (from split_manifest) sort as they are; others as Python objects
            values = np.asarray(groups, dtype=object)
    # Hash first, then sort only the distinct values: codes follow the sorted group ids.
    codes, uniques = pd.factorize(values)
    order = np.argsort(uniques if isinstance(uniques, np.ndarray) and uniques.dtype.kind in "iu" else np.asarray(uniques, dtype=object), kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    codes = np.where(codes >= 0, rank[np.maximum(codes, 0)], -1)
    if (codes < 0).any():
        raise UsageError(f"{int((codes < 0).sum())} row(s) have no group; every row needs one", rows=int((codes < 0).sum()))
    return codes, len(uniques)


def _fixed_groups(groups: Any, fixed: np.ndarray | None) -> np.ndarray | None:
    """Per group, the part its pinned rows impose (-1 where free), from ``fixed`` per row."""
    if fixed is None:
        return None
    codes, n_groups = _group_codes(groups)
    fixed_groups = np.full(n_groups, -1, dtype=np.int64)
    pinned = np.asarray(fixed) >= 0
    fixed_groups[codes[pinned]] = np.asarray(fixed)[pinned]
    return fixed_groups


def _check_random_state(seed) -> np.random.RandomState:
    """A :class:`numpy.random.RandomState` from ``seed``, as ``sklearn.utils.check_random_state`` makes it.

    None (or the ``numpy.random`` module) gives numpy's global generator, an integer a
    new generator seeded with it, a RandomState itself; the draws are scikit-learn's,
    without importing scikit-learn (and scipy) for it.

    >>> _check_random_state(0).randint(1000) == np.random.RandomState(0).randint(1000)
    True
    >>> _check_random_state("a")
    Traceback (most recent call last):
    ...
    ValueError: 'a' cannot be used to seed a numpy.random.RandomState instance
    """
    if seed is None or seed is np.random:
        return np.random.mtrand._rand
    if isinstance(seed, numbers.Integral):
        return np.random.RandomState(seed)
    if isinstance(seed, np.random.RandomState):
        return seed
    raise ValueError(f"{seed!r} cannot be used to seed a numpy.random.RandomState instance")


class _GroupStratifier:
    """Shared machinery: labels and groups to one part index per row."""

    def _assign(self, y, groups, ratios, fixed_groups=None) -> np.ndarray:
        positives = _positives(y)
        codes, n_groups = _group_codes(groups)
        if len(codes) != len(positives):
            raise UsageError(f"y has {len(positives)} rows but groups has {len(codes)}")
        if n_groups < len(ratios):
            raise UsageError(
                f"{n_groups} group(s) cannot fill {len(ratios)} parts; use fewer parts or folds",
                groups=n_groups,
                parts=len(ratios),
            )
        sizes, counts = group_counts(positives, codes, n_groups)
        rng = _check_random_state(self.random_state)
        part = iterative_group_assignment(sizes, counts, ratios, rng, fixed_groups)
        return part[codes]

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({params})"


class MultilabelStratifiedGroupKFold(_GroupStratifier):
    """K-fold where no group crosses folds and every label is spread evenly.

    Parameters
    ----------
    n_splits : int, default 5
    random_state : int, RandomState or None
        Seed for tie-breaking; an int gives identical folds on every call.

    Examples
    --------
    >>> import numpy as np
    >>> y = np.array([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0], [0, 1]])
    >>> groups = ["a", "a", "b", "c", "d", "e"]
    >>> cv = MultilabelStratifiedGroupKFold(n_splits=2, random_state=0)
    >>> for train, test in cv.split(np.zeros(6), y, groups):
    ...     assert not set(np.array(groups)[train]) & set(np.array(groups)[test])
    >>> cv.get_n_splits()
    2
    """

    def __init__(self, n_splits: int = 5, *, random_state=None) -> None:
        self.n_splits = n_splits
        self.random_state = random_state

    def _params(self) -> dict:
        return {"n_splits": self.n_splits, "random_state": self.random_state}

    def get_n_splits(self, X=None, y=None, groups=None) -> int:
        return self.n_splits

    def assign(self, y, groups, fixed: np.ndarray | None = None) -> np.ndarray:
        """The fold (0..n_splits-1) of every row; ``fixed`` (per row, -1 where free) pins rows' groups."""
        if not isinstance(self.n_splits, (int, np.integer)) or self.n_splits < 2:
            raise UsageError(f"n_splits={self.n_splits!r}: k-fold needs at least 2 folds", n_splits=self.n_splits)
        return self._assign(y, groups, np.full(self.n_splits, 1.0 / self.n_splits), _fixed_groups(groups, fixed))

    def split(self, X, y=None, groups=None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(train, test)`` row indices for each fold."""
        if y is None:
            y = np.zeros((len(X), 0))
        folds = self.assign(y, groups)
        for k in range(self.n_splits):
            yield np.flatnonzero(folds != k), np.flatnonzero(folds == k)


class MultilabelStratifiedGroupSplit(_GroupStratifier):
    """One split into parts of given ratios (train/val/test), grouped and stratified.

    ``split`` yields, for each part after the first, ``(rows of the first part,
    rows of that part)``: with ``ratios=(0.7, 0.1, 0.2)`` that is (train, val) then
    (train, test).

    Examples
    --------
    >>> import numpy as np
    >>> s = MultilabelStratifiedGroupSplit(ratios=(0.5, 0.5), random_state=0)
    >>> s.assign(np.array([[1], [1], [0], [0]]), ["a", "b", "c", "d"]).tolist()
    [1, 0, 0, 1]
    """

    def __init__(self, ratios: Sequence[float] = (0.8, 0.2), *, random_state=None) -> None:
        self.ratios = ratios
        self.random_state = random_state

    def _params(self) -> dict:
        return {"ratios": self.ratios, "random_state": self.random_state}

    def get_n_splits(self, X=None, y=None, groups=None) -> int:
        return len(self.ratios) - 1

    def assign(self, y, groups, fixed: np.ndarray | None = None) -> np.ndarray:
        """The part index of every row; ``fixed`` (per row, -1 where free) pins rows' groups."""
        ratios = check_ratios(self.ratios)
        return self._assign(y, groups, ratios, _fixed_groups(groups, fixed))

    def split(self, X, y=None, groups=None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if y is None:
            y = np.zeros((len(X), 0))
        parts = self.assign(y, groups)
        first = np.flatnonzero(parts == 0)
        for j in range(1, len(self.ratios)):
            yield first, np.flatnonzero(parts == j)


# ----------------------------------------------------------------------------- quality


@dataclass(frozen=True)
class PartQuality:
    name: str
    images: int
    groups: int
    target_images: float
    positives: dict[str, int]
    prevalence: dict[str, float]
    deviation: dict[str, float]  # prevalence here minus prevalence overall

    @property
    def size_deviation(self) -> float:
        """Relative difference between images and target images."""
        return (self.images - self.target_images) / self.target_images if self.target_images else 0.0


@dataclass(frozen=True)
class SplitQuality:
    """How well a split preserves the label distribution (definitions in docs/split.md)."""

    kind: str  # "split" or "fold"
    parts: tuple[PartQuality, ...]
    labels: tuple[str, ...]
    overall_prevalence: dict[str, float]
    label_distribution: float
    examples_distribution: float
    max_prevalence_deviation: float
    zero_positive_pairs: int
    group_overlap: int

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "labels": list(self.labels),
            "overall_prevalence": self.overall_prevalence,
            "summary": {
                "label_distribution": self.label_distribution,
                "examples_distribution": self.examples_distribution,
                "max_prevalence_deviation": self.max_prevalence_deviation,
                "max_size_deviation": max((abs(p.size_deviation) for p in self.parts), default=0.0),
                "zero_positive_pairs": self.zero_positive_pairs,
                "group_overlap": self.group_overlap,
            },
            "parts": [
                {
                    "name": p.name,
                    "images": p.images,
                    "groups": p.groups,
                    "target_images": p.target_images,
                    "size_deviation": p.size_deviation,
                    "labels": {
                        l: {"positives": p.positives[l], "prevalence": p.prevalence[l], "deviation": p.deviation[l]} for l in self.labels
                    },
                }
                for p in self.parts
            ],
        }


def _proportion(pos: np.ndarray, total: np.ndarray) -> np.ndarray:
    neg = total - pos
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(neg > 0, pos / np.maximum(neg, 1), 0.0)


def _group_spread(groups: np.ndarray, part: np.ndarray, k: int) -> tuple[int, np.ndarray]:
    """Groups found in more than one of the ``k`` parts, and the distinct groups of each part.

    Integer codes 0..G-1 (split_manifest's) are counted in a (group, part) table; other group
    values through their distinct (group, part) pairs.

    >>> overlap, per_part = _group_spread(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), 2)
    >>> overlap, per_part.tolist()
    (1, [1, 3])
    >>> overlap, per_part = _group_spread(np.array(["a", "a", "b", "c"], dtype=object), np.array([0, 1, 1, 1]), 2)
    >>> overlap, per_part.tolist()
    (1, [1, 3])
    """
    if groups.dtype.kind in "iu" and len(groups) and int(groups.min()) >= 0 and int(groups.max()) < len(groups):
        table = np.zeros((int(groups.max()) + 1, k), dtype=bool)
        table[groups, part] = True
        return int((table.sum(axis=1) > 1).sum()), table.sum(axis=0).astype(np.int64)
    pairs = pd.DataFrame({"g": groups, "p": part}).drop_duplicates()
    overlap = int((pairs.groupby("g", sort=False).size() > 1).sum())
    return overlap, pairs.groupby("p").size().reindex(range(k), fill_value=0).to_numpy()


def split_quality(
    positives: np.ndarray,
    parts: np.ndarray,
    groups: np.ndarray,
    names: Sequence[str],
    ratios: Sequence[float],
    labels: Sequence[str],
    *,
    kind: str = "split",
) -> SplitQuality:
    """Measure a split: per part sizes, positives and prevalence; LD, ED and the rest.

    Rows with ``parts < 0`` (not in any part) are ignored.

    * LD (label distribution, Sechidis et al. 2011): the mean over labels and parts of
      ``|p_j/(n_j-p_j) - P/(N-P)|``, positives over negatives in part j against the whole.
    * ED (examples distribution): the mean over parts of ``|n_j - c_j|``, images against
      the target ``c_j = ratio_j * N``.
    * max prevalence deviation: the largest ``|prevalence_j - prevalence|`` of any label.
    * zero-positive pairs: (part, label) pairs with no positive although the label has some.
    * group overlap: groups found in more than one part (must be 0).
    """
    inside = parts >= 0
    if inside.all():  # every row is in a part: the arrays as they are, no copies
        pos, part, grp = positives, parts, np.asarray(groups)
    else:
        pos, part, grp = positives[inside], parts[inside], np.asarray(groups)[inside]
    k = len(names)
    n_total = len(part)
    label_totals = pos.sum(axis=0)
    overall = label_totals / n_total if n_total else np.zeros(len(labels))
    images = np.bincount(part, minlength=k)
    per_part = np.zeros((k, len(labels)), dtype=np.int64)
    for j in range(len(labels)):
        col = pos[:, j]
        # Indicators: the parts of the positive rows, counted (no float weight per row).
        per_part[:, j] = np.bincount(part[col], minlength=k) if col.dtype == bool else np.bincount(part, weights=col, minlength=k)
    with np.errstate(divide="ignore", invalid="ignore"):
        prevalence = np.where(images[:, None] > 0, per_part / np.maximum(images[:, None], 1), 0.0)
    deviation = prevalence - overall[None, :]
    ld = float(np.abs(_proportion(per_part, images[:, None]) - _proportion(label_totals, n_total)[None, :]).mean()) if len(labels) else 0.0
    targets = np.asarray(ratios, dtype=float) * n_total
    ed = float(np.abs(images - targets).mean())
    zero_pairs = int(((per_part == 0) & (label_totals[None, :] > 0)).sum())
    overlap, n_groups = _group_spread(grp, part, k)
    part_q = tuple(
        PartQuality(
            name=names[j],
            images=int(images[j]),
            groups=int(n_groups[j]),
            target_images=float(targets[j]),
            positives={l: int(per_part[j, i]) for i, l in enumerate(labels)},
            prevalence={l: float(prevalence[j, i]) for i, l in enumerate(labels)},
            deviation={l: float(deviation[j, i]) for i, l in enumerate(labels)},
        )
        for j in range(k)
    )
    return SplitQuality(
        kind=kind,
        parts=part_q,
        labels=tuple(labels),
        overall_prevalence={l: float(overall[i]) for i, l in enumerate(labels)},
        label_distribution=ld,
        examples_distribution=ed,
        max_prevalence_deviation=float(np.abs(deviation).max()) if deviation.size else 0.0,
        zero_positive_pairs=zero_pairs,
        group_overlap=overlap,
    )


# ----------------------------------------------------------------------------- manifests

#: Default part names by number of ratios.
DEFAULT_NAMES = {2: ("train", "test"), 3: ("train", "val", "test")}


@dataclass(frozen=True)
class SplitResult:
    """A split manifest and how good the split is."""

    manifest: Manifest
    split_quality: SplitQuality | None
    fold_quality: SplitQuality | None
    notes: tuple[str, ...] = ()
    #: Per binned ``stratify_by`` column: its width or edges and the rows in each stratum.
    bins: dict[str, dict] = field(default_factory=dict)
    #: The groups after ``links`` (None without links).
    links: Any = None
    #: Rows ``keep_existing`` moved out of their existing split or fold, to keep a group whole.
    moved: dict[str, int] = field(default_factory=dict)

    @property
    def quality(self) -> SplitQuality | None:
        """The quality of what was made: :attr:`split_quality` for a split, :attr:`fold_quality` for folds.

        When both were made (ratios and folds at once) it is the split's; ``fold_quality``
        still holds the folds'. None only when neither was computed.

        >>> import pandas as pd
        >>> from mdprep.manifest import Manifest
        >>> f = pd.DataFrame({"image_id": list("abcdefgh"), "path": list("abcdefgh"), "patient_id": list("aabbccdd"),
        ...                   "Edema": pd.array([1, 0, 1, 0, 1, 0, 1, 0], dtype="Int8")})
        >>> q = split_manifest(Manifest(f, labels=["Edema"]), ratios=(0.5, 0.5), seed=0).quality
        >>> q.kind, [p.name for p in q.parts], q.group_overlap
        ('split', ['train', 'test'], 0)
        """
        return self.split_quality if self.split_quality is not None else self.fold_quality

    def report(self) -> dict:
        """The JSON report (schema ``mdprep-split-report`` version 1, see docs/split.md)."""
        step = self.manifest.history[-1]
        return {
            "schema": "mdprep-split-report",
            "version": 1,
            "options": step["options"],
            "seed": step["seed"],
            "notes": list(self.notes),
            "stratify_bins": self.bins,
            **({"links": self.links.to_dict()} if self.links is not None else {}),
            **({"moved_rows": dict(self.moved)} if self.moved else {}),
            "split": self.split_quality.to_dict() if self.split_quality else None,
            "folds": self.fold_quality.to_dict() if self.fold_quality else None,
        }


#: The column binned without a bin spec (age in years, docs/manifest.md), and its bin width.
AGE_COLUMN = "age"
AGE_WIDTH = 10.0
#: A numeric ``stratify_by`` column without bins and with more distinct values than this warns.
MANY_VALUES = 20
MISSING_STRATUM = "missing"


@dataclass(frozen=True)
class Stratum:
    """One ``stratify_by`` item: a column, and its bins when it is binned.

    ``width`` gives bins ``[k*width, (k+1)*width)``; ``edges`` gives bins
    ``[e_i, e_i+1)`` plus ``<e_0`` and ``>=e_last`` for values outside them. Neither:
    one stratum per distinct value. Null values form the stratum ``missing``.
    """

    text: str
    column: str
    width: float | None = None
    edges: tuple[float, ...] | None = None

    @property
    def binned(self) -> bool:
        return self.width is not None or self.edges is not None

    def bin_options(self) -> dict:
        """The bins as recorded in the provenance: ``{"width": w}`` or ``{"edges": [...]}``."""
        return {"width": self.width} if self.width is not None else {"edges": list(self.edges or ())}


def stratify_by_items(values: Iterable[str | None]) -> list[str]:
    """Items of repeated, comma-separated ``--stratify-by`` values, keeping bin edges together.

    A number that follows a ``COL:...`` item in the same value is one more bin edge
    of that item.

    >>> stratify_by_items(["sex,age:0,18,65", "view", "bmi:5"])
    ['sex', 'age:0,18,65', 'view', 'bmi:5']
    """
    out: list[str] = []
    for value in values:
        start = len(out)
        for token in (t.strip() for t in (value or "").split(",")):
            if not token:
                continue
            if len(out) > start and ":" in out[-1] and _is_number(token):
                out[-1] += "," + token
            else:
                out.append(token)
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _fmt(x: float) -> str:
    return f"{x:.10g}"


def parse_stratum(text: str, columns: Sequence[str]) -> Stratum:
    """Parse one ``stratify_by`` item: ``COL``, ``COL:WIDTH`` or ``COL:EDGE,EDGE,...``.

    A name that is a column as a whole is that column, even with a colon in it.

    >>> parse_stratum("age:0,18,65", ["age"])
    Stratum(text='age:0,18,65', column='age', width=None, edges=(0.0, 18.0, 65.0))
    >>> parse_stratum("age:5", ["age"]).width
    5.0
    """
    if text in columns or ":" not in text:
        return Stratum(text, text)
    column, _, spec = text.rpartition(":")
    how = f"write {column}:WIDTH for bins WIDTH wide ({column}:10) or {column}:EDGE,EDGE,... for bin edges ({column}:0,18,65)"
    try:
        numbers = [float(x) for x in spec.split(",")]
    except ValueError:
        raise UsageError(f"--stratify-by {text!r}: {spec!r} is not a bin width or a list of bin edges; {how}", spec=text) from None
    if not all(np.isfinite(numbers)):
        raise UsageError(f"--stratify-by {text!r}: bins need finite numbers; {how}", spec=text)
    if len(numbers) == 1:
        if numbers[0] <= 0:
            raise UsageError(f"--stratify-by {text!r}: a bin width must be positive, for example {column}:10", spec=text)
        return Stratum(text, column, width=numbers[0])
    if any(b <= a for a, b in zip(numbers, numbers[1:])):
        raise UsageError(f"--stratify-by {text!r}: bin edges must increase, for example {column}:0,18,65", spec=text)
    return Stratum(text, column, edges=tuple(numbers))


def bin_values(values: pd.Series, *, width: float | None = None, edges: Sequence[float] | None = None) -> pd.Categorical:
    """Numeric values to ordered bins (nulls stay null); see :class:`Stratum`.

    >>> list(bin_values(pd.Series([3.0, 17.5, None]), width=10))
    ['[0, 10)', '[10, 20)', nan]
    >>> list(bin_values(pd.Series([-1, 0, 17, 18, 70]), edges=[0, 18, 65]))
    ['<0', '[0, 18)', '[0, 18)', '[18, 65)', '>=65']
    """
    v = values.to_numpy(dtype="float64", na_value=np.nan)
    null = np.isnan(v)
    if width is not None:
        k = np.floor(np.where(null, 0.0, v) / width)
        distinct = np.unique(k[~null])
        names = [f"[{_fmt(a * width)}, {_fmt((a + 1) * width)})" for a in distinct.tolist()]
        codes = np.searchsorted(distinct, k)
    else:
        e = np.asarray(edges, dtype=float)
        names = [f"<{_fmt(e[0])}"] + [f"[{_fmt(a)}, {_fmt(b)})" for a, b in zip(e[:-1].tolist(), e[1:].tolist())] + [f">={_fmt(e[-1])}"]
        codes = np.searchsorted(e, np.where(null, 0.0, v), side="right")
    return pd.Categorical.from_codes(np.where(null, -1, codes), categories=names, ordered=True)


def _resolve_strata(frame: pd.DataFrame, texts: Sequence[str], notes: list[str]) -> list[tuple[Stratum, pd.Series]]:
    """Parse and check the ``stratify_by`` items; each becomes its column's values or bins."""
    problems: list[str] = []
    strata: list[Stratum] = []
    for text in texts:
        try:
            strata.append(parse_stratum(text, list(frame.columns)))
        except UsageError as exc:
            problems.append(exc.message)

    def numeric(col: str) -> bool:
        dtype = frame[col].dtype
        return pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)

    problems += [
        f"--stratify-by {s.text!r}: column {s.column!r} holds {_dtype_text(frame[s.column])} values, not numbers, so it cannot be binned; "
        f"write --stratify-by {s.column} for one stratum per value"
        for s in strata
        if s.binned and s.column in frame.columns and not numeric(s.column)
    ]
    if problems:
        raise UsageError("; ".join(problems), specs=list(texts))
    absent = [s.column for s in strata if s.column not in frame.columns]
    if absent:
        raise MissingColumnError(absent, list(frame.columns), hint="choose --group and --stratify-by among them")
    out = []
    for s in strata:
        if not s.binned and s.column == AGE_COLUMN and numeric(s.column):
            s = Stratum(s.text, s.column, width=AGE_WIDTH)
        values = frame[s.column]
        if s.binned:
            binned = bin_values(values, width=s.width, edges=s.edges)
            out.append((s, pd.Series(binned, index=frame.index)))
            if s.edges is not None:
                v = values.to_numpy(dtype="float64", na_value=np.nan)
                outside = int(((v < s.edges[0]) | (v >= s.edges[-1])).sum())
                if outside:
                    notes.append(
                        f"{outside} row(s) have {s.column} outside [{_fmt(s.edges[0])}, {_fmt(s.edges[-1])}) "
                        f"and form the strata <{_fmt(s.edges[0])} and >={_fmt(s.edges[-1])}"
                    )
            continue
        if numeric(s.column):
            n = int(values.nunique())
            if n > MANY_VALUES:
                warnings.warn(
                    f"--stratify-by {s.column!r}: this numeric column has {n} distinct values, each its own stratum; "
                    f"bin it with {s.column}:WIDTH ({s.column}:10) or {s.column}:EDGE,EDGE,...",
                    MdprepWarning,
                    stacklevel=3,
                )
        out.append((s, values))
    return out


def _stratification_matrix(frame: pd.DataFrame, labels: Sequence[str], by: Sequence[tuple[str, pd.Series]]) -> tuple[np.ndarray, list[str]]:
    """Positive indicators of the labels, then one indicator per category of each ``by`` column.

    Categories follow their sorted order (a binned column: its bins in order); null
    values are one more category, ``missing``, last.
    """
    names = list(labels)
    strata = []
    for col, values in by:
        codes, cats = pd.factorize(values, sort=True)
        cat_names = [str(c) for c in cats]
        if (codes < 0).any():
            codes = np.where(codes < 0, len(cat_names), codes)
            cat_names.append(MISSING_STRATUM)
        strata.append((codes, len(cat_names)))
        names += [f"{col}={c}" for c in cat_names]
    # Filled in place, column by column: no block of indicators is ever copied into the matrix,
    # and a label is compared as it is stored (no float copy of it).
    matrix = np.zeros((len(frame), len(names)), dtype=bool)
    for j, label in enumerate(labels):
        matrix[:, j] = frame[label].eq(1).to_numpy(dtype=bool, na_value=False)
    start = len(labels)
    for codes, width in strata:
        matrix[np.arange(len(frame)), start + codes] = True
        start += width
    return matrix, names


def _rare_label_warnings(positives: np.ndarray, codes: np.ndarray, names: Sequence[str], parts: int, what: str) -> None:
    """Warn about labels (and strata) whose positives fall in fewer groups than there are parts.

    Up to three are named one warning each; more (a stratum per value of a many-valued
    column) make a single warning with examples, rather than a screenful.
    """
    rare = []
    n_groups = int(codes.max()) + 1 if len(codes) else 0
    for j, name in enumerate(names):
        # Groups holding a positive: a count per group of the positive rows' codes, not a sort of them.
        n = int(np.count_nonzero(np.bincount(codes[positives[:, j]], minlength=n_groups)))
        if 0 < n < parts:
            rare.append((name, n))
    if len(rare) > 3:
        shown = ", ".join(f"{name!r} in {n}" for name, n in rare[:5])
        warnings.warn(
            f"{len(rare)} labels or strata have positives in fewer groups than the {parts} {what}, so some {what} "
            f"will have none of them: {shown}{', ...' if len(rare) > 5 else ''}",
            MdprepWarning,
            stacklevel=3,
        )
        return
    for name, n in rare:
        warnings.warn(
            f"label {name!r} has positives in only {n} group(s), fewer than the {parts} {what}; "
            f"some {what} will have none",
            MdprepWarning,
            stacklevel=3,
        )


def split_manifest(
    manifest: Manifest,
    *,
    group: str = "patient_id",
    ratios: Sequence[float] | None = None,
    names: Sequence[str] | None = None,
    folds: int | None = None,
    seed: int = 0,
    stratify: Sequence[str] | None = None,
    stratify_by: Sequence[str] = (),
    keep_existing: bool = False,
    missing_group: str = "error",
    links: Sequence[str] = (),
    max_component: int | str | None = None,
    person_columns: Sequence[str] = PERSON_COLUMNS,
    inputs: Sequence[dict] = (),
) -> SplitResult:
    """Add a ``split`` column (by ``ratios``) and/or a ``fold`` column (``folds``) to a manifest.

    Groups (``group``, the patient by default) never cross parts; labels in
    ``stratify`` (default: all label columns) and the categories of the
    ``stratify_by`` columns are spread as evenly as the groups allow. A
    ``stratify_by`` item ``COL:WIDTH`` or ``COL:EDGE,EDGE,...`` bins a numeric column
    (see :func:`parse_stratum`); a numeric ``age`` column is binned in decades
    without one; nulls form the stratum ``missing``. With both
    ``ratios`` and ``folds``, the last part (the test set) is held out and the
    rows of the other parts are k-folded. With ``keep_existing``, rows that
    already have a split (and fold) keep it and pull the rest of their group
    along; a group whose rows already sit in two splits goes whole to the one
    holding most of them, so the fewest rows move.

    ``links`` (see :mod:`mdprep.linking`) joins groups that share a value of any
    link column (``study_id``, ``file_sha256``, ...), near-identical perceptual
    hashes (``phash`` or ``phash:T``) or the person columns (``same_person``), so
    nothing the leakage audit checks for those columns can cross parts. A merged
    component over ``max_component`` rows (default 1% of the rows, at least 100)
    is an error naming the link responsible.

    Parameters
    ----------
    manifest : Manifest
        The manifest to split (it must meet the contract).
    group : str
        Column whose values never cross parts (the patient).
    ratios : sequence of float, optional
        Share of the rows per part, summing to 1 (``(0.8, 0.2)``, ``(0.7, 0.1, 0.2)``).
    names : sequence of str, optional
        Part names (default ``train, test`` or ``train, val, test``).
    folds : int, optional
        Number of cross-validation folds (a ``fold`` column 0..K-1).
    seed : int
        Seed, 0 to 2**32-1: the same seed gives the same split.
    stratify : sequence of str, optional
        Labels to balance across parts (default: every label column).
    stratify_by : sequence of str
        Other columns to balance (``view``, ``sex``, ``age:10``, ``site:0,18,65``).
    keep_existing : bool
        Rows that already have a split (and fold) keep it.
    missing_group : {"error", "own"}
        A row without a ``group`` value: refused, or its own group.
    links : sequence of str
        Columns (or ``phash``, ``same_person``) that join groups (:mod:`mdprep.linking`).
    max_component : int or str, optional
        The largest group ``links`` may build (default 1% of the rows, at least 100).
    person_columns : sequence of str
        The columns ``same_person`` compares.
    inputs : sequence of dict
        Fingerprints of the files read, recorded in the history.

    Returns
    -------
    SplitResult
        ``manifest`` (with ``split`` and/or ``fold`` and a ``split`` step in its
        history), ``quality`` (the :class:`SplitQuality` of what was made; also
        ``split_quality`` and ``fold_quality``), ``notes`` and ``report()``.

    Raises
    ------
    ManifestValidationError
        ``manifest`` breaks the contract.
    UsageError
        Neither ``ratios`` nor ``folds``, ratios that are negative or do not sum to 1,
        fewer than 2 folds, groups too few for the parts, wrong ``names``, a bad
        ``stratify_by`` spec, ``max_component`` without ``links`` or a linked
        component larger than it.
    MissingColumnError
        ``group`` or a ``stratify_by`` column is not in the manifest.

    Examples
    --------
    >>> import pandas as pd
    >>> from mdprep.manifest import Manifest
    >>> f = pd.DataFrame({"image_id": list("abcdefgh"), "path": list("abcdefgh"),
    ...                   "patient_id": ["p1", "p1", "p2", "p3", "p4", "p5", "p6", "p7"],
    ...                   "Edema": pd.array([1, 1, 0, 1, 0, 0, 1, 0], dtype="Int8")})
    >>> r = split_manifest(Manifest(f, labels=("Edema",)), ratios=(0.5, 0.5), seed=0)
    >>> int(r.manifest.frame.groupby("patient_id")["split"].nunique().max())
    1
    >>> r.quality.group_overlap, sorted(r.manifest.frame["split"].unique())
    (0, ['test', 'train'])
    """
    check(manifest)
    seed = check_seed(seed)
    frame = manifest.frame
    if ratios is None and folds is None:
        ratios = (0.7, 0.1, 0.2)
    if missing_group not in MISSING_GROUP_POLICIES:
        raise UsageError(f"--missing-group {missing_group!r}: choose one of {', '.join(MISSING_GROUP_POLICIES)}")
    if group not in frame.columns:
        raise MissingColumnError([group], list(frame.columns), hint="choose --group and --stratify-by among them")
    made = resampled_rows(frame)
    if made:
        raise UsageError(
            f"the manifest holds {made:,} row(s) made by mdprep resample (clones with copy_index above 0, or synthetic rows); "
            "splitting it would put copies of training images into val and test: split the manifest first, then resample its train rows"
        )
    labels = list(manifest.labels) if stratify is None else list(stratify)
    not_labels = [l for l in labels if l not in manifest.labels]
    if not_labels:
        raise UsageError(
            f"--stratify {', '.join(map(repr, not_labels))}: not label columns of this manifest; "
            f"its labels are {', '.join(map(repr, manifest.labels)) or 'none'} (use --stratify-by for metadata columns)"
        )
    if folds is not None and (not isinstance(folds, (int, np.integer)) or folds < 2):
        raise UsageError(f"--folds {folds!r}: k-fold needs at least 2 folds")
    notes: list[str] = []
    strata = _resolve_strata(frame, list(stratify_by), notes)

    group_values = frame[group]
    if not _arrow_text(group_values):  # text kept in Arrow (as read_manifest(arrow_text=True) gives it) is used as it is
        group_values = group_values.astype("str")
    missing = group_values.isna().to_numpy()
    if missing.any():
        group_values = group_values.astype("str")
        if missing_group == "error":
            raise UsageError(
                f"{int(missing.sum())} row(s) have no {group}; fill it in, or pass --missing-group own "
                "to make each such row a group of its own",
                rows=int(missing.sum()),
            )
        group_values = group_values.where(~missing, "\x00row:" + pd.Series(np.arange(len(frame)), index=frame.index).astype("str"))
        notes.append(f"{int(missing.sum())} row(s) without {group} became groups of their own (--missing-group own)")
    link_list = list(links)
    degenerate = degenerate_grouping(frame, group)
    if degenerate and not (degenerate["column"] and degenerate["column"] in link_list):
        warnings.warn(
            visible(f"degenerate grouping: {degenerate['message']}; the split keeps no patient's images together, "
                    f"so it does not prevent patient leakage: {degenerate['hint']}"),
            MdprepWarning,
            stacklevel=2,
        )
    # On the Arrow text itself (no Python string per row). The distinct ids stay in Arrow too: messages
    # name a few of them (uniques[g] is a Python string), and --link takes them as Python strings.
    codes, uniques = pd.factorize(group_values, sort=True)
    _release_arrow_memory()  # the hash table of the distinct ids, which Arrow's allocator would keep otherwise
    if missing.any():  # as messages show them
        uniques = np.array([f"row {u[5:]} (no {group})" if u.startswith("\x00row:") else u for u in uniques.tolist()], dtype=object)
    if max_component is not None and not link_list:
        raise UsageError("--max-component limits the groups --link builds; it has no effect without --link")
    linked = None
    if link_list:
        from .linking import link_groups, parse_links

        parsed = parse_links(link_list, list(frame.columns), person_columns=person_columns)
        linked = link_groups(frame, codes, np.asarray(uniques, dtype=object), parsed, max_component=max_component)
        codes, uniques = linked.codes, linked.names
        notes += [*linked.notes, f"--link {','.join(link_list)}: {linked.summary(group)}"]
        parts_needed = max(len(ratios) if ratios is not None else 0, folds or 0)
        if linked.components < parts_needed:
            raise UsageError(
                f"--link {','.join(link_list)} joined the {linked.groups:,} {group} values into {linked.components:,} group(s), "
                f"too few for {parts_needed} parts or folds; the links join too much: drop the link with most joins "
                f"({max(linked.per_link, key=lambda t: linked.per_link[t]['joins'])}) or check its values",
                groups=linked.components,
            )
    moved: dict[str, int] = {}
    # With keep_existing: each row's existing fold (-1 where none), when the folds can be kept.
    kept_folds = _usable_folds(frame, folds) if keep_existing and folds is not None else None
    positives, strat_names = _stratification_matrix(frame, labels, [(st.column, values) for st, values in strata])

    out = frame.copy(deep=False)  # copy-on-write: the columns added or changed below never touch the input
    split_q = fold_q = None
    eligible = np.ones(len(frame), dtype=bool)
    if ratios is not None:
        ratios_arr = check_ratios(ratios)
        names = list(names) if names is not None else list(DEFAULT_NAMES.get(len(ratios_arr), [f"part{i}" for i in range(len(ratios_arr))]))
        if len(names) != len(ratios_arr) or len(set(names)) != len(names):
            raise UsageError(f"--names {','.join(names)} must give {len(ratios_arr)} distinct names, one per ratio")
        fixed = None  # per row, the part its group is pinned to (-1 where free); None: no row is pinned
        if "split" in frame.columns and frame["split"].notna().any():
            if keep_existing:
                split_rows = _split_indices(frame["split"], names)
                if kept_folds is not None:  # both kept: choose each torn group's (split, fold) together
                    split_rows, kept_folds = _joint_majority(split_rows, kept_folds, len(names), folds, codes, uniques, notes, moved)
                fixed, moved_split = _resolve_fixed(split_rows, len(names), codes, uniques, notes, "split")
                moved["split"] = moved.get("split", 0) + moved_split
            else:
                warnings.warn("the manifest already has a split column; it is replaced (--keep-existing keeps it)", MdprepWarning, stacklevel=2)
        _rare_label_warnings(positives, codes, strat_names, len(ratios_arr), "parts")
        splitter = MultilabelStratifiedGroupSplit(ratios=tuple(ratios_arr), random_state=seed)
        parts = splitter.assign(positives, codes, fixed=fixed if fixed is not None and (fixed >= 0).any() else None)
        fixed = None  # done with
        split_q = split_quality(positives, parts, codes, names, ratios_arr, strat_names, kind="split")
        _assert_no_overlap(split_q)
        if folds is None:
            positives = None  # done with: let it go before the split column is built
        out["split"] = _named_parts(names, parts, frame.index)
        unchanged = keep_existing and "split" in frame.columns and bool((frame["split"].astype("str") == out["split"]).fillna(False).all())
        if folds is None and "fold" in out.columns and out["fold"].notna().any() and not unchanged:
            # Folds of an earlier split do not fit the new split: drop them rather than keep them stale.
            out = out.drop(columns=["fold"])
            warnings.warn("the manifest's fold column belonged to an earlier split and was dropped; pass --folds to assign new folds", MdprepWarning, stacklevel=2)
        if folds is not None:
            eligible = parts != len(names) - 1
            notes.append(f"folds cover the {', '.join(names[:-1])} rows; {names[-1]} is held out")
        parts = None  # in the split column now
    elif "split" in frame.columns and frame["split"].notna().any():
        # --folds alone folds every row: a split column of an earlier split would contradict the folds.
        out = out.drop(columns=["split"])
        warnings.warn(
            "the manifest's split column belonged to an earlier split and was dropped: --folds alone folds every row; "
            "pass --ratios with --folds to hold out a test part (with --keep-existing to keep the existing one)",
            MdprepWarning,
            stacklevel=2,
        )
    if folds is not None:
        if not eligible.any():
            raise UsageError(f"no row is left to fold: every row is in the held-out part {names[-1]!r}; give it fewer rows or hold out nothing")
        # The rows to fold; None when that is every row (no held-out part): then the arrays themselves, not copies.
        sub = None if eligible.all() else np.flatnonzero(eligible)
        pos_sub, codes_sub = (positives, codes) if sub is None else (positives[sub], codes[sub])
        n_sub_groups = int(np.count_nonzero(np.bincount(codes_sub)))  # distinct groups, counted without a sort
        if n_sub_groups < folds:
            raise UsageError(f"{n_sub_groups} group(s) cannot fill {folds} folds; use fewer folds")
        _rare_label_warnings(pos_sub, codes_sub, strat_names, folds, "folds")
        cv = MultilabelStratifiedGroupKFold(n_splits=folds, random_state=seed)
        fixed_folds = None
        if kept_folds is not None:
            fixed_folds, moved_fold = _resolve_fixed(kept_folds if sub is None else kept_folds[sub], folds, codes_sub, uniques, notes, "fold")
            moved["fold"] = moved.get("fold", 0) + moved_fold
            kept_folds = None  # in fixed_folds now
        assigned = cv.assign(pos_sub, codes_sub, fixed=fixed_folds)
        del pos_sub, codes_sub, fixed_folds
        if sub is None:
            fold_of = assigned
        else:
            fold_of = np.full(len(frame), -1, dtype=np.int64)
            fold_of[sub] = assigned
        del assigned
        fold_q = split_quality(positives, fold_of, codes, [f"fold {k}" for k in range(folds)], np.full(folds, 1.0 / folds), strat_names, kind="fold")
        _assert_no_overlap(fold_q)
        held_out = fold_of < 0
        values = fold_of.astype(np.int16)
        values[held_out] = 0
        out["fold"] = pd.arrays.IntegerArray(values, held_out)  # Int16, null in the held-out part
    options = {
        "group": group,
        "ratios": None if ratios is None else [float(r) for r in ratios],
        "names": None if ratios is None else list(names),
        "folds": folds,
        "stratify": labels,
        "stratify_by": list(stratify_by),
        "stratify_bins": {st.column: st.bin_options() for st, _ in strata if st.binned},
        "keep_existing": keep_existing,
        "missing_group": missing_group,
    }
    if linked is not None:  # only then: a split without links keeps the bytes it always had
        options["links"] = link_list
        options["max_component"] = linked.max_component
        if any(l.kind == "same_person" for l in linked.links):
            options["person_columns"] = list(person_columns)
    result = manifest.with_frame(order_columns(out, manifest.labels)).with_step(provenance_step("split", options, inputs, seed=seed))
    bins = {}
    for st, values in strata:
        if st.binned:
            counts = values.value_counts(sort=False, dropna=False)
            rows = {str(k): int(v) for k, v in counts.items() if not pd.isna(k) and v}
            if values.isna().any():
                rows[MISSING_STRATUM] = int(values.isna().sum())
            bins[st.column] = {**st.bin_options(), "rows": rows}
    return SplitResult(manifest=result, split_quality=split_q, fold_quality=fold_q, notes=tuple(notes), bins=bins, links=linked, moved=moved)


def _named_parts(names: Sequence[str], parts: np.ndarray, index: pd.Index) -> pd.Series:
    """The ``split`` column: each row's part name, as text (``str``), built in Arrow (no Python string per row).

    >>> _named_parts(["train", "test"], np.array([1, 0, 0]), pd.RangeIndex(3)).tolist()
    ['test', 'train', 'train']
    """
    import pyarrow as pa

    text = pa.array(list(names), type=pa.large_string()).take(pa.array(parts))
    return pd.Series(pd.array(text, dtype="str"), index=index)


def _split_indices(existing: pd.Series, names: Sequence[str]) -> np.ndarray:
    """Per row, the index in ``names`` of its existing split (-1 where it has none)."""
    values = existing.astype("str")
    given = values.notna().to_numpy()
    unknown = sorted(set(values[given]) - set(names))
    if unknown:
        raise UsageError(
            f"existing split values {examples_text(unknown, len(unknown))} are not among --names {','.join(names)}; "
            "add them to --names (with a ratio each)"
        )
    index = {n: i for i, n in enumerate(names)}
    return np.where(given, values.map(index).fillna(-1).to_numpy(dtype=np.int64), -1)


def _usable_folds(frame: pd.DataFrame, folds: int) -> np.ndarray | None:
    """Per row, its existing fold (-1 where none), or None when there is none or it cannot be kept (a warning)."""
    if "fold" not in frame.columns or not frame["fold"].notna().any():
        return None
    values = pd.to_numeric(frame["fold"], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    given = ~np.isnan(values)
    bad = given & ((values < 0) | (values >= folds) | (values != np.floor(values)))
    if bad.any():
        warnings.warn(
            f"the existing fold column holds values outside 0..{folds - 1}, so it cannot be kept with --folds {folds}; every fold is reassigned",
            MdprepWarning,
            stacklevel=3,
        )
        return None
    return np.where(given, np.nan_to_num(values), -1).astype(np.int64)


def _joint_majority(
    split_rows: np.ndarray, fold_rows: np.ndarray, parts: int, folds: int, codes: np.ndarray, uniques: np.ndarray, notes: list[str], moved: dict
) -> tuple[np.ndarray, np.ndarray]:
    """Resolve groups torn across existing splits or folds by the (split, fold) that keeps most of their rows.

    The last part is held out and has no folds: a row there keeps its place whatever
    its fold. A row of the chosen split without a fold keeps its place too. Deciding
    split and fold together moves fewer rows than the split first, then the fold (a
    group with 2 + 2 rows in two folds of train and 3 in test keeps 3 in test, not 2).
    Ties go to the later split, then the lower fold. Returns the rows' splits and folds
    with every torn group pinned whole to its choice (rows without a split stay free).
    """
    held = parts - 1
    given = split_rows >= 0
    fold_of = np.where(given & (split_rows != held), fold_rows, -1)  # folds of held-out rows do not count
    width = folds + 1
    state = split_rows * width + fold_of + 1  # (split, fold or none)
    pairs, counts = np.unique(np.stack([codes[given], state[given]], axis=1), axis=0, return_counts=True)
    if not len(pairs):
        return split_rows, fold_rows
    g, st = pairs[:, 0], pairs[:, 1]
    sp, fo = st // width, st % width - 1
    # A group is torn when it has two splits, or two folds within one split.
    n_splits = pd.Series(sp).groupby(g).nunique()
    n_folds = pd.Series(fo[fo >= 0]).groupby([g[fo >= 0], sp[fo >= 0]]).nunique()
    torn = set(n_splits.index[n_splits.to_numpy() > 1].tolist()) | {k[0] for k, v in n_folds.items() if v > 1}
    if not torn:
        return split_rows, fold_rows
    torn_ids = np.array(sorted(torn), dtype=np.int64)
    pos = np.searchsorted(torn_ids, g)
    sel = (pos < len(torn_ids)) & (torn_ids[np.minimum(pos, len(torn_ids) - 1)] == g)
    dense = np.zeros((len(torn_ids), parts, width), dtype=np.int64)
    dense[pos[sel], sp[sel], fo[sel] + 1] = counts[sel]
    kept = dense[:, :, 1:] + dense[:, :, :1]  # (split, fold): its rows in that fold and its rows of that split without a fold
    kept[:, held, :] = dense[:, held, :].sum(axis=1)[:, None]
    # Ties: the later split first, then the lower fold.
    flat = kept[:, ::-1, :].reshape(len(torn_ids), -1)
    best = flat.argmax(axis=1)
    choose_split = parts - 1 - best // folds
    choose_fold = np.where(choose_split == held, -1, best % folds)
    total = dense.sum(axis=(1, 2))
    moved_rows = int((total - kept[np.arange(len(torn_ids)), choose_split, np.maximum(choose_fold, 0)]).sum())
    row_pos = np.searchsorted(torn_ids, codes)
    in_torn = (row_pos < len(torn_ids)) & (torn_ids[np.minimum(row_pos, len(torn_ids) - 1)] == codes) & given
    new_split, new_fold = split_rows.copy(), fold_rows.copy()
    moved_split = int((in_torn & (split_rows != choose_split[np.minimum(row_pos, len(torn_ids) - 1)])).sum())
    new_split[in_torn] = choose_split[row_pos[in_torn]]
    new_fold[in_torn] = choose_fold[row_pos[in_torn]]
    moved["split"] = moved.get("split", 0) + moved_split
    moved["fold"] = moved.get("fold", 0) + moved_rows - moved_split
    _report_torn(torn_ids, moved_rows, uniques, "split and fold", "splits or folds", notes)
    return new_split, new_fold


def _report_torn(torn: np.ndarray, moved: int, uniques: np.ndarray, what: str, where: str, notes: list[str]) -> None:
    """Warn (naming some groups) and note that ``torn`` groups went whole to where most of their rows were."""
    ids = [str(uniques[g]) for g in torn[:5]]
    warnings.warn(
        f"{len(torn)} group(s) had rows in two or more existing {where}; each went whole to the {what} holding most of its rows, "
        f"moving {moved} row(s): {examples_text(ids, len(torn))}",
        MdprepWarning,
        stacklevel=5,
    )
    notes.append(f"{moved:,} row(s) of {len(torn):,} group(s) torn across existing {where} moved to their group's main {what} (--keep-existing)")


def _resolve_fixed(fixed_rows: np.ndarray, k: int, codes: np.ndarray, uniques: np.ndarray, notes: list[str], what: str) -> tuple[np.ndarray, int]:
    """Per row, the part its group is pinned to (-1 where free), and how many pinned rows had to move.

    A group with rows pinned to two parts goes whole to the part holding most of
    them (ties: the later part, so an official test list stays whole), so the fewest rows move; free rows of a pinned
    group follow it. Both are warned about, naming the groups.
    """
    given = fixed_rows >= 0
    n_groups = len(uniques)
    counts = np.bincount(codes[given] * k + fixed_rows[given], minlength=n_groups * k).reshape(n_groups, k)
    n_parts = (counts > 0).sum(axis=1)
    # Ties go to the later part: the held-out test set, listed last, keeps its rows.
    group_part = np.where(n_parts > 0, k - 1 - counts[:, ::-1].argmax(axis=1), -1)
    torn = np.flatnonzero(n_parts > 1)
    moved = 0
    if len(torn):
        moved = int(counts[torn].sum() - counts[torn, group_part[torn]].sum())
        _report_torn(torn, moved, uniques, what, f"{what}s", notes)
    pulled = (group_part[codes] >= 0) & ~given
    if pulled.any():
        pulled_groups = np.unique(codes[pulled])
        ids = [str(uniques[g]) for g in pulled_groups[:5]]
        warnings.warn(
            f"{len(pulled_groups)} group(s) straddle a fixed {what} and were pulled into it ({int(pulled.sum())} row(s)): "
            f"{examples_text(ids, len(pulled_groups))}",
            MdprepWarning,
            stacklevel=4,
        )
        notes.append(f"{int(pulled.sum()):,} row(s) of {len(pulled_groups):,} group(s) were pulled into their group's fixed {what}")
    notes.append(f"{int(given.sum()) - moved:,} row(s) kept their existing {what} (--keep-existing)")
    return group_part[codes], moved


def _assert_no_overlap(quality: SplitQuality) -> None:
    if quality.group_overlap:
        raise RuntimeError(
            f"internal error: {quality.group_overlap} group(s) ended up in two {quality.kind}s; "
            "this is a bug in mdprep, please report it with the manifest's shape and the options"
        )

"""Leakage checks between the splits (and folds) of manifests.

Touches DataFrames only: the checks run on manifest columns, with no image access
(content hashes come from ``mdprep hash``). Every check is a function that
returns a :class:`CheckResult` (plain data); :func:`audit` runs them all and
collects every finding before anything is reported, and
:attr:`AuditReport.exit_code` decides the exit code in one place:
0 clean, 1 leakage found or a required check could not fully run.

No false green: the verdict says how many checks ran and why the others were
skipped, a check named in ``require`` fails the gate when it could not look at
every row, and a degenerate grouping (one image per patient) is reported.
Every report format escapes what it quotes (see :func:`visible`).

The module is callable: ``mdprep.audit(frame)`` runs :func:`audit`, so ``mdprep.audit``
is both this module and the package's entry point (docs/api.md).
"""

from __future__ import annotations

import inspect
import itertools
import json
import os
import re
import sys
import types
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .choices import ALL_CHECKS, PERSON_COLUMNS, VALUE_CHECKS
from .errors import InputError, MdprepWarning, MissingColumnError, UsageError, examples_text, short_repr
from .fileio import decodable
from . import textkeys
from .manifest import Manifest
from .params import check_number

#: What each check catches, for reports.
DESCRIPTIONS: dict[str, str] = {
    "image_overlap": "the same image id in two splits",
    "patient_overlap": "the same patient (group) in two splits",
    "study_overlap": "the same StudyInstanceUID in two splits, whatever the patient id",
    "series_overlap": "the same SeriesInstanceUID in two splits",
    "instance_overlap": "the same SOPInstanceUID in two splits",
    "accession_overlap": "the same accession number in two splits",
    "duplicate_file": "byte-identical files in two splits",
    "duplicate_pixels": "identical decoded pixels (same image re-encoded or re-wrapped) in two splits",
    "near_duplicate": "perceptual hashes within the Hamming threshold in two splits",
    "same_person": "different patient ids in two splits sharing birth date, sex and the like (may be chance)",
    "temporal": "validation or test images dated before the latest training image",
}
#: Checks that warn but do not fail the gate unless named in ``fail_on``.
WARNING_CHECKS = frozenset({"same_person"})
FINDING_COLUMNS = ["key", "splits", "rows", "image_ids", "detail"]
#: Why a check could not run, as grouped in the verdict line.
SKIP_KINDS = ("no column", "empty column", "no dated train rows")
#: Columns that group images (a study, a series): when they do while every patient
#: holds a single image, the patient column is not a grouping (see :func:`degenerate_grouping`).
GROUPING_COLUMNS = ("study_id", "series_uid")


@dataclass(frozen=True)
class CheckResult:
    """What one check found in one partition (``split`` or ``fold``).

    ``findings`` has one row per leaking value (a patient id, a hash, a pair of
    near-duplicate images): its ``key``, the ``splits`` involved, the ``rows``
    affected, their ``image_ids``, a ``detail`` and whether it is ``allowed``.
    ``pairs`` sums them per pair of splits. Rows the check could not look at (no
    value in its column) are counted in ``unchecked_rows``, never passed silently.
    A skipped check says why in ``reason`` and ``skip_kind`` (one of
    :data:`SKIP_KINDS`). ``caveat`` says why a pass means less than it seems (a
    degenerate grouping). ``required`` checks fail the gate unless ``complete``.
    """

    check: str
    partition: str
    status: str  # "passed", "failed", "warning", "skipped"
    severity: str  # "error" or "warning"
    findings: pd.DataFrame
    pairs: pd.DataFrame
    checked_rows: int
    unchecked_rows: int
    reason: str = ""
    gate: bool = True
    skip_kind: str = ""
    required: bool = False
    caveat: str = ""

    @property
    def blocking(self) -> pd.DataFrame:
        """Findings that are not on the allow list."""
        if self.findings.empty:
            return self.findings
        return self.findings[~self.findings["allowed"]]

    @property
    def fails_gate(self) -> bool:
        """Whether this result fails the gate: a gating check with findings not on the allow list."""
        return self.gate and self.status in ("failed", "warning") and not self.blocking.empty

    @property
    def complete(self) -> bool:
        """Whether the check ran on every row with nothing to qualify its result."""
        return self.status != "skipped" and self.unchecked_rows == 0 and not self.caveat

    @property
    def incomplete_reason(self) -> str:
        """Why the check did not fully run ("" when it did)."""
        if self.status == "skipped":
            return f"skipped, {self.reason}"
        reasons = []
        if self.unchecked_rows:
            reasons.append(f"{self.unchecked_rows} row(s) unchecked (no value)")
        if self.caveat:
            reasons.append(self.caveat)
        return "; ".join(reasons)

    @property
    def unmet(self) -> bool:
        """Whether this is a required check that could not fully run (fails the gate)."""
        return self.required and not self.complete

    @property
    def verdict(self) -> str:
        """What a person sees: failed (fails the gate), warning (findings that do not), passed or skipped."""
        if self.fails_gate or self.unmet:
            return "failed"
        if self.status == "skipped":
            return "skipped"
        return "warning" if not self.blocking.empty else "passed"

    def to_dict(self) -> dict:
        return {
            "check": self.check,
            "verdict": self.verdict,
            "partition": self.partition,
            "description": DESCRIPTIONS[self.check],
            "status": self.status,
            "severity": self.severity,
            "gate": self.gate,
            "checked_rows": self.checked_rows,
            "unchecked_rows": self.unchecked_rows,
            "reason": self.reason,
            "skip_kind": self.skip_kind,
            "caveat": self.caveat,
            "required": self.required,
            "complete": self.complete,
            "pairs": [
                {"splits": [a, b], "shared": int(s), "rows": int(r)}
                for a, b, s, r in self.pairs[["split_a", "split_b", "shared", "rows"]].itertuples(index=False)
            ],
            "findings": [
                {
                    "key": str(k),
                    "splits": list(sp),
                    "rows": int(r),
                    "image_ids": list(ids),
                    "detail": d,
                    "allowed": bool(a),
                }
                for k, sp, r, ids, d, a in self.findings[FINDING_COLUMNS + ["allowed"]].itertuples(index=False)
            ],
        }


def _empty_findings() -> pd.DataFrame:
    return pd.DataFrame({"key": pd.Series([], dtype=object), "splits": [], "rows": pd.Series([], dtype="int64"),
                         "image_ids": [], "detail": pd.Series([], dtype=object), "allowed": pd.Series([], dtype=bool)})


def _empty_pairs() -> pd.DataFrame:
    return pd.DataFrame({"split_a": [], "split_b": [], "shared": pd.Series([], dtype="int64"), "rows": pd.Series([], dtype="int64")})


def _result(check, partition, findings, pairs, checked, unchecked, severity="error") -> CheckResult:
    if findings.empty:
        status = "passed"
    else:
        status = "warning" if severity == "warning" else "failed"
    return CheckResult(check, partition, status, severity, findings, pairs, checked, unchecked)


def skipped(check: str, partition: str, reason: str, rows: int, kind: str = "no column") -> CheckResult:
    """A check that could not run: every row unchecked, ``reason`` for people, ``kind`` (:data:`SKIP_KINDS`) for counts."""
    severity = "warning" if check in WARNING_CHECKS else "error"
    return CheckResult(check, partition, "skipped", severity, _empty_findings(), _empty_pairs(), 0, rows, reason, skip_kind=kind)


# ----------------------------------------------------------------------------- checks


def _pairs_from_matrix(counts: np.ndarray, names: Sequence[str]) -> pd.DataFrame:
    """Shared keys and affected rows per pair of splits from a (keys x splits) row-count matrix."""
    out = []
    for a, b in itertools.combinations(range(len(names)), 2):
        both = (counts[:, a] > 0) & (counts[:, b] > 0)
        if both.any():
            out.append((names[a], names[b], int(both.sum()), int(counts[both, a].sum() + counts[both, b].sum())))
    return pd.DataFrame(out, columns=["split_a", "split_b", "shared", "rows"]) if out else _empty_pairs()


def _pairs_from_findings(findings: pd.DataFrame) -> pd.DataFrame:
    """Findings and rows per pair of splits, counting a finding once for each pair it spans."""
    totals: dict[tuple[str, str], list[int]] = {}
    for splits, rows in zip(findings["splits"], findings["rows"]):
        for a, b in itertools.combinations(sorted(splits), 2):
            entry = totals.setdefault((a, b), [0, 0])
            entry[0] += 1
            entry[1] += int(rows)
    if not totals:
        return _empty_pairs()
    return pd.DataFrame([(a, b, n, r) for (a, b), (n, r) in sorted(totals.items())], columns=["split_a", "split_b", "shared", "rows"])


def value_overlap(frame: pd.DataFrame, column: str, *, split_col: str = "split", check: str | None = None, partition: str = "split") -> CheckResult:
    """Values of ``column`` found in more than one split.

    Vectorised: values and splits are factorised to integers once, then counted
    with numpy, so a million rows take a fraction of a second. A large text column is
    first narrowed through hashes of its values (:func:`mdprep.textkeys.spanning`, shared
    with the contract's duplicate check): only the rows of values that may occur in two
    splits are factorised, and the result is the same as from all rows.

    Examples
    --------
    >>> f = pd.DataFrame({"image_id": ["a", "b", "c"], "patient_id": ["p", "p", "q"], "split": ["train", "test", "test"]})
    >>> r = value_overlap(f, "patient_id", check="patient_overlap")
    >>> r.status, r.findings["key"].tolist(), r.findings["splits"].tolist()
    ('failed', ['p'], [('test', 'train')])
    """
    check = check or f"{column}_overlap"
    if column not in frame.columns:
        return skipped(check, partition, f"no {column!r} column", len(frame))
    if frame[split_col].isna().any():  # rows in no split are in no pair of splits (audit() leaves them out first)
        frame = frame[frame[split_col].notna()]
        if frame.empty:
            return skipped(check, partition, f"no row has a {split_col}", 0, "empty column")
    values = frame[column]
    present = values.notna().to_numpy()
    unchecked = int((~present).sum())
    if not present.any():
        return skipped(check, partition, f"{column!r} is empty in every row", len(frame), "empty column")
    checked = int(present.sum())
    # A value seen in one split cannot leak: keep the rows of those that may be in two. Each
    # leaking value keeps all its rows, in their order, so what follows finds the same leaks.
    split_codes = textkeys.codes(frame[split_col])
    candidates = textkeys.spanning(values, np.where(present, split_codes, split_codes.dtype.type(-1)))
    rows = present if candidates is None else candidates
    if not rows.any():
        return _result(check, partition, _empty_findings(), _empty_pairs(), checked, unchecked)
    # Column by column: a Series masks Arrow data chunk by chunk, a whole frame would take() it.
    every = rows.all()
    rows_frame = pd.DataFrame({c: frame[c] if every else frame[c][rows] for c in dict.fromkeys([column, split_col, "image_id"])})
    return overlap_result(rows_frame, column, split_col=split_col, check=check, partition=partition, checked=checked, unchecked=unchecked)


def overlap_result(
    rows: pd.DataFrame, column: str, *, split_col: str, check: str, partition: str, checked: int, unchecked: int
) -> CheckResult:
    """The result of :func:`value_overlap` from the rows that may leak.

    ``rows`` holds ``column`` (no nulls), ``split_col`` (no nulls) and ``image_id`` of every
    row of each value that may occur in two splits, in their order (more rows do no harm);
    ``checked`` and ``unchecked`` count the rows of the whole partition with and without a
    value. The scan of large manifest files (:mod:`mdprep.auditscan`) calls it with the rows
    its hashes picked.
    """
    vcodes, vuniq = pd.factorize(rows[column], sort=False)
    scodes, snames = pd.factorize(rows[split_col], sort=True)
    n_splits = len(snames)
    combo = vcodes.astype(np.int64) * n_splits + scodes
    uniq_combo, combo_rows = np.unique(combo, return_counts=True)
    key_of = uniq_combo // n_splits
    splits_per_key = np.bincount(key_of, minlength=len(vuniq))
    leaking = np.flatnonzero(splits_per_key > 1)
    if len(leaking) == 0:
        return _result(check, partition, _empty_findings(), _empty_pairs(), checked, unchecked)
    # Rows per (leaking key, split) as a dense matrix: leaking keys are few next to all keys.
    position = np.full(len(vuniq), -1, dtype=np.int64)
    position[leaking] = np.arange(len(leaking))
    sel = position[key_of] >= 0
    matrix = np.zeros((len(leaking), n_splits), dtype=np.int64)
    matrix[position[key_of[sel]], (uniq_combo % n_splits)[sel]] = combo_rows[sel]
    pairs = _pairs_from_matrix(matrix, list(map(str, snames)))
    row_sel = np.isin(vcodes, leaking)
    ids = rows["image_id"].to_numpy()[row_sel]
    keys = vcodes[row_sel]
    order = np.argsort(keys, kind="stable")
    bounds = np.searchsorted(keys[order], leaking)
    id_lists = np.split(ids[order], bounds[1:])
    split_names = np.asarray([str(s) for s in snames], dtype=object)
    findings = pd.DataFrame(
        {
            # object, like _empty_findings: a key is any str (Arrow strings refuse lone surrogates).
            "key": pd.Series([str(v) for v in np.asarray(vuniq, dtype=object)[leaking]], dtype=object),
            "splits": [tuple(split_names[row > 0]) for row in matrix],
            "rows": matrix.sum(axis=1),
            "image_ids": [list(map(str, x)) for x in id_lists],
            "detail": [""] * len(leaking),
            "allowed": np.zeros(len(leaking), dtype=bool),
        }
    )
    return _result(check, partition, findings, pairs, checked, unchecked)


def _band_keys(hashes: np.ndarray, threshold: int) -> Iterable[np.ndarray]:
    """Keys such that two hashes within ``threshold`` bits share at least one key.

    The 64 bits are cut into ``threshold + 2`` bands; two hashes that differ in at
    most ``threshold`` bits agree exactly on at least two bands (pigeonhole), so one
    key per pair of bands finds every such pair. Keys of about 2 * 64 / (t + 2) bits
    keep buckets small for a million hashes at the default threshold of 4.
    """
    n_bands = threshold + 2
    edges = np.linspace(0, 64, n_bands + 1).round().astype(int)
    bands = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        mask = np.uint64((1 << int(hi - lo)) - 1)
        bands.append(((hashes >> np.uint64(lo)) & mask, int(hi - lo)))
    for (a, _), (b, bbits) in itertools.combinations(bands, 2):
        yield (a << np.uint64(bbits)) | b


def near_duplicate_pairs(hashes: np.ndarray, threshold: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index pairs ``(i, j)``, i < j, of distinct ``hashes`` within ``threshold`` bits, and their distances.

    Never compares all pairs: candidates come from equal band keys (see
    :func:`_band_keys`), and only candidates are checked with a popcount.

    >>> h = np.array([0b1011, 0b1010, 1 << 40], dtype=np.uint64)
    >>> near_duplicate_pairs(h, 2)[0].tolist(), near_duplicate_pairs(h, 2)[1].tolist()
    ([0], [1])
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    found_i, found_j = [], []
    for key in _band_keys(hashes, threshold):
        order = np.argsort(key)  # any order within a run: the pairs are made unique below
        sk = key[order]
        same = np.flatnonzero(sk[1:] == sk[:-1])
        if len(same) == 0:
            continue
        # Runs of equal keys: pair every member with the members after it in the run.
        run_start = np.ones(len(sk), dtype=bool)
        run_start[1:] = sk[1:] != sk[:-1]
        run_id = np.cumsum(run_start) - 1
        offset = 1
        while True:
            i = order[:-offset]
            j = order[offset:]
            in_run = run_id[:-offset] == run_id[offset:]
            if not in_run.any():
                break
            found_i.append(i[in_run])
            found_j.append(j[in_run])
            offset += 1
    if not found_i:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    i = np.concatenate(found_i)
    j = np.concatenate(found_j)
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    pair = np.unique(np.stack([lo, hi], axis=1), axis=0)
    dist = np.bitwise_count(hashes[pair[:, 0]] ^ hashes[pair[:, 1]]).astype(np.int64)
    keep = (dist <= threshold) & (dist > 0)
    return pair[keep, 0], pair[keep, 1], dist[keep]


def phash_values(values: pd.Series) -> np.ndarray:
    """The 64-bit perceptual hashes of the non-null ``values``, as unsigned integers.

    ``mdprep hash`` writes them as unsigned integers; a manifest made elsewhere may
    hold signed 64-bit integers (the same bits) or text of 16 hex digits, as
    ``str(imagehash.phash(...))`` gives. Anything else is an :class:`InputError`.

    >>> phash_values(pd.Series(["028c61d11d055767", None])).tolist()
    [183629235578296167]
    """
    present = values.dropna()
    if pd.api.types.is_integer_dtype(present.dtype):
        return present.to_numpy().astype(np.int64 if pd.api.types.is_signed_integer_dtype(present.dtype) else np.uint64).view(np.uint64)
    text = present.astype("str").str.strip().str.lower()
    bad = ~text.str.fullmatch(r"(0x)?[0-9a-f]{1,16}").fillna(False).to_numpy(dtype=bool)
    if bad.any():
        examples = text[bad].unique().tolist()
        raise InputError(
            f"the phash column holds {examples_text(examples, len(examples))}, not 64-bit perceptual hashes; "
            "give unsigned integers or 16 hex digits per image, or recompute them with `mdprep hash`",
            column="phash",
        )
    return np.fromiter((int(t, 16) for t in text), dtype=np.uint64, count=len(text))


def near_duplicates(frame: pd.DataFrame, *, threshold: int = 4, split_col: str = "split", partition: str = "split") -> CheckResult:
    """Images in different splits whose 64-bit perceptual hashes differ in at most ``threshold`` bits.

    Identical hashes across splits are one finding per hash value (distance 0);
    distinct hashes within the threshold are one finding per pair of images.
    """
    check = "near_duplicate"
    if "phash" not in frame.columns:
        return skipped(check, partition, "no 'phash' column: run `mdprep hash` first", len(frame))
    present = frame["phash"].notna().to_numpy()
    if not present.any():
        return skipped(check, partition, "'phash' is empty in every row: run `mdprep hash` first", len(frame), "empty column")
    sub = frame.loc[present, ["image_id", "phash", split_col]]
    hashes = phash_values(sub["phash"])
    sub = sub.assign(phash=pd.array(hashes, dtype="UInt64"))
    exact = value_overlap(sub, "phash", split_col=split_col, check=check, partition=partition)
    exact_findings = exact.findings.assign(detail="distance 0")
    uniq, inverse = np.unique(hashes, return_inverse=True)
    ui, uj, dist = near_duplicate_pairs(uniq, threshold)
    rows_by_hash = pd.DataFrame({"u": inverse, "row": np.arange(len(sub))})
    pairs_u = pd.DataFrame({"ui": ui, "uj": uj, "distance": dist})
    a = pairs_u.merge(rows_by_hash.rename(columns={"u": "ui", "row": "ra"}), on="ui").merge(
        rows_by_hash.rename(columns={"u": "uj", "row": "rb"}), on="uj"
    )
    splits = sub[split_col].astype("str").to_numpy()
    ids = sub["image_id"].astype("str").to_numpy()
    ra, rb = a["ra"].to_numpy(dtype=np.int64), a["rb"].to_numpy(dtype=np.int64)
    cross = splits[ra] != splits[rb]  # pairs inside one split are not leakage
    ra, rb, dist = ra[cross], rb[cross], a["distance"].to_numpy(dtype=np.int64)[cross]
    near = pd.DataFrame(
        {
            "key": ["|".join(sorted(pair)) for pair in zip(ids[ra], ids[rb])],
            "splits": [tuple(sorted(pair)) for pair in zip(splits[ra], splits[rb])],
            "rows": np.full(len(ra), 2, dtype=np.int64),
            "image_ids": [[x, y] for x, y in zip(ids[ra], ids[rb])],
            "detail": [f"distance {d}" for d in dist],
            "allowed": np.zeros(len(ra), dtype=bool),
        }
    )
    findings = pd.concat([exact_findings, near], ignore_index=True) if len(near) else exact_findings
    if not findings.empty:
        findings = findings.sort_values("key", kind="stable").reset_index(drop=True)
    pairs = _pairs_from_findings(findings)
    return _result(check, partition, findings, pairs, int(present.sum()), int((~present).sum()))


def person_key(frame: pd.DataFrame, columns: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Rows with every person column, and their key: the values as text joined by ``|``.

    ``same_person`` pairs patient ids by this key and ``split --link same_person``
    joins them by it, so a split linked that way leaves the check nothing to find.

    >>> person_key(pd.DataFrame({"birth_date": ["1950-01-01", None], "sex": ["F", "M"]}), ["birth_date", "sex"])[1].tolist()
    ['1950-01-01|F', None]
    """
    cols = list(columns)
    present = frame[cols].notna().all(axis=1).to_numpy()
    key = np.full(len(frame), None, dtype=object)
    if present.any():
        parts = [frame.loc[present, c].astype("str") for c in cols]
        joined = parts[0]
        for part in parts[1:]:  # column by column: a vectorised concatenation, not a join per row
            joined = joined + "|" + part
        key[present] = joined.to_numpy(dtype=object)
    return present, key


def same_person(
    frame: pd.DataFrame, *, group: str = "patient_id", columns: Sequence[str] = PERSON_COLUMNS, split_col: str = "split", partition: str = "split"
) -> CheckResult:
    """Different ``group`` ids in different splits that share every one of ``columns`` (a warning)."""
    check = "same_person"
    missing = [c for c in dict.fromkeys([group, *columns]) if c not in frame.columns]
    if missing:
        return skipped(check, partition, f"no {', '.join(map(repr, missing))} column", len(frame))
    has_person, key = person_key(frame, columns)
    present = has_person & frame[group].notna().to_numpy()
    sub = frame.loc[present, list(dict.fromkeys([group, split_col, "image_id", *columns]))]
    sub = sub.assign(_key=key[present])
    stats = sub.groupby("_key", sort=True).agg(groups=(group, "nunique"), splits=(split_col, "nunique"))
    suspects = stats.index[(stats["groups"] > 1) & (stats["splits"] > 1)]
    rows = []
    for k, grp in sub[sub["_key"].isin(suspects)].groupby("_key", sort=True):
        per_split = grp.groupby(split_col)[group].unique()
        # Only a pair of different ids in different splits is evidence.
        if not any(set(a) - set(b) for (sa, a), (sb, b) in itertools.combinations(per_split.items(), 2)):
            continue
        evidence = "; ".join(f"{s}: {', '.join(sorted(map(str, ids)))}" for s, ids in per_split.items())
        label = ", ".join(f"{c}={v}" for c, v in zip(columns, k.split("|")))
        rows.append((label, tuple(sorted(map(str, per_split.index))), len(grp), grp["image_id"].astype("str").tolist(), f"{group} by split: {evidence}"))
    findings = pd.DataFrame(rows, columns=FINDING_COLUMNS).assign(allowed=False) if rows else _empty_findings()
    return _result(check, partition, findings, _empty_pairs(), int(present.sum()), int((~present).sum()), severity="warning")


def temporal(frame: pd.DataFrame, *, time_col: str, train: str = "train", split_col: str = "split", partition: str = "split") -> CheckResult:
    """Rows of other splits dated before the latest ``train`` row (for time-based splits)."""
    check = "temporal"
    if time_col not in frame.columns:
        return skipped(check, partition, f"no {time_col!r} column", len(frame))
    with warnings.catch_warnings():
        # Values that are not dates (a --time-col of names) are nulls here, counted as unchecked rows.
        warnings.filterwarnings("ignore", message="Could not infer format", category=UserWarning)
        times = pd.to_datetime(frame[time_col].astype("str"), errors="coerce")
    present = times.notna().to_numpy()
    is_train = (frame[split_col].astype("str") == train).to_numpy()
    if not (present & is_train).any():
        return skipped(check, partition, f"no dated rows in split {train!r}", len(frame), "no dated train rows")
    latest = times[present & is_train].max()
    early = present & ~is_train & (times < latest).to_numpy()
    rows = []
    for s, grp in frame[early].groupby(split_col, sort=True):
        rows.append((f"{s} before {latest.date()}", (train, str(s)), len(grp), grp["image_id"].astype("str").tolist(),
                     f"{len(grp)} {s} image(s) dated before the latest {train} image ({latest.date()})"))
    findings = pd.DataFrame(rows, columns=FINDING_COLUMNS).assign(allowed=False) if rows else _empty_findings()
    return _result(check, partition, findings, _empty_pairs(), int(present.sum()), int((~present).sum()))


# ----------------------------------------------------------------------------- the audit


@dataclass(frozen=True)
class AuditReport:
    """Every check's result; the exit code is decided here and nowhere else.

    ``required`` names the checks that must fully run; ``degenerate_grouping`` is
    the finding of :func:`degenerate_grouping` (None when the grouping is sound).
    """

    checks: tuple[CheckResult, ...]
    inputs: tuple[dict, ...]
    unassigned_rows: int = 0
    options: dict = field(default_factory=dict)
    required: tuple[str, ...] = ()
    degenerate_grouping: dict | None = None
    #: The split command that would pass (:meth:`mdprep.remedy.Suggestion.to_dict`), when one was asked for.
    suggestion: dict | None = None

    @property
    def failed(self) -> tuple[CheckResult, ...]:
        """Checks whose findings fail the gate (leakage)."""
        return tuple(c for c in self.checks if c.fails_gate)

    @property
    def unmet(self) -> tuple[CheckResult, ...]:
        """Required checks that could not fully run (skipped, rows unchecked, degenerate grouping)."""
        return tuple(c for c in self.checks if c.unmet)

    @property
    def exit_code(self) -> int:
        """0 when no gating check found unallowed leakage and every required check fully ran, 1 otherwise."""
        return 1 if self.failed or self.unmet else 0

    def findings_frame(self, *, blocking_only: bool = False) -> pd.DataFrame:
        """Every finding of every check as one DataFrame, one row per finding (a tidy, long table).

        Columns: ``check``, ``partition`` (``split`` or ``fold``), ``verdict`` (of the check:
        ``failed`` or ``warning``), then the finding's ``key``, ``splits`` (a tuple of split names),
        ``rows``, ``image_ids`` (the images involved), ``detail`` and ``allowed`` (on the allow list). Checks in the
        order they ran; an empty frame with these columns when nothing was found.
        ``blocking_only`` keeps the findings not on the allow list. Each check's own findings
        are :attr:`CheckResult.findings` (the same columns, less the first three).

        Examples
        --------
        >>> f = pd.DataFrame({"image_id": ["a", "b", "c"], "path": ["a", "b", "c"], "patient_id": ["p", "p", "q"],
        ...                   "split": ["train", "test", "test"]})
        >>> report = audit(f, checks=["patient_overlap"])
        >>> report.findings_frame()[["check", "key", "splits", "rows"]]
                     check key         splits  rows
        0  patient_overlap   p  (test, train)     2
        >>> report.findings_frame().groupby("check").size().to_dict()
        {'patient_overlap': 1}
        """
        columns = ["check", "partition", "verdict", *FINDING_COLUMNS, "allowed"]
        parts = []
        for c in self.checks:
            found = c.blocking if blocking_only else c.findings
            if not found.empty:
                parts.append(found[FINDING_COLUMNS + ["allowed"]].assign(check=c.check, partition=c.partition, verdict=c.verdict)[columns])
        if not parts:
            return _empty_findings().assign(check=pd.Series([], dtype=object), partition=pd.Series([], dtype=object), verdict=pd.Series([], dtype=object))[columns]
        return pd.concat(parts, ignore_index=True)

    def counts(self) -> dict:
        """How many checks (one per check and partition) ran, were skipped (by reason), failed, warned.

        ``with_unchecked_rows`` counts checks that ran but could not look at every row.
        """
        skipped_ = [c for c in self.checks if c.status == "skipped"]
        by_kind = Counter(c.skip_kind or "other" for c in skipped_)
        ran = [c for c in self.checks if c.status != "skipped"]
        return {
            "checks": len(self.checks),
            "ran": len(ran),
            "skipped": len(skipped_),
            "failed": len(self.failed),
            "warnings": sum(1 for c in ran if not c.fails_gate and not c.blocking.empty),
            "with_unchecked_rows": sum(1 for c in ran if c.unchecked_rows),
            "unmet_requirements": len(self.unmet),
            "skipped_by_reason": dict(sorted(by_kind.items(), key=lambda kv: (-kv[1], kv[0]))),
        }

    @property
    def verdict(self) -> str:
        """The one verdict line: how many checks ran, why the others did not, and what failed.

        >>> f = pd.DataFrame({"image_id": ["a", "b"], "patient_id": ["p", "q"], "split": ["train", "test"]})
        >>> audit(f, checks=["image_overlap", "patient_overlap", "study_overlap"]).verdict
        'No leakage found in 2 of 3 checks (1 skipped: no column)'
        """
        c = self.counts()
        parts = []
        if c["skipped"]:
            kinds = c["skipped_by_reason"]
            reasons = next(iter(kinds)) if len(kinds) == 1 else ", ".join(f"{n} {k}" for k, n in kinds.items())
            parts.append(f"{c['skipped']} skipped: {reasons}")
        if c["with_unchecked_rows"]:
            parts.append(f"{c['with_unchecked_rows']} with unchecked rows")
        if self.failed:
            detail = "; ".join([f"{c['ran']} ran", *parts])
            names = ", ".join(f"{r.check} ({r.partition}s)" for r in self.failed)
            line = f"Leakage found by {c['failed']} of {c['checks']} checks ({detail}): {names}"
        else:
            line = f"No leakage found in {c['ran']} of {c['checks']} checks" + (f" ({'; '.join(parts)})" if parts else "")
            warned = [r for r in self.checks if r.verdict == "warning"]
            if warned:
                # Findings that do not fail the gate are findings all the same: the line never says "No leakage found" over them.
                names = ", ".join(f"{r.check} ({r.partition}s)" for r in warned)
                line = (f"Gate passed with findings outside it: {len(warned)} of {c['checks']} checks found something that "
                        f"does not fail the gate ({names}); {c['ran'] - len(warned)} other check(s) ran clean"
                        + (f" ({'; '.join(parts)})" if parts else ""))
        if self.unmet:
            unmet = f"{len(self.unmet)} required check(s) did not fully run: " + ", ".join(
                f"{r.check} ({r.partition}s: {_incomplete_short(r)})" for r in self.unmet
            )
            line = f"{line}; {unmet}" if self.failed else f"Gate failed, {unmet}; {line[0].lower()}{line[1:]}"
        if self.degenerate_grouping:
            line += f"; note: degenerate grouping ({self.degenerate_grouping['summary']}), patient_overlap had nothing to compare"
        return visible(line)

    def to_dict(self) -> dict:
        return {
            "schema": "mdprep-audit-report",
            "version": 1,
            "result": "failed" if self.exit_code else "passed",
            "exit_code": self.exit_code,
            "verdict": self.verdict,
            "counts": self.counts(),
            "required": list(self.required),
            "degenerate_grouping": self.degenerate_grouping,
            "inputs": list(self.inputs),
            "unassigned_rows": self.unassigned_rows,
            "options": self.options,
            "checks": [c.to_dict() for c in self.checks],
            **({"suggestion": self.suggestion} if self.suggestion is not None else {}),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str) + "\n"


def _incomplete_short(result: CheckResult) -> str:
    if result.status == "skipped":
        return f"skipped, {result.skip_kind}"
    parts = [f"{result.unchecked_rows} row(s) unchecked"] if result.unchecked_rows else []
    return ", ".join(parts + (["degenerate grouping"] if result.caveat else []))


#: The first rows that :func:`degenerate_grouping` looks at before the whole columns.
HEAD_ROWS = 1000


def head_grouping(head: pd.DataFrame, group: str, *, image_col: str = "image_id", grouping: bool) -> tuple[bool, bool]:
    """What the first rows say of a grouping: whether it may be the image itself, and whether it may hold one image each.

    The first rows settle a sound grouping without touching the whole column: one row whose
    group is not its image id rules out the first case, one repeated group the second (which
    only counts when a ``grouping`` column, :data:`GROUPING_COLUMNS`, is there). Identifiers
    are text, compared as they are (a frame built in Python may hold any str).

    >>> head_grouping(pd.DataFrame({"image_id": ["a", "b"], "patient_id": ["p", "p"]}), "patient_id", grouping=True)
    (False, False)
    """
    head_present = head[group].notna().to_numpy()
    head_values = head[group][head_present]
    maybe_image = group == image_col or bool(
        (head_values.to_numpy(dtype=object) == head[image_col][head_present].to_numpy(dtype=object)).all()
    )
    maybe_single = grouping and not head_values.duplicated().any()
    return maybe_image, bool(maybe_single)


def degenerate_grouping(frame: pd.DataFrame, group: str = "patient_id", *, image_col: str = "image_id") -> dict | None:
    """Whether ``group`` fails to group images, so a patient-level check has nothing to compare.

    Two cases, checked with column operations (a sample of the first rows first, so
    a sound grouping costs next to nothing):

    * ``group_is_image``: ``group`` equals ``image_col`` on every row that has one
      (or is ``image_col`` itself);
    * ``one_image_per_group``: every ``group`` value holds exactly one image while a
      column of :data:`GROUPING_COLUMNS` (``study_id``, ``series_uid``) puts several
      images together: one study under several "patients".

    Returns None for a sound grouping (or fewer than two rows with a group), else a
    dict with ``kind``, ``group``, ``rows``, ``column`` (the grouping column, or
    None), ``summary`` (a few words), ``message`` and ``hint``.

    Examples
    --------
    >>> f = pd.DataFrame({"image_id": ["a", "b"], "patient_id": ["a", "b"]})
    >>> degenerate_grouping(f)["kind"]
    'group_is_image'
    >>> degenerate_grouping(f.assign(patient_id=["p", "p"])) is None
    True
    """
    if group not in frame.columns or image_col not in frame.columns:
        return None
    grouping = [c for c in GROUPING_COLUMNS if c != group and c in frame.columns]
    maybe_image, maybe_single = head_grouping(frame.iloc[:HEAD_ROWS], group, image_col=image_col, grouping=bool(grouping))
    if not (maybe_image or maybe_single):
        return None
    present = frame[group].notna().to_numpy()
    n = int(present.sum())
    if n < 2:
        return None
    values = frame[group][present]
    if group == image_col or (maybe_image and (values.to_numpy(dtype=object) == frame[image_col][present].to_numpy(dtype=object)).all()):
        summary = f"the group is {image_col} itself" if group == image_col else f"{group} equals {image_col} on every row"
        return {
            "kind": "group_is_image",
            "group": group,
            "rows": n,
            "column": None,
            "summary": summary,
            "message": f"{summary} ({n:,} rows), so {group} groups nothing",
            "hint": f"give each image its real patient id, or pass --group with a column that groups images ({', '.join(GROUPING_COLUMNS)})",
        }
    if not maybe_single or values.duplicated().any():
        return None
    for col in grouping:
        other = frame[col][present].dropna()
        shared = other.duplicated(keep=False).to_numpy()
        if not shared.any():
            continue
        sizes = other[shared].value_counts(sort=True)
        example, size = str(sizes.index[0]), int(sizes.iloc[0])
        return {
            "kind": "one_image_per_group",
            "group": group,
            "rows": n,
            "column": col,
            "summary": f"one image per {group} while {col} groups images",
            "message": (
                f"every {group} holds exactly one image ({n:,} rows) while {col} puts {int(shared.sum()):,} of them together "
                f"(e.g. {col} {short_repr(example)} has {size} images under {size} different {group}s)"
            ),
            "hint": f"give the images of one patient the same {group}, or pass --group {col}",
        }
    return None


def allow_list_problems(entries: Any) -> list[str]:
    """What is wrong with the shape of an allow list (empty when it is a list of well-formed entries).

    Each entry is an object with text ``check``, a ``key`` that is text or a number,
    and optionally text ``reason`` and ``partition``.

    >>> allow_list_problems([{"check": "duplicate_file", "key": ["a"]}, "x"])
    ["entry 0 has key ['a'], not text or a number", "entry 1 is 'x', not an object"]
    """
    if not isinstance(entries, list):
        return [f"it is {short_repr(entries)}, not a JSON list of entries"]
    problems = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            problems.append(f"entry {i} is {short_repr(e)}, not an object")
        elif "check" not in e or "key" not in e:
            problems.append(f"entry {i} lacks {' and '.join(repr(k) for k in ('check', 'key') if k not in e)}")
        elif not isinstance(e["check"], str):
            problems.append(f"entry {i} has check {short_repr(e['check'])}, not text")
        elif isinstance(e["key"], bool) or not isinstance(e["key"], (str, int, float)):
            problems.append(f"entry {i} has key {short_repr(e['key'])}, not text or a number")
        else:
            problems += [f"entry {i} has {k} {short_repr(e[k])}, not text" for k in ("reason", "partition") if k in e and not isinstance(e[k], str)]
    return problems


def load_allow_list(path: str | os.PathLike) -> list[dict]:
    """Reviewed cases: a JSON list of ``{"check": ..., "key": ..., "reason": ...}`` (``partition`` optional)."""
    try:
        with open(path, encoding="utf-8") as fh:
            entries = json.load(fh)
    except FileNotFoundError:
        raise InputError(f"allow list {os.fspath(path)!r} does not exist", path=os.fspath(path)) from None
    except ValueError as exc:
        raise InputError(f"allow list {os.fspath(path)} is not valid JSON ({exc})", path=os.fspath(path)) from None
    problems = allow_list_problems(entries)
    if problems:
        raise InputError(
            f"allow list {os.fspath(path)}: {'; '.join(problems[:5])}{f'; ... ({len(problems)} in all)' if len(problems) > 5 else ''}; "
            'write a JSON list such as [{"check": "duplicate_file", "key": "<sha256>", "reason": "reviewed"}]',
            path=os.fspath(path),
            problems=problems,
        )
    unknown = sorted({e["check"] for e in entries} - set(ALL_CHECKS))
    if unknown:
        raise InputError(f"allow list {os.fspath(path)} names unknown checks {unknown}; checks are {', '.join(ALL_CHECKS)}", path=os.fspath(path))
    return entries


def _apply_allow(result: CheckResult, allow: Sequence[Mapping]) -> CheckResult:
    if result.findings.empty or not allow:
        return result
    keys = {str(e["key"]) for e in allow if e["check"] == result.check and e.get("partition", result.partition) == result.partition}
    if not keys:
        return result
    findings = result.findings.assign(allowed=result.findings["key"].astype("str").isin(keys).to_numpy())
    status = result.status
    if findings["allowed"].all():
        status = "passed"
    return replace(result, findings=findings, status=status)


def audit(
    frame: pd.DataFrame | Manifest,
    *,
    split_col: str = "split",
    group: str = "patient_id",
    fold_col: str | None = "fold",
    checks: Sequence[str] | None = None,
    fail_on: Sequence[str] | None = None,
    allow: Sequence[Mapping] = (),
    threshold: int = 4,
    person_columns: Sequence[str] = PERSON_COLUMNS,
    time_col: str | None = None,
    train_split: str = "train",
    inputs: Sequence[dict] = (),
    require: Sequence[str] | None = None,
) -> AuditReport:
    """Run every leakage check between the splits of ``frame`` (and between its folds).

    Parameters
    ----------
    frame : DataFrame or Manifest
        Rows with an ``image_id`` and a ``split_col`` (a :class:`~mdprep.manifest.Manifest`:
        its ``frame``); rows with no split are counted as unassigned and left out.
    split_col : str
        Column holding the split names.
    group : str
        Column for ``patient_overlap`` (the patient by default).
    fold_col : str or None
        When this column exists, the checks also run between folds.
    checks : sequence of str, optional
        Checks to run (default: all; ``temporal`` only with ``time_col``).
    fail_on : sequence of str, optional
        Checks whose findings fail the gate (default: every check except the warning
        check ``same_person``).
    allow : sequence of dict
        Reviewed findings (``check`` and ``key``) reported but not failing.
    threshold : int
        Hamming distance for ``near_duplicate``.
    require : sequence of str, optional
        Checks that must fully run, or ``["all"]`` for every check that runs. A
        required check fails the gate (exit code 1) when it was skipped, left rows
        unchecked (no value: a missing UID, a file that could not be hashed) or, for
        ``patient_overlap``, ran on a degenerate grouping.
    person_columns : sequence of str
        The columns ``same_person`` compares (sex, birth date, ...).
    time_col : str, optional
        A date column: runs ``temporal`` (no ``train_split`` image dated after another split's).
    train_split : str
        The training split, for ``temporal``.
    inputs : sequence of dict
        Fingerprints of the files read, recorded in the report.

    Returns
    -------
    AuditReport
        Every check's result (:attr:`AuditReport.checks`); ``exit_code`` (0 passed,
        1 failed: the rule ``mdprep audit-leakage`` exits with), ``verdict`` (one line),
        ``findings_frame()`` (every finding as a DataFrame), ``to_json()``.

    Raises
    ------
    UsageError
        An unknown check in ``checks``, ``fail_on`` or ``require``; ``temporal`` without
        ``time_col``; ``group`` equal to ``split_col``; empty ``person_columns``.
    MissingColumnError
        ``frame`` has no ``image_id`` or no ``split_col`` column.
    InputError
        ``phash`` values that are not 16 hexadecimal digits.

    Warns
    -----
    MdprepWarning
        When the grouping is degenerate (see :func:`degenerate_grouping`): the
        report carries it and its verdict says so.

    Examples
    --------
    >>> f = pd.DataFrame({"image_id": ["a", "b"], "path": ["a", "b"], "patient_id": ["p", "p"], "split": ["train", "test"]})
    >>> audit(f).exit_code
    1
    >>> audit(f.assign(patient_id=["p", "q"]), require=["near_duplicate"]).exit_code
    1
    >>> audit(f.assign(patient_id=["p", "q"]), checks=["patient_overlap"]).verdict
    'No leakage found in 1 of 1 checks'
    """
    if isinstance(frame, Manifest):
        frame = frame.frame
    return audit_rows(
        FrameRows(frame), split_col=split_col, group=group, fold_col=fold_col, checks=checks, fail_on=fail_on, allow=allow,
        threshold=threshold, person_columns=person_columns, time_col=time_col, train_split=train_split, inputs=inputs,
        require=require, stacklevel=3,
    )


class FrameRows:
    """The rows of a frame in memory, as :func:`audit_rows` asks for them.

    The scan of large manifest files (:class:`mdprep.auditscan.ScanRows`) answers the same
    questions from hashes, for the value checks.
    """

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame
        self._parts: dict[tuple[str, str], pd.DataFrame] = {}

    @property
    def columns(self) -> list:
        """The column names."""
        return list(self.frame.columns)

    def has_values(self, column: str) -> bool:
        """Whether some row has a value in ``column``."""
        return bool(self.frame[column].notna().any())

    def unassigned(self, split_col: str) -> int:
        """The rows with no split."""
        return int(self.frame[split_col].isna().sum())

    def degenerate(self, group: str, split_col: str, unassigned: int) -> dict | None:
        """:func:`degenerate_grouping` of the rows that have a split."""
        return degenerate_grouping(self.frame[self.frame[split_col].notna()] if unassigned else self.frame, group)

    def partition(self, partition: str, col: str) -> pd.DataFrame:
        """The rows with a value in ``col``, the column that names their part (folds as ``fold K``)."""
        key = (partition, col)
        if key not in self._parts:
            self._parts.clear()  # one partition at a time, as the checks run through them
            frame = self.frame
            assigned = frame[col].notna().to_numpy()
            sub = frame if assigned.all() else frame[assigned]  # no copy of every column when every row has one
            if partition == "fold":
                sub = sub.assign(**{col: "fold " + sub[col].astype("str")})
            self._parts[key] = sub
        return self._parts[key]

    def value_overlap(self, column: str, partition: str, col: str, check: str) -> CheckResult:
        """:func:`value_overlap` of ``column`` between the parts named by ``col``."""
        return value_overlap(self.partition(partition, col), column, split_col=col, check=check, partition=partition)


def audit_rows(
    rows: Any,
    *,
    split_col: str = "split",
    group: str = "patient_id",
    fold_col: str | None = "fold",
    checks: Sequence[str] | None = None,
    fail_on: Sequence[str] | None = None,
    allow: Sequence[Mapping] = (),
    threshold: int = 4,
    person_columns: Sequence[str] = PERSON_COLUMNS,
    time_col: str | None = None,
    train_split: str = "train",
    inputs: Sequence[dict] = (),
    require: Sequence[str] | None = None,
    stacklevel: int = 2,
) -> AuditReport:
    """:func:`audit` of rows held anywhere: a frame (:class:`FrameRows`) or a scanned file (:class:`mdprep.auditscan.ScanRows`).

    ``rows`` answers ``columns``, ``has_values(column)``, ``unassigned(split_col)``,
    ``degenerate(group, split_col, unassigned)``, ``value_overlap(column, partition, col,
    check)`` and, for the other checks, ``partition(partition, col)`` (the rows as a frame).
    The options, their errors and the report are the same whatever holds the rows.
    """
    columns = rows.columns
    if split_col not in columns:
        raise MissingColumnError([split_col], list(columns), hint="split the manifest first (mdprep split) or pass --split-col")
    if "image_id" not in columns:
        raise MissingColumnError(["image_id"], list(columns))
    check_number(threshold, "--threshold", minimum=0, maximum=16, integer=True)
    if group == split_col:
        raise UsageError(f"--group and --split-col both name {group!r}; the group (patient) column must differ from the split column")
    if "same_person" in (checks if checks is not None else ALL_CHECKS) and not list(person_columns):
        raise UsageError("--person-cols is empty; name the columns that together suggest one person (for example birth_date,sex)")
    # An empty list would make the gate pass with nothing checked (or nothing able to fail it): never silently.
    if checks is not None and not list(checks):
        raise UsageError(f"--checks is empty, so nothing would be checked; name the checks to run ({', '.join(ALL_CHECKS)}), or leave it out to run them all")
    if fail_on is not None and not list(fail_on):
        raise UsageError("--fail-on is empty, so no finding could fail the gate; name the checks that fail it, or leave it out (all but same_person)")
    if require is not None and not list(require):
        raise UsageError("--require is empty; name the checks that must fully run, or all")
    wanted = list(checks) if checks is not None else [c for c in ALL_CHECKS if c != "temporal" or time_col]
    unknown = sorted(set(wanted) - set(ALL_CHECKS))
    if unknown:
        raise UsageError(f"unknown checks {unknown}; choose among {', '.join(ALL_CHECKS)}")
    if "temporal" in wanted and not time_col:
        raise UsageError("the temporal check needs --time-col (the date of each image)")
    # A column named on the command line that is not there is a typo, not a check to skip as "no column".
    named = {"--group": group} if {"patient_overlap", "same_person"} & set(wanted) else {}
    if time_col:
        named["--time-col"] = time_col
    absent = {option: column for option, column in named.items() if column not in columns}
    if absent:
        raise MissingColumnError(
            list(absent.values()), list(columns), hint=" and ".join(f"{o} names {c!r}" for o, c in absent.items()) + ": check the spelling"
        )
    gating = set(fail_on) if fail_on is not None else set(ALL_CHECKS) - WARNING_CHECKS
    unknown = sorted(gating - set(ALL_CHECKS))
    if unknown:
        raise UsageError(f"--fail-on names unknown checks {unknown}; choose among {', '.join(ALL_CHECKS)}")
    required = _required_checks(require, wanted)
    value_checks = dict(VALUE_CHECKS, patient_overlap=group)
    partitions = [("split", split_col)]
    if fold_col and fold_col in columns and rows.has_values(fold_col):
        partitions.append(("fold", fold_col))
    results: list[CheckResult] = []
    unassigned = rows.unassigned(split_col)
    degenerate = None
    if "patient_overlap" in wanted:
        degenerate = rows.degenerate(group, split_col, unassigned)
    if degenerate:
        warnings.warn(
            visible(f"degenerate grouping: {degenerate['message']}; patient_overlap compares single images, so a pass says "
                    f"nothing about a patient in two splits: {degenerate['hint']}"),
            MdprepWarning,
            stacklevel=stacklevel,
        )
    for partition, col in partitions:
        for check in wanted:
            if check in value_checks:
                r = rows.value_overlap(value_checks[check], partition, col, check)
            elif check == "near_duplicate":
                r = near_duplicates(rows.partition(partition, col), threshold=threshold, split_col=col, partition=partition)
            elif check == "same_person":
                r = same_person(rows.partition(partition, col), group=group, columns=person_columns, split_col=col, partition=partition)
            else:
                if partition == "fold":
                    continue
                r = temporal(rows.partition(partition, col), time_col=time_col, train=train_split, split_col=col, partition=partition)
            caveat = f"degenerate grouping: {degenerate['message']}" if degenerate and check == "patient_overlap" else ""
            r = replace(_apply_allow(r, allow), gate=check in gating, required=check in required, caveat=caveat)
            results.append(r)
    options = {
        "split_col": split_col,
        "group": group,
        "fold_col": fold_col if len(partitions) > 1 else None,
        "checks": wanted,
        "fail_on": sorted(gating),
        "threshold": int(threshold),
        "person_columns": list(person_columns),
        "time_col": time_col,
        "allow_entries": len(allow),
        "require": sorted(required),
    }
    return AuditReport(tuple(results), tuple(inputs), unassigned, options, tuple(c for c in wanted if c in required), degenerate)


def _required_checks(require: Sequence[str] | None, wanted: Sequence[str]) -> set[str]:
    """The checks named by ``require`` (``all``: every check that runs); every bad name in one error."""
    if not require:
        return set()
    names = list(require)
    if "all" in names:
        names = [n for n in names if n != "all"] + list(wanted)
    unknown = sorted(set(names) - set(ALL_CHECKS))
    not_run = [n for n in dict.fromkeys(names) if n in ALL_CHECKS and n not in wanted]
    problems = []
    if unknown:
        problems.append(f"unknown checks {unknown}; choose among {', '.join(ALL_CHECKS)}, or all")
    if not_run:
        hint = " (temporal also needs --time-col)" if "temporal" in not_run else ""
        problems.append(f"{', '.join(not_run)} would not run: add {'them' if len(not_run) > 1 else 'it'} to --checks{hint}")
    if problems:
        raise UsageError("--require names " + "; ".join(problems), unknown=unknown, not_run=not_run)
    return set(names)


def check_combinable(manifests: Sequence[Manifest], names: Sequence[str]) -> None:
    """Refuse to combine ``manifests`` under ``names`` (see :func:`combine_manifests`): UsageError saying why.

    Only the names and the manifests' history are looked at, not their rows.
    """
    from .pseudonyms import check_same_pseudonymization

    if len(names) != len(manifests) or len(set(names)) != len(names):
        raise UsageError(f"--names needs {len(manifests)} distinct names, one per manifest")
    bad = [n for n in names if not decodable(n)]  # a command-line byte that was not UTF-8
    if bad:
        raise UsageError(f"--names {examples_text(bad, len(bad))} are not valid UTF-8 text; give split names in plain text")
    check_same_pseudonymization(manifests, names)


def combine_manifests(manifests: Sequence[Manifest], names: Sequence[str], *, split_col: str = "split") -> pd.DataFrame:
    """One frame from several manifests, each one split named by ``names``.

    Pseudonymised manifests must share their key and their number of passes (see
    :func:`mdprep.pseudonyms.pseudonymization_state`): ids made otherwise never
    match, so comparing them would pass for the wrong reason (UsageError).
    """
    check_combinable(manifests, names)
    frames = [m.frame.assign(**{split_col: n}) for m, n in zip(manifests, names)]
    return pd.concat(frames, ignore_index=True, sort=False)


# ----------------------------------------------------------------------------- report formats

#: Characters no report shows raw: C0 controls (tab and newlines included: a quoted id
#: stays on its line), DEL and C1 controls, lone surrogates, U+FFFE/U+FFFF (not allowed
#: in XML), line and paragraph separators and bidirectional overrides (text that reads
#: differently from what it is).
_INVISIBLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape_char(m: re.Match) -> str:
    ch = m.group(0)
    code = ord(ch)
    return _NAMED.get(ch) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def visible(text: str) -> str:
    r"""``text`` with every control, lone surrogate and noncharacter as a visible escape.

    What the reports quote (ids, split names, hashes) comes from data; written out as
    is, a control character breaks the JUnit XML, a newline breaks a Markdown table and
    an escape sequence rewrites a terminal line.

    >>> visible("a\x1bb\nc\ud800")
    'a\\x1bb\\nc\\ud800'
    """
    return _INVISIBLE.sub(_escape_char, str(text))


_MD_SPECIAL = re.compile(r"[\\`*_\[\]|~#$<>&]")
_MD_ENTITY = {"<": "&lt;", ">": "&gt;", "&": "&amp;"}
_MD_BLOCK_START = re.compile(r"\d+(?=[.)])|[-+=]")


def markdown_text(text: str) -> str:
    r"""``text`` as literal Markdown (GitHub flavour): no HTML, no link, no emphasis, no table cell break.

    Controls become visible escapes (:func:`visible`), ``<``, ``>`` and ``&`` become
    entities, Markdown punctuation (backslash, backtick, ``* _ [ ] | ~ # $``) gets a
    backslash, and a start that would open a list or a heading is escaped too.

    >>> markdown_text("<img src=x> a|b `c`")
    '&lt;img src=x&gt; a\\|b \\`c\\`'
    >>> markdown_text("1. x")
    '1\\. x'
    """
    out = _MD_SPECIAL.sub(lambda m: _MD_ENTITY.get(m.group(0)) or "\\" + m.group(0), visible(text))
    body = out.lstrip(" ")
    # Leading spaces would indent a code block; "1." or "-" at the start would open a list.
    lead = "&#32;" * (len(out) - len(body))
    start = _MD_BLOCK_START.match(body)
    if start:
        mark = start.group(0)
        body = (mark + "\\" if mark[0].isdigit() else "\\" + mark) + body[start.end():]
    return lead + body


def _xml_text(text: str) -> str:
    from xml.sax.saxutils import escape

    return escape(visible(text))


def _xml_attr(text: str) -> str:
    from xml.sax.saxutils import quoteattr

    return quoteattr(visible(text))


def finding_lines(result: CheckResult, limit: int = 5) -> list[str]:
    """The first ``limit`` findings of ``result``, one line each, controls escaped (:func:`visible`)."""
    lines = []
    shown = result.findings[["key", "splits", "rows", "image_ids", "detail", "allowed"]].head(limit)
    for key, splits, rows, ids, detail, allowed in shown.itertuples(index=False):
        key = key if len(key) <= 24 else key[:12] + "..."
        images = ", ".join(ids[:4]) + (", ..." if len(ids) > 4 else "")
        extra = f"; {detail}" if detail else ""
        mark = " [allowed]" if allowed else ""
        lines.append(visible(f"{key}: {' / '.join(splits)}, {rows} row(s): {images}{extra}{mark}"))
    if len(result.findings) > limit:
        lines.append(f"... {len(result.findings) - limit} more")
    return lines


def summary_line(result: CheckResult) -> str:
    """One line about ``result``: why it was skipped, or its findings per pair of splits and unchecked rows."""
    text = _summary_text(result)
    if result.unmet:
        text = f"required but did not fully run: {text}"
    elif result.caveat and result.status != "skipped":
        text += f"; {result.caveat}"
    return visible(text)


def _summary_text(result: CheckResult) -> str:
    if result.status == "skipped":
        return result.reason
    n = len(result.findings)
    pairs = "; ".join(f"{a}/{b}: {s} shared, {r} rows" for a, b, s, r in result.pairs[["split_a", "split_b", "shared", "rows"]].itertuples(index=False))
    text = f"{n} finding(s)" + (f" ({pairs})" if pairs else "")
    allowed = int(result.findings["allowed"].sum()) if n else 0
    if allowed:
        text += f", {allowed} allowed"
    if result.unchecked_rows:
        text += f"; {result.unchecked_rows} row(s) unchecked (no value)"
    if result.unmet and result.caveat:
        text += f"; {result.caveat}"
    return text


def to_junit(report: AuditReport) -> str:
    """JUnit XML: one test case per check; a failing check is a real ``<failure>``.

    A skipped check is ``<skipped message=...>`` unless it was required (then it is a
    failure, ``type="required-check-not-run"``); the verdict line and any degenerate
    grouping are suite properties. Quoted data goes through :func:`visible`, so the
    file always parses.
    """
    cases = []
    failures = skipped_n = 0
    for r in report.checks:
        name = _xml_attr(r.check)
        classname = _xml_attr(f"mdprep.audit-leakage.{r.partition}")
        body = ""
        if r.fails_gate:
            text = "\n".join([DESCRIPTIONS[r.check], summary_line(r), *finding_lines(r, 50)])
            body = f"<failure message={_xml_attr(summary_line(r))} type=\"leakage\">{_xml_text(text)}</failure>"
        elif r.unmet:
            text = f"{r.check} is required (--require) but did not fully run: {r.incomplete_reason}"
            body = f"<failure message={_xml_attr(text)} type=\"required-check-not-run\">{_xml_text(text)}</failure>"
        elif r.status == "skipped":
            body = f"<skipped message={_xml_attr(r.reason)}/>"
        elif not r.findings.empty:
            body = f"<system-out>{_xml_text(chr(10).join([summary_line(r), *finding_lines(r, 50)]))}</system-out>"
        elif r.unchecked_rows or r.caveat:
            body = f"<system-out>{_xml_text(summary_line(r))}</system-out>"
        failures += body.startswith("<failure")
        skipped_n += body.startswith("<skipped")
        cases.append(f"    <testcase classname={classname} name={name}>{body}</testcase>")
    properties = [("verdict", report.verdict)]
    if report.degenerate_grouping:
        properties.append(("degenerate_grouping", report.degenerate_grouping["message"]))
    props = "".join(f"\n      <property name={_xml_attr(k)} value={_xml_attr(v)}/>" for k, v in properties)
    n = len(report.checks)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<testsuites name="mdprep audit-leakage" tests="{n}" failures="{failures}" skipped="{skipped_n}">\n'
        f'  <testsuite name="mdprep audit-leakage" tests="{n}" failures="{failures}" errors="0" skipped="{skipped_n}">\n'
        f"    <properties>{props}\n    </properties>\n"
        + "\n".join(cases)
        + "\n  </testsuite>\n</testsuites>\n"
    )


def to_markdown(report: AuditReport, *, examples: int = 3) -> str:
    """A short Markdown summary for a pull-request comment; every quoted value goes through :func:`markdown_text`."""
    verdict = "FAILED" if report.exit_code else "passed"
    icon = {"passed": "✅", "failed": "❌", "warning": "⚠️", "skipped": "⏭️"}
    lines = [f"### mdprep audit-leakage: {verdict}", "", markdown_text(report.verdict), "", "| check | between | result |", "|---|---|---|"]
    for r in report.checks:
        lines.append(f"| {icon[r.verdict]} `{r.check}` | {r.partition}s | {markdown_text(summary_line(r))} |")
    for r in report.checks:
        if r.findings.empty:
            continue
        lines += ["", f"**{r.check}** ({r.partition}s): " + DESCRIPTIONS[r.check]]
        lines += [f"- {markdown_text(line)}" for line in finding_lines(r, examples)]
    if report.unassigned_rows:
        lines += ["", f"{report.unassigned_rows} row(s) have no split and were not audited."]
    s = report.suggestion
    if s is not None:
        lines += ["", "**Suggested fix**"]
        if s["problem"]:
            lines += ["", f"No split can be suggested: {markdown_text(s['problem'])}"]
        if s["command"]:
            verdict = (f"verified: the audit of that split, with the same options, passes {', '.join(s['fixes'])}" if s["verified"]
                       else f"not enough: the audit of that split, with the same options, fails {', '.join(s['remaining'])}")
            # A fence longer than any run of backticks in the command: the block shows it byte for byte.
            fence = "`" * max(3, 1 + max((len(run) for run in re.findall("`+", s["command"])), default=0))
            lines += ["", f"Re-split with links, moving {s['rows_moved']:,} of {s['rows']:,} rows ({markdown_text(verdict)}):",
                      "", f"{fence}console", s["command"], fence]
        if s["unfixable"]:
            lines += ["", "Not fixed by re-splitting:"]
            lines += [f"- {markdown_text(c)}: {markdown_text(why)}" for c, why in s["unfixable"].items()]
    return "\n".join(lines) + "\n"


def contract_failure(checked: Iterable[tuple[str, list]], error: str | None = None, *, command: str = "check") -> dict[str, str]:
    """``check`` when a manifest breaks the contract: the JSON, JUnit and Markdown reports, so a CI gate reading them sees the failure.

    ``checked`` gives each manifest's path and its violations. The JSON keeps the shape of
    an ``mdprep-audit-report`` that failed (``result``, ``exit_code``, ``verdict``) with a
    ``contract`` list and no ``checks``: the leakage audit did not run. With ``error``
    (the message of the bad input that stopped ``check``, exit code 2), the reports say
    the gate could not run: ``"result": "error"``, ``"exit_code": 2``, and a JUnit
    ``<error>``, so no report of an earlier, passing run is left in place.
    """
    checked = list(checked)
    broken = [(path, vs) for path, vs in checked if vs]
    verdict = f"FAILED: {len(broken)} of {len(checked)} manifest(s) break the contract; the leakage audit did not run"
    if error is not None:
        verdict = f"ERROR: the gate could not run: {error}"
    doc = {
        "schema": "mdprep-audit-report",
        "version": 1,
        "result": "failed" if error is None else "error",
        "exit_code": 1 if error is None else 2,
        "verdict": verdict,
        "contract": [{"path": path, "check": v.check, "message": v.message} for path, vs in broken for v in vs],
        "checks": [],
    }
    # Paths and messages come from the user and the data: a control character would break the XML,
    # a backtick or a '|' the Markdown (the audit's own reports escape them the same way).
    cases = []
    for path, vs in checked:
        text = "\n".join(_xml_text(f"[{v.check}] {v.message}") for v in vs)  # one line per violation
        body = f"<failure message={_xml_attr(f'{len(vs)} violation(s)')} type=\"contract\">{text}</failure>" if vs else ""
        cases.append(f"  <testcase classname=\"mdprep.contract\" name={_xml_attr(path)}>{body}</testcase>")
    if error is not None:
        cases.append(
            f'  <testcase classname="mdprep.{command}" name="mdprep {command}"><error message={_xml_attr(verdict)} type="bad-input">'
            f"{_xml_text(error)}</error></testcase>"
        )
    junit = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<testsuite name="mdprep {command}" tests="{len(cases)}" failures="{len(broken)}" errors="{int(error is not None)}" skipped="0">\n'
        + "\n".join(cases)
        + "\n</testsuite>\n"
    )
    lines = [f"### mdprep {command}: {markdown_text(verdict)}", ""]  # the heading level of the audit's own Markdown
    lines += [f"- {markdown_text(path)}: \\[{markdown_text(v.check)}\\] {markdown_text(v.message)}" for path, vs in broken for v in vs]
    return {"json": json.dumps(doc, indent=2, sort_keys=True) + "\n", "junit": junit, "markdown": "\n".join(lines) + "\n"}


class _CallableModule(types.ModuleType):
    """This module, callable: ``mdprep.audit(frame, ...)`` is :func:`audit` (the package exposes both under one name)."""

    def __call__(self, *args: Any, **kwargs: Any) -> AuditReport:
        return audit(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
# help() and IDEs show audit's own parameters when the module is called.
sys.modules[__name__].__signature__ = inspect.signature(audit)

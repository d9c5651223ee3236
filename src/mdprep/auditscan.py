"""The value checks of the leakage audit on large manifest files, read once and never held as text.

At ten million rows, ``image_id``, ``patient_id`` and ``study_id`` are about 800 MB of Arrow
strings, yet the contract's unique ``image_id`` and the value checks (``image_overlap``,
``patient_overlap``, ``study_overlap``, ...) only need a hash of each value
(:mod:`mdprep.textkeys`) and the text of the few rows whose hash repeats or occurs in two
splits. So :func:`scan_for_audit` reads each text column on its own, in batches, on every
core. Each batch is validated as :func:`mdprep.manifest.read_manifest` validates it, hashed,
and let go, but for the text of rows that show a leak as they pass (runs of one value in two
splits). Once a column's candidates are known from its hashes, only the text still missing
is read again, and only in the row groups that hold it. Validation and the checks share that
one hash pass per column; while a column is read, the scan holds about 9 bytes per row for it.

The report comes from :func:`mdprep.audit.audit_rows`, the function that :func:`mdprep.audit.audit`
runs on a frame, fed with the same rows. It is therefore the same report, byte for byte.

The scan only answers what it can judge exactly as reading the file would. When a file
breaks the contract, holds a column of another type, or has a grouping that may be
degenerate (or when other checks are asked for), it gives up and returns None. The caller
then reads the manifest as before, and that read reports what is wrong.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import textkeys
from .audit import HEAD_ROWS, GROUPING_COLUMNS, CheckResult, _empty_findings, _empty_pairs, _result, head_grouping, overlap_result, skipped
from .choices import VALUE_CHECKS
from .errors import MdprepError
from .fileio import is_stdio
from .manifest import (
    CANONICAL_TYPES,
    REQUIRED_COLUMNS,
    Manifest,
    _MAX_STRING_BYTES,
    _metadata,
    _salvaged,
    _settled_in_file,
    fold_violation,
    recorded_folds,
)

#: Rows decoded at a time: small batches keep the decoder's buffers small and in cache.
BATCH_ROWS = 1 << 16
#: Most distinct values of a split column (their codes are int16).
_MOST_PARTS = 32767


class _GiveUp(Exception):
    """The scan cannot judge this file as reading it would: the caller reads it."""


@dataclass
class _File:
    path: str
    rows: int
    offset: int  # the row of the combined rows where this file starts
    columns: list[str]  # the columns read (those of the audit that the file has, but ``path``)
    manifest: Manifest  # the metadata, with an empty frame


@dataclass
class _Column:
    """What the scan kept of one text column: per partition, the counts and the candidate rows; their text."""

    counts: dict[str, tuple[int, int]] = field(default_factory=dict)  # partition -> (checked, unchecked)
    candidates: dict[str, np.ndarray] = field(default_factory=dict)  # partition -> rows (sorted)
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # the rows whose text is kept (sorted)
    text: pa.Array | None = None  # their text, in that order


class ManifestScan:
    """One or several manifest files scanned for the value checks (see :func:`scan_for_audit`).

    ``manifests`` hold each file's metadata (labels, root, history) and an empty frame;
    ``rows`` the number of rows of each file. :meth:`audit_rows` gives the rows to
    :func:`mdprep.audit.audit_rows`.
    """

    def __init__(self, files: list[_File], columns: list[str], split_col: str, parts: np.ndarray, part_names: list[str] | None) -> None:
        self._files = files
        self.columns = columns
        self.split_col = split_col
        self.parts = parts  # each row's split code, -1 for none
        self.part_names = part_names  # None: one split per file, named by the caller
        self.fold: tuple[np.ndarray, list[str]] | None = None  # each row's fold code (-1: none) and the "fold K" names
        self.text_columns: dict[str, _Column] = {}

    @property
    def manifests(self) -> list[Manifest]:
        """Each file's metadata, as a manifest with an empty frame."""
        return [f.manifest for f in self._files]

    @property
    def rows(self) -> list[int]:
        """The number of rows of each file."""
        return [f.rows for f in self._files]

    def audit_rows(self, names: Sequence[str] | None = None) -> "ScanRows":
        """The scanned rows for :func:`mdprep.audit.audit_rows`; ``names`` names the split of each file (several files)."""
        part_names = self.part_names if self.part_names is not None else [str(n) for n in names or ()]
        return ScanRows(self, part_names)


class ScanRows:
    """The rows of a :class:`ManifestScan`, as :func:`mdprep.audit.audit_rows` asks for them (value checks only)."""

    def __init__(self, scan: ManifestScan, part_names: list[str]) -> None:
        self._scan = scan
        self._part_names = np.asarray(part_names + [""], dtype=object)  # -1 (never a candidate) reads ""
        self.columns = list(scan.columns)

    def has_values(self, column: str) -> bool:
        """Whether some row has a value in ``column`` (the fold column: the only one asked)."""
        if column == "fold" and self._scan.fold is not None:
            return bool((self._scan.fold[0] >= 0).any())
        found = self._scan.text_columns.get(column)
        return found is not None and any(checked for checked, _ in found.counts.values())

    def unassigned(self, split_col: str) -> int:
        """The rows with no split."""
        return int((self._scan.parts < 0).sum())

    def degenerate(self, group: str, split_col: str, unassigned: int) -> dict | None:
        """None: the scan gave up on any grouping whose first rows did not show it sound."""
        return None

    def partition(self, partition: str, col: str) -> pd.DataFrame:
        """Not held: a scan answers the value checks only (the caller reads the manifest for the others)."""
        raise TypeError("a scanned manifest holds no frame; read it with mdprep.manifest.read_manifest for checks other than the value checks")

    def _part(self, partition: str) -> tuple[np.ndarray, np.ndarray]:
        if partition == "fold":
            codes, names = self._scan.fold
            return codes, np.asarray(names + [""], dtype=object)
        return self._scan.parts, self._part_names

    def value_overlap(self, column: str, partition: str, col: str, check: str) -> CheckResult:
        """:func:`mdprep.audit.value_overlap` of ``column`` between the parts named by ``col``, from the scan."""
        codes, names = self._part(partition)
        in_part = int((codes >= 0).sum())
        if column not in self.columns:
            return skipped(check, partition, f"no {column!r} column", in_part)
        kept = self._scan.text_columns[column]
        checked, unchecked = kept.counts[partition]
        if not checked:
            return skipped(check, partition, f"{column!r} is empty in every row", in_part, "empty column")
        rows = kept.candidates[partition]
        if not len(rows):
            return _result(check, partition, _empty_findings(), _empty_pairs(), checked, unchecked)
        ids = self._scan.text_columns["image_id"]
        frame = pd.DataFrame(
            {
                column: _text_of(kept, rows),
                col: pd.Series(names[codes[rows]], dtype=object),
                "image_id": _text_of(ids, rows),
            }
        )
        return overlap_result(frame, column, split_col=col, check=check, partition=partition, checked=checked, unchecked=unchecked)


def _text_of(kept: _Column, rows: np.ndarray) -> pd.Series:
    """The kept text of ``rows`` (all kept), as Arrow-backed strings like those a read manifest holds."""
    at = np.searchsorted(kept.rows, rows)
    if len(rows) and (int(at[-1]) >= len(kept.rows) or not np.array_equal(kept.rows[at], rows)):
        raise RuntimeError("the audit scan lost the text of rows it reports")  # a bug, never bad input
    return pd.Series(kept.text.take(pa.array(at)), dtype=pd.ArrowDtype(pa.string()))


# ----------------------------------------------------------------------------- the scan


def scan_for_audit(
    paths: Sequence[str],
    columns: Sequence[str],
    *,
    split_col: str,
    checks: Sequence[str],
    group: str = "patient_id",
    one_split_per_file: bool = False,
    min_rows: int | None = None,
) -> ManifestScan | None:
    """Scan manifest files for the value ``checks``, or None when they must be read.

    Parameters
    ----------
    paths : sequence of str
        One manifest with a ``split_col``, or several (``one_split_per_file``), each one split.
    columns : sequence of str
        The columns the audit reads (``path`` is validated from the Parquet statistics and
        not read, as :func:`mdprep.manifest.read_manifest` does with ``check_only``).
    checks : sequence of str
        The checks to run, all of :data:`mdprep.choices.VALUE_CHECKS`.
    group : str
        The column of ``patient_overlap``.
    min_rows : int, optional
        Fewer rows in all are read instead (default: :data:`mdprep.textkeys.MIN_ROWS`, from
        which columns are hashed).

    Returns
    -------
    ManifestScan or None
        None, having changed nothing, when any file is standard input or is not a manifest
        whose columns are of the contract's types, when a file breaks the contract (or its
        64-bit hashes of ``image_id`` repeat), when ``patient_overlap``'s grouping may be
        degenerate, when a check is not a value check, or when the files hold fewer than
        ``min_rows`` rows. Reading the files then decides, and reports, as before.
    """
    if any(is_stdio(p) for p in paths) or not all(c in VALUE_CHECKS for c in checks) or group == split_col or split_col == "fold":
        return None
    try:
        return _Scanner(paths, columns, split_col, checks, group, one_split_per_file).run(textkeys.MIN_ROWS if min_rows is None else min_rows)
    except (_GiveUp, pa.ArrowException, OSError, ValueError, MdprepError):
        return None


class _Scanner:
    def __init__(self, paths, columns, split_col, checks, group, one_split_per_file) -> None:
        self.paths = [os.fspath(p) for p in paths]
        self.columns = list(dict.fromkeys(columns))
        self.split_col = split_col
        self.checks = list(checks)
        self.group = group
        self.one_split_per_file = one_split_per_file
        self._local = threading.local()

    # -- files

    def _parquet(self, path: str, dictionary: Sequence[str] = ()) -> pq.ParquetFile:
        """This thread's reader of ``path`` (a reader is not shared between threads)."""
        cache = self._local.__dict__.setdefault("files", {})
        key = (path, tuple(dictionary))
        if key not in cache:
            cache[key] = pq.ParquetFile(path, read_dictionary=list(dictionary) or None)
        return cache[key]

    def _probe(self, path: str, offset: int) -> _File:
        parquet = pq.ParquetFile(path)
        schema = parquet.schema_arrow
        names = schema.names
        if len(set(names)) != len(names) or "image_id" not in names or (not self.one_split_per_file and self.split_col not in names):
            raise _GiveUp
        meta, violations = _metadata(schema.empty_table(), path)
        if violations or any(c not in names for c in REQUIRED_COLUMNS):
            raise _GiveUp
        labels, root, history = _salvaged(meta)
        if "path" in self.columns and _settled_in_file(path, ["path"]) != ["path"]:
            raise _GiveUp
        read = [c for c in self.columns if c in names and c != "path"]
        for c in read:
            kind = schema.field(c).type
            if c in labels or not (kind.equals(pa.int16()) if c == "fold" else kind.equals(pa.string())):
                raise _GiveUp
        return _File(path, parquet.metadata.num_rows, offset, read, Manifest(pd.DataFrame(), labels=tuple(l for l in labels if l in read), root=root, history=history))

    # -- the scan

    def run(self, min_rows: int) -> ManifestScan | None:
        files = []
        offset = 0
        for path in self.paths:
            files.append(self._probe(path, offset))
            offset += files[-1].rows
        self.files, self.n = files, offset
        if self.n < min_rows:
            return None
        columns = list(dict.fromkeys(c for f in files for c in f.columns))
        if self.one_split_per_file and self.split_col not in columns:
            columns.append(self.split_col)
        value_columns = dict(VALUE_CHECKS, patient_overlap=self.group)
        hashed = list(dict.fromkeys(value_columns[c] for c in self.checks if value_columns[c] in columns))
        if self.split_col in hashed or self.split_col in REQUIRED_COLUMNS or "fold" in hashed:
            return None  # the split or a compared column is a column of another role: left to reading
        self.bits = textkeys.key_bits(self.n)
        self.pool = ThreadPoolExecutor(textkeys._cores())
        try:
            parts, part_names = self._parts()
            scan = ManifestScan(files, columns, self.split_col, parts, part_names)
            if "fold" in columns:
                scan.fold = self._folds()
            self.show_repeat = "patient_overlap" in self.checks and self.group in columns and self._check_head(scan, columns)
            partitions = {"split": parts}
            if scan.fold is not None and (scan.fold[0] >= 0).any():
                partitions["fold"] = scan.fold[0]
            text = [c for c in columns if c not in ("fold", self.split_col) or (c == self.split_col and self.one_split_per_file)]
            # Columns only validated first, then those hashed, image_id last: it keeps the text
            # of the rows every other check may report.
            order = [c for c in text if c not in hashed and c != "image_id"] + [c for c in hashed if c != "image_id"] + ["image_id"]
            for column in order[:-1]:
                kept = self._column(column, hash_it=column in hashed, partitions=partitions)
                if kept is not None:
                    scan.text_columns[column] = kept
            named = _union(rows for kept in scan.text_columns.values() for rows in kept.candidates.values())
            scan.text_columns["image_id"] = self._column("image_id", hash_it=True, partitions=partitions, capture=named)
            missing = {}
            for column, kept in scan.text_columns.items():
                wanted = _union(kept.candidates.values()) if column != "image_id" else _union([named, *kept.candidates.values()])
                have = np.isin(kept.rows, wanted)  # what was captured and is wanted
                kept.rows, kept.text = kept.rows[have], kept.text.filter(pa.array(have))
                missing[column] = np.setdiff1d(wanted, kept.rows, assume_unique=True)
            for column, text in self._fetch(missing).items():  # read again where some text is missing
                kept = scan.text_columns[column]
                rows = np.concatenate([kept.rows, missing[column]])
                order = np.argsort(rows, kind="stable")
                kept.rows, kept.text = rows[order], pa.concat_arrays([kept.text, text]).take(pa.array(order))
        finally:
            self.pool.shutdown(cancel_futures=True)  # giving up: the rest of a column is not read
        return scan

    def _tasks(self, column: str) -> list[tuple[_File, int, int]]:
        """(file, row group, first row) in row order, for the files that have ``column``."""
        out = []
        for f in self.files:
            if column in f.columns:
                meta = self._parquet(f.path).metadata
                starts = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]) + f.offset
                out += [(f, g, int(starts[g])) for g in range(meta.num_row_groups)]
        return out

    def _batches(self, f: _File, group: int, columns: Sequence[str], dictionary: bool = False, validate: bool = True) -> Iterator[pa.RecordBatch]:
        """The batches of ``columns`` of one row group, validated as :func:`mdprep.manifest.read_manifest` validates them."""
        parquet = self._parquet(f.path, list(columns) if dictionary else ())
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS, row_groups=[group], columns=list(columns), use_threads=False):
            if validate:
                batch.validate(full=True)  # a damaged page may hold text that is not UTF-8
            yield batch

    def _parts(self) -> tuple[np.ndarray, list[str] | None]:
        """Each row's split code (-1: none) and the split names, or the file's index (one split per file)."""
        if self.one_split_per_file:
            return np.repeat(np.arange(len(self.files), dtype=np.int16), [f.rows for f in self.files]), None
        f = self.files[0]
        names: dict[str, int] = {}
        size = 0

        def read(group: int) -> list[tuple[np.ndarray, list[str], int]]:
            out = []
            for batch in self._batches(f, group, [self.split_col], dictionary=True):
                array = batch.column(0)
                local = array.dictionary.to_pylist()
                indices = array.indices.fill_null(len(local)).to_numpy(zero_copy_only=False)
                lengths = np.append(np.asarray(pc.binary_length(array.dictionary), dtype=np.int64), 0)
                out.append((indices, local, int(lengths[indices].sum())))
            return out

        codes = []
        for pieces in self.pool.map(read, range(self._parquet(f.path).num_row_groups)):
            for indices, local, nbytes in pieces:
                for name in local:
                    names.setdefault(name, len(names))
                if len(names) > _MOST_PARTS:
                    raise _GiveUp
                codes.append(np.array([names[v] for v in local] + [-1], dtype=np.int16)[indices])
                size += nbytes
        if self.split_col in CANONICAL_TYPES and size > _MAX_STRING_BYTES:
            raise _GiveUp
        return (np.concatenate(codes) if codes else np.zeros(0, np.int16)), list(names)

    def _folds(self) -> tuple[np.ndarray, list[str]]:
        """Each row's fold code (-1: none) and the names ``fold K`` of the codes; the contract's fold rule checked per file."""
        values = np.full(self.n, -1, dtype=np.int64)
        present = np.zeros(self.n, dtype=bool)
        for f in self.files:
            if "fold" not in f.columns:
                continue
            arrays = [b.column(0) for g in range(self._parquet(f.path).num_row_groups) for b in self._batches(f, g, ["fold"])]
            column = pa.chunked_array(arrays, type=pa.int16())
            mask = ~np.asarray(column.is_null(), dtype=bool)
            numbers = column.fill_null(0).to_numpy().astype(np.int64)
            if fold_violation(np.where(mask, numbers, np.nan), recorded_folds(f.manifest.history)) is not None:
                raise _GiveUp
            values[f.offset : f.offset + f.rows] = numbers
            present[f.offset : f.offset + f.rows] = mask
        distinct = np.flatnonzero(np.bincount(values[present], minlength=1))  # folds are 0..32767 (int16, none below 0)
        codes = np.full(self.n, -1, dtype=np.int16)
        codes[present] = np.searchsorted(distinct, values[present])
        return codes, [f"fold {int(v)}" for v in distinct]

    def _head(self, column: str, stop: int) -> pa.ChunkedArray:
        """The first ``stop`` values of ``column`` over the files (null where a file lacks it)."""
        pieces = []
        for f in self.files:
            if f.offset >= stop:
                break
            want = min(f.rows, stop - f.offset)
            if column not in f.columns:
                pieces.append(pa.nulls(want, pa.string()))
                continue
            got = 0
            for batch in self._parquet(f.path).iter_batches(batch_size=min(BATCH_ROWS, max(want, 1)), columns=[column], use_threads=False):
                array = batch.column(0).slice(0, want - got)
                array.validate(full=True)
                pieces.append(array)
                got += len(array)
                if got >= want:
                    break
        return pa.chunked_array(pieces, type=pa.string())

    def _check_head(self, scan: ManifestScan, columns: list[str]) -> bool:
        """Whether the grouping is sound only if some group value repeats (see :func:`mdprep.audit.head_grouping`).

        False: the first rows with a split show it sound. True: no group value repeats in
        those rows (rows in random order of a large manifest): the group column's pass must
        show one that does (:meth:`_repeat_shown`). Gives up when the group may be the image
        id itself, which only the whole columns' text can tell.
        """
        assigned = np.flatnonzero(scan.parts >= 0)[:HEAD_ROWS]
        stop = int(assigned[-1]) + 1 if len(assigned) else 0
        head = pd.DataFrame(
            {c: pd.Series(self._head(c, stop).take(pa.array(assigned, pa.int64())), dtype=pd.ArrowDtype(pa.string())) for c in dict.fromkeys([self.group, "image_id"])}
        )
        grouping = any(c != self.group and c in columns for c in GROUPING_COLUMNS)
        maybe_image, maybe_single = head_grouping(head, self.group, grouping=grouping)
        if maybe_image:
            raise _GiveUp
        return maybe_single

    def _repeat_shown(self, column: str, eligible: np.ndarray, hashes: Any) -> bool:
        """Whether two ``eligible`` rows hold one value of ``column``: two rows of equal 64-bit ``hashes(rows)``, read.

        Rows spread over the column (at most 65,536) are looked at first: a column whose
        values repeat shows a pair among them, at the cost of a small sort; then all rows.
        """
        spread = np.arange(0, len(eligible), max(1, len(eligible) >> 16))
        for rows in (spread[eligible[spread]], np.flatnonzero(eligible)):
            h = hashes(rows)
            order = np.argsort(h, kind="stable")
            equal = np.flatnonzero(h[order][1:] == h[order][:-1])
            if len(equal):
                pair = np.sort(rows[order[[equal[0], equal[0] + 1]]])
                text = self._fetch({column: pair})[column].to_pylist()
                return text[0] == text[1]
        return False

    def _column(self, column: str, *, hash_it: bool, partitions: dict[str, np.ndarray], capture: np.ndarray | None = None) -> _Column | None:
        """Read, validate and (``hash_it``) hash one text column: its counts and candidate rows per partition.

        No text is kept but that of the ``capture`` rows (sorted) and, for the other columns,
        of runs of rows with one key in two parts (a leaking patient's images, which usually
        come together): :meth:`_fetch` reads the rest of the candidates' text once every
        column is done. image_id, read last, captures the rows that the other columns'
        findings will name.
        """
        bits = self.bits
        image = column == "image_id"
        # Both halves of the 64-bit hashes are kept: the few rows that one half picks are told
        # apart by both, so hash collisions leave next to no candidates, and a clean column none.
        wide = bits == 32
        capture = np.zeros(0, np.int64) if capture is None else capture

        def read(task: tuple[_File, int, int]) -> dict[str, Any]:
            f, group, first = task
            got: dict[str, Any] = {"first": first, "bytes": 0, "nulls": 0, "high": [], "low": [], "null": [], "taken": [], "rows": [], "ordered": True, "ends": None}
            last = first + self._parquet(f.path).metadata.row_group(group).num_rows
            want = capture[np.searchsorted(capture, first) : np.searchsorted(capture, last)] - first
            at = 0
            previous = None
            for batch in self._batches(f, group, [column]):
                array = batch.column(0)
                got["bytes"] += _text_bytes(array)
                got["nulls"] += array.null_count
                if hash_it:
                    h = textkeys.chunk_keys(array, 64 if wide else bits)
                    if wide:
                        halves = h.view(np.uint32)  # any half of the hash is a key
                        got["high"].append(halves[1::2].copy())
                        got["low"].append(halves[0::2].copy())
                    else:
                        got["high"].append(h)
                    got["null"].append(textkeys.null_mask(array))
                if image and got["ordered"] and len(array):
                    # Strictly increasing ids are unique: no sort of their hashes is needed.
                    got["ordered"] = (previous is None or previous < array[0].as_py()) and (
                        len(array) < 2 or pc.all(pc.greater(array.slice(1), array.slice(0, len(array) - 1))).as_py()
                    )
                    previous = array[-1].as_py()
                    got["ends"] = (got["ends"] or (array[0].as_py(),))[:1] + (previous,)
                local = want[np.searchsorted(want, at) : np.searchsorted(want, at + len(array))] - at
                if hash_it and not image:
                    local = _runs_across(got["high"][-1], got["null"][-1], [codes[first + at : first + at + len(array)] for codes in partitions.values()])
                if len(local):
                    got["taken"].append(array.take(pa.array(local)))
                    got["rows"].append(local + first + at)
                at += len(array)
            return got

        sizes = {f.path: 0 for f in self.files}
        high = np.zeros(self.n if hash_it else 0, dtype=np.uint32 if bits == 32 else np.uint64)
        low = np.zeros(self.n if hash_it and wide else 0, dtype=np.uint32)
        null = np.ones(self.n if hash_it else 0, dtype=bool)  # rows of files without the column are null
        taken: list[pa.Array] = []
        taken_rows: list[np.ndarray] = []
        ordered = {f.path: True for f in self.files}
        ends: dict[str, Any] = {}
        for (f, _, _), got in zip(self._tasks(column), self.pool.map(read, self._tasks(column))):
            sizes[f.path] += got["bytes"]
            if got["nulls"] and column in REQUIRED_COLUMNS:
                raise _GiveUp  # a required column with nulls breaks the contract: reading reports it
            first = got["first"]
            for i, k in enumerate(got["high"]):
                high[first : first + len(k)] = k
                if wide:
                    low[first : first + len(k)] = got["low"][i]
                null[first : first + len(k)] = got["null"][i]
                first += len(k)
            taken += got["taken"]
            taken_rows += got["rows"]
            if image and got["ends"] is not None:
                before = ends.get(f.path)
                ordered[f.path] = ordered[f.path] and got["ordered"] and (before is None or before < got["ends"][0])
                ends[f.path] = got["ends"][1]
        if column in CANONICAL_TYPES and any(size > _MAX_STRING_BYTES for size in sizes.values()):
            raise _GiveUp  # more text than one Arrow string array holds: reading judges it
        if not hash_it:
            return None

        def hashes(rows: np.ndarray) -> np.ndarray:
            """The 64-bit hashes of ``rows``."""
            return (high[rows].astype(np.uint64) << np.uint64(32)) | low[rows] if wide else high[rows]

        if column == self.group and self.show_repeat:
            # degenerate_grouping reads the whole column when no group value repeats in the first rows: one that repeats settles it.
            if not self._repeat_shown(column, ~null & (partitions["split"] >= 0), hashes):
                raise _GiveUp
        out = _Column(
            rows=np.concatenate(taken_rows) if taken_rows else np.zeros(0, np.int64),
            text=pa.concat_arrays(taken) if taken else pa.array([], type=pa.string()),
        )
        if image:
            for f in self.files:  # the contract, per file: image ids are unique
                if ordered[f.path]:
                    continue
                rows = np.flatnonzero(textkeys.repeated(high[f.offset : f.offset + f.rows])) + f.offset
                if len(rows) and (not wide or textkeys.repeated(hashes(rows)).any()):
                    raise _GiveUp  # equal 64-bit hashes: maybe a repeated id, which reading reports
        for partition, codes in partitions.items():
            in_part = codes >= 0
            checked = int((in_part & ~null).sum())
            out.counts[partition] = (checked, int(in_part.sum()) - checked)
            if image and len(self.files) == 1:
                out.candidates[partition] = np.zeros(0, np.int64)  # unique ids: none is in two parts
                continue
            parts = np.where(null, codes.dtype.type(-1), codes)
            across = textkeys.across(high, parts, bits)
            if across is None:
                raise _GiveUp
            rows = np.flatnonzero(across)
            if wide and len(rows):  # the same question of the candidates' 64-bit hashes
                rows = rows[textkeys.across(hashes(rows), parts[rows], 64)]
            out.candidates[partition] = rows
        return out

    def _fetch(self, wanted: dict[str, np.ndarray]) -> dict[str, pa.Array]:
        """The text of the ``wanted`` rows (sorted) of each column, read again row group by row group, only where wanted."""
        tasks = []
        for f, group, first in self._tasks("image_id"):  # every file has image_id: every row group
            last = first + self._parquet(f.path).metadata.row_group(group).num_rows
            here = {c: rows[np.searchsorted(rows, first) : np.searchsorted(rows, last)] - first for c, rows in wanted.items() if c in f.columns}
            here = {c: rows for c, rows in here.items() if len(rows)}
            if here:
                tasks.append((f, group, here))

        def read(task) -> dict[str, list[pa.Array]]:
            f, group, here = task
            got: dict[str, list[pa.Array]] = {c: [] for c in here}
            stop = max(int(rows[-1]) for rows in here.values()) + 1
            at = 0
            for batch in self._batches(f, group, list(here), validate=False):  # validated when first read
                n = batch.num_rows
                for c, rows in here.items():
                    local = rows[np.searchsorted(rows, at) : np.searchsorted(rows, at + n)] - at
                    if len(local):
                        got[c].append(batch.column(c).take(pa.array(local)))
                at += n
                if at >= stop:
                    break
            return got

        out: dict[str, list[pa.Array]] = {c: [] for c in wanted}
        for got in self.pool.map(read, tasks):
            for c, arrays in got.items():
                out[c] += arrays
        return {c: pa.concat_arrays(arrays) if arrays else pa.array([], type=pa.string()) for c, arrays in out.items()}


def _runs_across(keys: np.ndarray, null: np.ndarray, parts: list[np.ndarray]) -> np.ndarray:
    """Rows (of one batch) in runs of one key that hold two parts of some partition: candidates caught as they pass.

    Only adjacent rows are compared (O(rows)): a leaking value whose rows come together is
    caught whole here, the others are found by the scan's sort and read again.
    """
    same = keys[1:] == keys[:-1]
    if not same.any():
        return np.zeros(0, np.int64)
    pairs = np.zeros(len(same), dtype=bool)
    for codes in parts:
        q = np.where(null, codes.dtype.type(-1), codes)
        pairs |= same & (q[1:] != q[:-1]) & (q[1:] >= 0) & (q[:-1] >= 0)
    if not pairs.any():
        return np.zeros(0, np.int64)
    run = np.concatenate([[0], np.cumsum(~same)])  # each row's run of one key
    return np.flatnonzero(np.isin(run, run[1:][pairs]))


def _union(rows: Any) -> np.ndarray:
    """The sorted distinct rows of several arrays of rows."""
    rows = [r for r in rows if len(r)]
    return textkeys._distinct(np.sort(np.concatenate(rows))) if rows else np.zeros(0, np.int64)


def _text_bytes(array: pa.Array) -> int:
    """The bytes of text of a string array (what :func:`mdprep.manifest._is_text` sums)."""
    if not len(array):
        return 0
    bounds = np.frombuffer(array.buffers()[1], dtype=np.int32, count=array.offset + len(array) + 1)
    return int(bounds[-1]) - int(bounds[array.offset])


def scannable(checks: Sequence[str] | None, time_col: str | None) -> bool:
    """Whether an audit with these options may be scanned (:func:`scan_for_audit`): value checks only, no dates."""
    return checks is not None and time_col is None and all(c in VALUE_CHECKS for c in checks)

"""The manifest contract, its validation, and its Parquet I/O.

A manifest is one row per image. Every mdprep command reads and writes it through
this module only, so the contract lives in exactly one place (see docs/manifest.md):

* canonical columns with fixed names and Arrow types (:data:`CANONICAL_TYPES`);
  ``image_id``, ``path`` and ``patient_id`` are required and never null, and
  ``image_id`` is unique;
* label columns, one per finding, ``int8`` with 1 positive, 0 negative,
  -1 uncertain and null not mentioned; which columns are labels is recorded in
  the file's metadata so no command has to guess;
* provenance: the file's Parquet key-value metadata holds, under ``mdprep``, a JSON
  document with the format version, the label columns, the image root and the
  history of commands (version, options, input fingerprints, seed) that made it.

The same manifest always serialises to the same bytes: there is no wall-clock time
in the data or the metadata, and writes go through :func:`mdprep.fileio.atomic_write`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from typing import Any, BinaryIO, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__
from ._lazy import LazyModule
from .errors import InputError, ManifestValidationError, MdprepError, Violation, cut_text, examples_text, short_repr
from .fileio import atomic_write, is_stdio, stdin_file, stdout_binary

FORMAT = "mdprep-manifest"
#: Version of the manifest contract written. 2: the resample column ``copy`` is named
#: ``copy_index`` (``copy`` clashed with :meth:`pandas.DataFrame.copy`); version 1 files are
#: still read, their ``copy`` renamed (:func:`upgraded_table`).
FORMAT_VERSION = 2
#: Columns renamed since a format version: ``{version: {old name: new name}}``, applied on
#: reading a file of an older version (see :func:`upgraded_table`).
RENAMED_COLUMNS: dict[int, dict[str, str]] = {2: {"copy": "copy_index"}}
METADATA_KEY = b"mdprep"

#: Canonical columns, in their canonical order, with their Arrow types.
CANONICAL_TYPES: dict[str, pa.DataType] = {
    "image_id": pa.string(),
    "path": pa.string(),
    "patient_id": pa.string(),
    "study_id": pa.string(),
    "series_uid": pa.string(),
    "sop_uid": pa.string(),
    "accession": pa.string(),
    "view": pa.string(),
    "sex": pa.string(),
    "age": pa.float32(),
    "study_date": pa.date32(),
    "split": pa.string(),
    "fold": pa.int16(),
}
#: Columns every manifest has, never null.
REQUIRED_COLUMNS: tuple[str, ...] = ("image_id", "path", "patient_id")
#: Arrow type of every label column.
LABEL_TYPE = pa.int8()
#: The values a label may take besides null.
LABEL_VALUES: tuple[int, ...] = (1, 0, -1)
POSITIVE, NEGATIVE, UNCERTAIN = 1, 0, -1

# pandas and the text hashes (which use pandas) are imported on first use: a command that
# builds its manifest in Arrow (`ingest table --preset nih`) never needs them.
pd = LazyModule("pandas")
textkeys = LazyModule("mdprep.textkeys")

#: Arrow integer and boolean types -> their nullable pandas types (filled on first use).
_PANDAS_TYPES: dict[pa.DataType, Any] = {}


def _pandas_type(arrow_type: pa.DataType) -> Any:
    if not _PANDAS_TYPES:
        _PANDAS_TYPES.update(
            {
                pa.int8(): pd.Int8Dtype(),
                pa.int16(): pd.Int16Dtype(),
                pa.int32(): pd.Int32Dtype(),
                pa.int64(): pd.Int64Dtype(),
                pa.uint8(): pd.UInt8Dtype(),
                pa.uint16(): pd.UInt16Dtype(),
                pa.uint32(): pd.UInt32Dtype(),
                pa.uint64(): pd.UInt64Dtype(),
                pa.bool_(): pd.BooleanDtype(),
            }
        )
    if arrow_type in _PANDAS_TYPES:
        return _PANDAS_TYPES[arrow_type]
    if pa.types.is_date(arrow_type) or pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        # Keep dates as dates and lists as lists: a round trip must not change types.
        return pd.ArrowDtype(arrow_type)
    return None


@dataclass(frozen=True, eq=False)
class Manifest:
    """A manifest in memory: the rows, which columns are labels, and where it came from.

    Attributes
    ----------
    frame : pandas.DataFrame
        One row per image, canonical columns plus labels plus any extra metadata.
    labels : list of str
        The label columns, in order: a list, so ``frame[m.labels]`` selects them. Each
        manifest holds its own copy (whatever sequence it was given), so changing the list
        of one manifest never changes another's.
    root : str or None
        Folder that ``path`` is relative to, where files exist.
    history : tuple of dict
        Provenance steps, oldest first (see :func:`provenance_step`).
    level : str
        What one row is (:data:`LEVELS`): ``"image"`` (one 2D image, the default),
        ``"series"`` (a DICOM series: ``mdprep ingest dicom --level series``) or
        ``"volume"`` (one NIfTI volume file). Stored in the metadata unless it is ``"image"``.

    Two manifests are equal only when they are the same object (``==`` compares no frames,
    which pandas cannot answer with one bool), so a manifest can go in a set or a dict; to
    compare contents, compare ``frame`` with :meth:`pandas.DataFrame.equals` and the other
    attributes one by one.

    Examples
    --------
    >>> import pandas as pd
    >>> m = Manifest(pd.DataFrame({"image_id": ["a"], "path": ["a.png"], "patient_id": ["p1"],
    ...                            "Edema": pd.array([1], dtype="Int8")}), labels=("Edema",))
    >>> validate(m)
    []
    >>> m.labels, m.frame[m.labels].shape
    (['Edema'], (1, 1))
    >>> m == m, m == Manifest(m.frame, labels=m.labels), len({m})
    (True, False, 1)
    """

    frame: pd.DataFrame
    labels: list[str] = field(default_factory=list)
    root: str | None = None
    history: tuple[dict, ...] = field(default_factory=tuple)
    level: str = "image"

    def __post_init__(self) -> None:
        # A list of its own: a caller's list (or another manifest's) is never shared.
        object.__setattr__(self, "labels", list(self.labels))

    def with_step(self, step: Mapping[str, Any]) -> "Manifest":
        """Return a copy with one more provenance step appended."""
        return replace(self, history=self.history + (dict(step),))

    def with_frame(self, frame: pd.DataFrame, labels: Sequence[str] | None = None) -> "Manifest":
        """Return a copy with new rows (and optionally new label columns)."""
        return replace(self, frame=frame, labels=list(self.labels if labels is None else labels))

    @property
    def metadata(self) -> dict:
        """The JSON document stored under the ``mdprep`` key of the Parquet metadata."""
        return metadata_document(self.labels, self.root, self.history, self.level)


#: What one row of a manifest is: a 2D image, a DICOM series, or a volume file (NIfTI).
LEVELS = ("image", "series", "volume")


def metadata_document(labels: Sequence[str], root: str | None = None, history: Sequence[Mapping[str, Any]] = (), level: str = "image") -> dict:
    """The JSON document of a manifest's ``mdprep`` metadata (see :attr:`Manifest.metadata`), from its parts.

    ``level`` is written only when it is not ``"image"``, so image manifests keep their bytes.

    >>> metadata_document(["Edema"])["labels"]
    ['Edema']
    >>> metadata_document([], level="series")["level"]
    'series'
    """
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "labels": list(labels),
        "root": root,
        "history": [dict(h) for h in history],
    }
    if level != "image":
        document["level"] = level
    return document


def schema_metadata(document: Mapping[str, Any]) -> dict[bytes, bytes]:
    """The Arrow schema metadata that stores a manifest's ``document`` (sorted keys, no spaces: the same bytes every time).

    >>> schema_metadata({"labels": [], "format": "mdprep-manifest"})
    {b'mdprep': b'{"format":"mdprep-manifest","labels":[]}'}
    """
    return {METADATA_KEY: json.dumps(document, sort_keys=True, separators=(",", ":")).encode()}


def provenance_step(
    command: str,
    options: Mapping[str, Any],
    inputs: Sequence[Mapping[str, Any]] = (),
    seed: int | None = None,
) -> dict:
    """One provenance record: which mdprep version ran which command on what.

    ``options`` holds only the options that change the output (not worker counts
    or verbosity), so the same inputs and options give byte-identical files.
    """
    return {
        "mdprep_version": __version__,
        "command": command,
        "options": {k: options[k] for k in sorted(options)},
        "inputs": [dict(i) for i in inputs],
        "seed": seed,
    }


# --------------------------------------------------------------------------- validation


def _label_violations(frame: pd.DataFrame, labels: Sequence[str]) -> list[Violation]:
    out: list[Violation] = []
    clash = [c for c in labels if c in CANONICAL_TYPES]
    if clash:
        out.append(
            Violation(
                "bad_label_column",
                None,
                len(clash),
                tuple(clash),
                f"label columns may not use canonical names ({examples_text(clash, len(clash))}); rename them",
            )
        )
    dupes = sorted({c for c in labels if list(labels).count(c) > 1})
    if dupes:
        out.append(
            Violation("bad_label_column", None, len(dupes), tuple(dupes), f"label columns listed twice: {examples_text(dupes, len(dupes))}")
        )
    for col in labels:
        if col not in frame.columns or col in clash:
            continue
        s = frame[col]
        if not (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)):
            if not s.notna().any():
                try:  # an empty column of text or nulls stores as int8 nulls; one of dates or structs cannot
                    _column_to_arrow(s, LABEL_TYPE)
                    continue
                except (pa.ArrowException, TypeError, ValueError):
                    pass
            # Values may be unhashable (lists, structs) or bytes: quote the first few as text.
            bad = pd.unique(np.array([v if isinstance(v, str) else repr(v) for v in s.dropna().head(1000)], dtype=object))[:5]
            what = f"non-numeric values ({examples_text(list(bad), len(bad))})" if len(bad) else f"no numbers (type {s.dtype})"
            out.append(
                Violation(
                    "bad_label_value",
                    col,
                    int(s.notna().sum()),
                    tuple(bad),
                    f"label column {col!r} holds {what}; labels are 1 (positive), 0 (negative), -1 (uncertain) or empty",
                )
            )
            continue
        if pd.api.types.is_integer_dtype(s.dtype):
            # The integers from -1 to 1 are exactly the label values: two reductions settle a valid column.
            low, high = s.min(), s.max()
            if pd.isna(low) or (low >= -1 and high <= 1):
                continue
        violation = label_value_violation(col, s.to_numpy(dtype="float64", na_value=np.nan))
        if violation:
            out.append(violation)
    return out


def labels_outside_range(values: np.ndarray) -> tuple[int, list, int]:
    """How many numeric label ``values`` (NaN for null) lie outside {1, 0, -1}, their distinct values (ints where whole), and how many distinct.

    >>> labels_outside_range(np.array([1.0, 2.0, 0.5, 2.0, np.nan]))
    (3, [2, 0.5], 2)
    """
    bad = ~np.isnan(values) & ~np.isin(values, LABEL_VALUES)
    distinct = pd.unique(values[bad])
    return int(bad.sum()), [int(v) if float(v).is_integer() else float(v) for v in distinct], len(distinct)


def label_value_violation(column: str, values: np.ndarray) -> Violation | None:
    """The violation for numeric label ``values`` (NaN for null) outside {1, 0, -1}, or None.

    >>> label_value_violation("Edema", np.array([1.0, 2.0, np.nan])).message
    "label column 'Edema' has 1 value(s) outside {1, 0, -1, null}: 2"
    """
    n_bad, shown, n_distinct = labels_outside_range(values)
    if not n_bad:
        return None
    shown = shown[:5]
    return Violation(
        "bad_label_value",
        column,
        n_bad,
        tuple(shown),
        f"label column {column!r} has {n_bad} value(s) outside {{1, 0, -1, null}}: {examples_text(shown, n_distinct)}",
    )


def validate_frame(
    frame: pd.DataFrame, labels: Sequence[str] = (), *, folds: int | None = None, settled: Sequence[str] = ()
) -> list[Violation]:
    """Check a frame against the manifest contract and return *every* violation.

    Nothing is raised here: the caller decides (see :func:`check`). The checks are
    missing required or label columns, nulls in required columns, duplicate
    ``image_id`` values (with examples), label values outside {1, 0, -1, null},
    canonical columns whose values cannot take the canonical type, and ``fold``
    values outside 0..``folds``-1 (below 0 when the fold count is unknown).

    ``settled`` names required columns left out of ``frame`` because they were
    already found present, of text and without nulls in the file itself (see
    :func:`read_manifest`); they are not reported missing.

    Text columns are judged without copies: Arrow-backed text is already text, and
    duplicate ids are found through hashes of the column (:func:`mdprep.textkeys.duplicated`),
    computed once and shared with the leakage audit.

    Examples
    --------
    >>> import pandas as pd
    >>> f = pd.DataFrame({"image_id": ["a", "a"], "path": ["x", "y"], "patient_id": [None, "p"]})
    >>> [v.check for v in validate_frame(f)]
    ['null_value', 'duplicate_image_id']
    """
    out: list[Violation] = []
    present = list(frame.columns)
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns and c not in settled]
    if missing:
        out.append(
            Violation(
                "missing_column",
                None,
                len(missing),
                tuple(missing),
                f"required column(s) {examples_text(missing, len(missing))} missing (columns present: "
                f"{', '.join(map(repr, present)) or 'none'})",
            )
        )
    missing_labels = [c for c in labels if c not in frame.columns]
    if missing_labels:
        out.append(
            Violation(
                "missing_column",
                None,
                len(missing_labels),
                tuple(missing_labels),
                f"label column(s) {examples_text(missing_labels, len(missing_labels))} are declared in the "
                "metadata but absent from the data",
            )
        )
    for col in REQUIRED_COLUMNS:
        if col in frame.columns:
            nulls = frame[col].isna().to_numpy()
            n = int(nulls.sum())
            if n:
                rows = np.flatnonzero(nulls)[:5].tolist()
                out.append(
                    Violation(
                        "null_value",
                        col,
                        n,
                        tuple(rows),
                        # Counting from 1, as every message of mdprep that names rows (the violation's rows stay 0-based positions).
                        f"{n} row(s) have no {col} (rows {examples_text([r + 1 for r in rows], n)}, counting from 1); every image needs one",
                    )
                )
    # Types first: a column that is not what the contract says (image ids as lists) is not compared below.
    typed: list[Violation] = []
    untyped: set[str] = set()
    for col, arrow_type in CANONICAL_TYPES.items():
        if col in frame.columns and col not in labels:
            if _is_text(frame[col], arrow_type):
                continue
            try:
                arr = _column_to_arrow(frame[col], arrow_type)
            except (pa.ArrowException, TypeError, ValueError) as exc:
                typed.append(
                    Violation(
                        "bad_type",
                        col,
                        int(frame[col].notna().sum()),
                        (),
                        f"column {col!r} cannot be stored as {arrow_type} ({cut_text(str(exc))}); fix its values",
                    )
                )
                untyped.add(col)
                continue
            if col == "fold":
                violation = fold_violation(arr.to_numpy(zero_copy_only=False), folds)
                if violation:
                    typed.append(violation)
    if "image_id" in frame.columns and "image_id" not in untyped:
        ids = frame["image_id"]
        dup_mask = textkeys.duplicated(ids)
        n_dup = int(dup_mask.sum())
        if n_dup:
            dup_ids = pd.unique(ids[dup_mask])
            out.append(
                Violation(
                    "duplicate_image_id",
                    "image_id",
                    n_dup,
                    tuple(dup_ids[:5]),
                    f"{len(dup_ids)} image_id value(s) occur more than once ({n_dup} rows), for example "
                    f"{examples_text(list(dup_ids), len(dup_ids))}; image ids must be unique",
                )
            )
    out.extend(typed)
    out.extend(_label_violations(frame, labels))
    return out


def fold_violation(values: np.ndarray, folds: int | None = None) -> Violation | None:
    """The violation for ``fold`` values (NaN or None for null) outside 0..``folds``-1, or None.

    With ``folds`` None (the fold count is not recorded) only negative values break the rule.

    >>> fold_violation(np.array([0, 1, 5, np.nan]), 5).message
    "column 'fold' has 1 value(s) outside 0..4 (the 5 folds of the last `mdprep split --folds 5`): 5; re-split with `mdprep split --folds K`"
    """
    v = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    known = ~np.isnan(v)
    bad = known & ((v < 0) | ((v >= folds) if folds is not None else False))
    n_bad = int(bad.sum())
    if not n_bad:
        return None
    distinct = pd.unique(v[bad])
    shown = [int(x) for x in distinct[:5]]
    if folds is None:
        rule = "below 0 (folds are numbered 0..K-1)"
    else:
        rule = f"outside 0..{folds - 1} (the {folds} folds of the last `mdprep split --folds {folds}`)"
    return Violation(
        "bad_fold",
        "fold",
        n_bad,
        tuple(shown),
        f"column 'fold' has {n_bad} value(s) {rule}: {examples_text(shown, len(distinct))}; re-split with `mdprep split --folds K`",
    )


def recorded_folds(history: Sequence[Mapping[str, Any]]) -> int | None:
    """The fold count of the last ``mdprep split`` in ``history`` (None when it made no folds or is absent).

    >>> recorded_folds([{"command": "split", "options": {"folds": 5}}, {"command": "resample", "options": {}}])
    5
    """
    for step in reversed(history):
        if isinstance(step, Mapping) and step.get("command") == "split":
            folds = step.get("options", {}).get("folds") if isinstance(step.get("options"), Mapping) else None
            return folds if isinstance(folds, int) and not isinstance(folds, bool) and folds >= 2 else None
    return None


def validate(manifest: Manifest) -> list[Violation]:
    """Every contract violation of ``manifest`` (an empty list when it is valid)."""
    return validate_frame(manifest.frame, manifest.labels, folds=recorded_folds(manifest.history))


# --------------------------------------------------------------------------- metadata shape


#: How to repair metadata of the wrong shape, said once after the broken rules.
METADATA_HINT = "re-create the manifest with mdprep (ingest, then the later steps) or repair its metadata (docs/manifest.md)"


def _metadata_violation(key: str, value: Any, wanted: str) -> Violation:
    return Violation("metadata", None, 1, (value,), f"metadata {key!r} must be {wanted}, found {short_repr(value)}; {METADATA_HINT}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _step_problem(step: Any) -> str | None:
    """What is wrong with one history step (see :func:`provenance_step`), or None."""
    if not isinstance(step, dict):
        return f"is {short_repr(step)}, not an object"
    for key, ok, wanted in (
        ("command", lambda v: isinstance(v, str), "text"),
        ("mdprep_version", lambda v: isinstance(v, str), "text"),
        ("options", lambda v: isinstance(v, dict), "an object"),
        ("inputs", lambda v: isinstance(v, list) and all(isinstance(i, dict) for i in v), "a list of objects"),
        ("seed", lambda v: v is None or _is_int(v), "an integer or null"),
    ):
        if key in step and not ok(step[key]):
            return f"has {key} {short_repr(step[key])}, not {wanted}"
    return None


def metadata_violations(meta: Any) -> list[Violation]:
    """Every way the ``mdprep`` metadata document breaks its shape (docs/manifest.md#metadata-and-provenance).

    The document is a JSON object whose ``format`` is ``"mdprep-manifest"``, whose
    ``format_version`` is an integer from 1, whose ``labels`` is a list of column
    names (text), whose ``root`` is text or null and whose ``history`` is a list of
    objects (each with text ``command`` and ``mdprep_version``, an object ``options``,
    a list of objects ``inputs`` and an integer or null ``seed``, where present).
    Absent ``labels``, ``root`` and ``history`` mean none. ``level``, when present, is one of
    :data:`LEVELS` (absent: ``"image"``).

    Examples
    --------
    >>> [v.message.split(",")[0] for v in metadata_violations({"format": "mdprep-manifest", "format_version": 1, "labels": "Edema"})]
    ["metadata 'labels' must be a list of label column names (text)"]
    """
    if not isinstance(meta, dict):
        return [_metadata_violation("mdprep", meta, "a JSON object")]
    out = []
    if meta.get("format") != FORMAT:
        out.append(_metadata_violation("format", meta.get("format"), repr(FORMAT)))
    version = meta.get("format_version")
    if not _is_int(version) or version < 1:
        out.append(_metadata_violation("format_version", version, "the integer 1" if FORMAT_VERSION == 1 else f"an integer from 1 to {FORMAT_VERSION}"))
    labels = meta.get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(l, str) and l for l in labels):
        out.append(_metadata_violation("labels", labels, "a list of label column names (text)"))
    root = meta.get("root")
    if root is not None and not isinstance(root, str):
        out.append(_metadata_violation("root", root, "the image folder (text) or null"))
    level = meta.get("level", "image")
    if level not in LEVELS:
        out.append(_metadata_violation("level", level, "one of " + ", ".join(map(repr, LEVELS))))
    history = meta.get("history", [])
    if not isinstance(history, list):
        out.append(_metadata_violation("history", history, "a list of provenance steps (objects)"))
    else:
        problems = [(i, p) for i, step in enumerate(history) if (p := _step_problem(step))]
        if problems:
            first, why = problems[0]
            out.append(
                Violation(
                    "metadata",
                    None,
                    len(problems),
                    tuple(i for i, _ in problems[:5]),
                    f"metadata 'history' must be a list of provenance steps: {len(problems)} step(s) are malformed "
                    f"(step {first} {why}); {METADATA_HINT}",
                )
            )
    return out


def _salvaged_level(meta: Any) -> str:
    """The level of a metadata document (``"image"`` when absent or malformed)."""
    level = meta.get("level", "image") if isinstance(meta, dict) else "image"
    return level if level in LEVELS else "image"


def _salvaged(meta: Any) -> tuple[list[str], str | None, tuple[dict, ...]]:
    """The labels, root and history of a metadata document, keeping only well-formed parts."""
    meta = meta if isinstance(meta, dict) else {}
    labels = meta.get("labels", [])
    root = meta.get("root")
    history = meta.get("history", [])
    return (
        [l for l in labels if isinstance(l, str) and l] if isinstance(labels, list) else [],
        root if isinstance(root, str) else None,
        tuple(h for h in history if _step_problem(h) is None) if isinstance(history, list) else (),
    )


def check(manifest: Manifest, *, path: str | None = None) -> Manifest:
    """Return ``manifest`` unchanged if valid, else raise one error listing every violation."""
    violations = validate(manifest)
    if violations:
        raise ManifestValidationError(violations, path=path)
    return manifest


def order_columns(frame: pd.DataFrame, labels: Iterable[str] = ()) -> pd.DataFrame:
    """Canonical columns first (in contract order), then labels, then the rest as they came."""
    labels = list(labels)
    canonical = [c for c in CANONICAL_TYPES if c in frame.columns]
    rest = [c for c in frame.columns if c not in CANONICAL_TYPES and c not in labels]
    return frame[canonical + labels + rest]


# --------------------------------------------------------------------------- Arrow conversion

#: The most bytes of text one Arrow ``string`` array holds (32-bit offsets).
_MAX_STRING_BYTES = (1 << 31) - 1


def _is_text(series: pd.Series, arrow_type: pa.DataType) -> bool:
    """Whether ``series`` is Arrow-backed text that :func:`_column_to_arrow` turns into ``arrow_type`` (``string``) unchanged.

    Such a column needs no conversion to be judged: it converts exactly when its text
    fits one ``string`` array, which the sizes of its chunks tell without a copy.
    """
    if not pa.types.is_string(arrow_type) or not isinstance(series.dtype, (pd.StringDtype, pd.ArrowDtype)):
        return False
    if isinstance(series.dtype, pd.StringDtype) and series.dtype.storage != "pyarrow":
        return False
    arrow = series.array.__arrow_array__()
    if not (pa.types.is_string(arrow.type) or pa.types.is_large_string(arrow.type)):
        return False
    chunks = arrow.chunks if isinstance(arrow, pa.ChunkedArray) else [arrow]
    size = 0
    for chunk in chunks:
        if len(chunk):
            offsets = chunk.buffers()[1]
            width = 8 if pa.types.is_large_string(chunk.type) else 4
            bounds = np.frombuffer(offsets, dtype=np.int64 if width == 8 else np.int32, count=chunk.offset + len(chunk) + 1)
            size += int(bounds[-1]) - int(bounds[chunk.offset])
    return size <= _MAX_STRING_BYTES


def _column_to_arrow(series: pd.Series, arrow_type: pa.DataType | None) -> pa.Array:
    arr = pa.array(series, from_pandas=True)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arrow_type is not None and not arr.type.equals(arrow_type):
        if pa.types.is_string(arrow_type) and not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type) or pa.types.is_null(arr.type)):
            raise TypeError(f"expected text, found {arr.type}")
        arr = arr.cast(arrow_type, safe=True)
    elif arrow_type is None:
        if pa.types.is_large_string(arr.type) or pa.types.is_string_view(arr.type):
            arr = arr.cast(pa.string())
        elif pa.types.is_null(arr.type):
            arr = arr.cast(pa.string())
    return arr


def _target_type(manifest: Manifest, col: str) -> pa.DataType | None:
    """The Arrow type the contract gives column ``col`` (None: whatever its values make)."""
    return LABEL_TYPE if col in manifest.labels else CANONICAL_TYPES.get(col)


def to_arrow(manifest: Manifest, *, converted: Mapping[str, pa.Array] | None = None) -> pa.Table:
    """Convert a (valid) manifest to an Arrow table with canonical types and metadata.

    ``converted`` gives columns already converted (by :func:`write_manifest`).
    """
    frame = manifest.frame
    arrays, fields = [], []
    for col in frame.columns:
        if converted is not None and col in converted:
            arr = converted[col]
        else:
            arr = _column_to_arrow(frame[col], _target_type(manifest, col))
        arrays.append(arr)
        fields.append(pa.field(str(col), arr.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=schema_metadata(manifest.metadata)))


def frame_from_arrow(table: pa.Table, *, arrow_text: bool = False) -> pd.DataFrame:
    """Arrow to pandas the way every command sees a manifest: nullable integers, dates and lists kept.

    ``arrow_text`` keeps text columns as they are in Arrow (``pd.ArrowDtype(pa.string())``)
    instead of converting them to pandas' ``str`` (which stores 8-byte offsets), for
    commands that only compare text and hold a very large manifest.
    """
    mapper = _pandas_type
    if arrow_text:
        mapper = lambda t: pd.ArrowDtype(t) if pa.types.is_string(t) else _pandas_type(t)  # noqa: E731
    return table.replace_schema_metadata(None).to_pandas(types_mapper=mapper)


def _metadata(table: pa.Table, path: str | None) -> tuple[Any, list[Violation]]:
    """The ``mdprep`` metadata document of ``table`` and the ways it breaks its shape.

    Raises :class:`InputError` when the table is no mdprep manifest at all (no
    ``mdprep`` entry) or was written by a newer mdprep (a format version above
    :data:`FORMAT_VERSION`): then there is no contract this mdprep can judge.
    """
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    where = path or "the table"
    if raw is None:
        raise InputError(
            f"{where} is not an mdprep manifest (no 'mdprep' entry in its Parquet metadata); "
            "create one with `mdprep ingest table FILE --preset generic ...`",
            path=path,
        )
    try:
        meta = json.loads(raw)
    except ValueError as exc:  # UnicodeDecodeError included
        return None, [
            Violation("metadata", None, 1, (), f"the mdprep metadata is not valid JSON ({cut_text(str(exc), 80)}); {METADATA_HINT}")
        ]
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if _is_int(version) and version > FORMAT_VERSION:
        raise InputError(
            f"{where} has manifest format {meta.get('format')!r} version {version!r}; "
            f"this mdprep {__version__} reads {FORMAT!r} up to version {FORMAT_VERSION}: upgrade mdprep",
            path=path,
        )
    return meta, metadata_violations(meta)


def from_arrow(table: pa.Table, *, path: str | None = None, arrow_text: bool = False) -> Manifest:
    """Build a :class:`Manifest` from an Arrow table written by :func:`to_arrow`.

    Raises :class:`InputError` (``violations``: the broken rules) when the ``mdprep``
    metadata is missing, unreadable or of the wrong shape (see :func:`metadata_violations`);
    the rows are not checked here (see :func:`check`).
    """
    meta, violations = _metadata(table, path)
    if violations:
        where = path or "the table"
        rules = "; ".join(v.message.removesuffix(f"; {METADATA_HINT}") for v in violations)
        raise InputError(
            f"{where} has broken mdprep metadata: {rules}; {METADATA_HINT}",
            path=path,
            violations=violations,
        )
    labels, root, history = _salvaged(meta)
    table = upgraded_table(table, meta)
    return Manifest(frame=frame_from_arrow(table, arrow_text=arrow_text), labels=labels, root=root, history=history, level=_salvaged_level(meta))


def upgraded_table(table: pa.Table, meta: Any) -> pa.Table:
    """``table`` with the columns renamed since its ``format_version`` (:data:`RENAMED_COLUMNS`) given their current names.

    A version 1 manifest written by ``mdprep resample`` (one whose history holds a
    ``resample`` step) has ``copy``; it is read as ``copy_index``. A column is renamed only
    when the new name is not taken, and a ``copy`` column of a manifest never resampled is
    the user's own and stays. Renaming touches no data (Arrow keeps the same buffers).

    Examples
    --------
    >>> t = pa.table({"image_id": ["a"], "copy": [0]})
    >>> upgraded_table(t, {"format_version": 1, "history": [{"command": "resample"}]}).column_names
    ['image_id', 'copy_index']
    >>> upgraded_table(t, {"format_version": 1, "history": []}).column_names
    ['image_id', 'copy']
    """
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if not _is_int(version) or version >= FORMAT_VERSION:
        return table
    history = meta.get("history", [])
    resampled = isinstance(history, list) and any(isinstance(h, dict) and h.get("command") == "resample" for h in history)
    names = list(table.column_names)
    for since, renames in sorted(RENAMED_COLUMNS.items()):
        if version >= since:
            continue
        for old, new in renames.items():
            if old == "copy" and not resampled:
                continue
            if old in names and new not in names and names.count(old) == 1:
                names[names.index(old)] = new
    return table if names == table.column_names else table.rename_columns(names)


# --------------------------------------------------------------------------- files


def write_manifest(manifest: Manifest, path: str | os.PathLike | BinaryIO) -> None:
    """Validate ``manifest`` and write it as Parquet, atomically when ``path`` is a path.

    ``path`` may also be a writable binary stream, or ``-`` for standard output. Raises
    :class:`~mdprep.errors.ManifestValidationError` listing every violation and
    writes nothing when the manifest breaks the contract.
    """
    check(manifest)
    pa.default_memory_pool().release_unused()  # what Arrow freed before (a replaced column, say): room for the copies below
    if len(manifest.frame) <= ROW_GROUP_ROWS:
        write_table(to_arrow(manifest), path)
        return
    # Row group by row group: only one row group's Arrow copy exists at a time. Columns
    # without a contract type are converted whole first, so every row group infers the same type.
    frame = manifest.frame
    whole = {col: _column_to_arrow(frame[col], None) for col in frame.columns if _target_type(manifest, col) is None}
    pieces = (
        to_arrow(replace(manifest, frame=frame.iloc[start : start + ROW_GROUP_ROWS]), converted={c: a.slice(start, ROW_GROUP_ROWS) for c, a in whole.items()})
        for start in range(0, len(frame), ROW_GROUP_ROWS)
    )
    _write_parts(pieces, path)


#: Rows per Parquet row group of every file mdprep writes.
ROW_GROUP_ROWS = 1 << 20


def write_table(table: pa.Table, path: str | os.PathLike | BinaryIO) -> None:
    """Write any Arrow table deterministically (zstd, fixed row groups); atomically to a path, ``-`` for stdout."""
    _write_parts(iter([table]), path, lone=True)


def _write_parts(tables: Iterator[pa.Table], path: str | os.PathLike | BinaryIO, *, lone: bool = False) -> None:
    """Write ``tables`` (each at most one row group, but for a ``lone`` table) as one Parquet file, as :func:`pyarrow.parquet.write_table` would write them concatenated.

    Each table is let go once written, and the next one asked for only then, so a manifest
    written in pieces holds one piece at a time.
    """
    options = dict(compression="zstd")

    def write(sink) -> None:
        table = next(tables)
        if lone:  # the plain writer, which splits it into row groups itself
            pq.write_table(table, sink, row_group_size=ROW_GROUP_ROWS, **options)
            return
        # What pyarrow.parquet.write_table does for one table, here for each in turn.
        with pq.ParquetWriter(sink, table.schema, **options) as writer:
            while table is not None:
                writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
                table = None
                pa.default_memory_pool().release_unused()
                table = next(tables, None)

    if is_stdio(path):
        path = stdout_binary()
    if hasattr(path, "write"):
        write(path)
        if hasattr(path, "flush"):
            path.flush()
        return
    with atomic_write(path) as tmp:
        write(tmp)


def read_manifest(
    path: str | os.PathLike,
    *,
    validate_contract: bool = True,
    columns: Sequence[str] | None = None,
    check_only: Sequence[str] = (),
    arrow_text: bool = False,
) -> Manifest:
    """Read a manifest written by mdprep, validating the contract unless told not to.

    ``columns`` reads only those columns (those absent are ignored), for commands
    that need a few columns of a large manifest. ``check_only`` names required columns
    among them that the caller needs validated but not loaded (``path`` for the leakage
    audit): such a column is left out of the frame when the file itself shows it valid
    (stored as text, and no nulls in the statistics of any row group), and read like the
    others when it does not. ``arrow_text`` keeps text as Arrow strings (see
    :func:`frame_from_arrow`). ``-`` reads standard input (:func:`mdprep.fileio.stdin_file`).

    Examples
    --------
    >>> import pandas as pd, tempfile, os
    >>> m = Manifest(pd.DataFrame({"image_id": ["a"], "path": ["a.png"], "patient_id": ["p1"]}))
    >>> p = os.path.join(tempfile.mkdtemp(), "m.parquet")
    >>> write_manifest(m, p)
    >>> read_manifest(p).frame["patient_id"].tolist()
    ['p1']
    """
    spath = os.fspath(path)
    settled: list[str] = []
    if columns is not None and validate_contract and check_only:
        settled = _settled_in_file(spath, [c for c in REQUIRED_COLUMNS if c in check_only and c in columns])
        columns = [c for c in columns if c not in settled]
    asked = columns
    if columns is not None:
        # An older file may hold a wanted column under its former name (see upgraded_table).
        former = [old for renames in RENAMED_COLUMNS.values() for old, new in renames.items() if new in columns and old not in columns]
        columns = [*columns, *former]
    manifest = from_arrow(_read_table(spath, columns), path=spath, arrow_text=arrow_text)
    pa.default_memory_pool().release_unused()  # the Arrow table that became the frame
    if asked is not None and len(columns) > len(asked):
        extra = [c for c in manifest.frame.columns if c not in asked]
        if extra:  # a former name read for nothing: the file is of the current version, or has both
            manifest = replace(manifest, frame=manifest.frame.drop(columns=extra))
    if columns is not None:
        # Only the columns asked for: labels that were left out are not part of this view.
        manifest = replace(manifest, labels=[l for l in manifest.labels if l in manifest.frame.columns])
    if validate_contract:
        violations = validate_frame(manifest.frame, manifest.labels, folds=recorded_folds(manifest.history), settled=settled)
        if violations:
            raise ManifestValidationError(violations, path=spath)
    return manifest


def manifest_columns(path: str | os.PathLike) -> list[str] | None:
    """The column names of the Parquet file at ``path`` ('-': standard input), or None when it cannot be read.

    >>> import pandas as pd, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "m.parquet")
    >>> write_manifest(Manifest(pd.DataFrame({"image_id": ["a"], "path": ["a.png"], "patient_id": ["p1"]})), p)
    >>> manifest_columns(p)
    ['image_id', 'path', 'patient_id']
    """
    spath = os.fspath(path)
    try:
        source = stdin_file() if is_stdio(spath) else spath
        return pq.read_schema(source).names
    except (pa.ArrowException, OSError, ValueError, MdprepError):  # read_manifest says why
        return None


def _settled_in_file(spath: str, wanted: Sequence[str]) -> list[str]:
    """The required columns among ``wanted`` that the file shows valid without reading them.

    A column is settled when every required column is in the file, this one is stored as
    ``string`` and the Parquet statistics of every row group count its nulls as zero. The
    others are read and validated as usual (and so are all of them when the file cannot be
    inspected here: :func:`_read_table` then says why).
    """
    if not wanted:
        return []
    source = stdin_file() if is_stdio(spath) else spath
    try:
        with pq.ParquetFile(source) as parquet:
            meta, schema = parquet.metadata, parquet.schema_arrow
    except (pa.ArrowException, OSError, ValueError):
        return []
    if any(c not in schema.names for c in REQUIRED_COLUMNS):
        return []
    out = []
    for name in wanted:
        if len(schema.get_all_field_indices(name)) != 1 or not schema.field(name).type.equals(pa.string()):
            continue
        leaf = [i for i in range(meta.num_columns) if meta.schema.column(i).path == name]
        if len(leaf) != 1:
            continue
        stats = [meta.row_group(g).column(leaf[0]).statistics for g in range(meta.num_row_groups)]
        if all(st is not None and st.has_null_count and st.null_count == 0 for st in stats):
            out.append(name)
    return out


def _read_table(spath: str, columns: Sequence[str] | None = None) -> pa.Table:
    """The Parquet table at ``spath`` ('-': standard input), or an :class:`InputError` saying why not."""
    source = stdin_file() if is_stdio(spath) else spath
    if not os.path.exists(source):
        raise InputError(f"manifest {spath!r} does not exist; check the path or create it with `mdprep ingest`", path=spath)
    try:
        parquet = None
        if columns is not None:
            try:
                parquet = pq.ParquetFile(source)
            except (pa.ArrowException, OSError, ValueError):
                pass  # read_table below says why, in the words people know
        if parquet is not None:
            # A few columns of a large manifest: row group by row group, which needs less memory on the way.
            with parquet:
                present = set(parquet.schema_arrow.names)
                wanted = [c for c in dict.fromkeys(columns) if c in present]
                groups = [parquet.read_row_group(i, columns=wanted) for i in range(parquet.num_row_groups)]
                table = pa.concat_tables(groups) if groups else parquet.schema_arrow.empty_table().select(wanted)
        elif columns is not None:
            present = set(pq.read_schema(source).names)
            table = pq.read_table(source, columns=[c for c in dict.fromkeys(columns) if c in present])
        else:
            table = pq.read_table(source)
        pa.default_memory_pool().release_unused()  # the decoding buffers, held by the allocator otherwise
        # Parquet readers trust the bytes: a damaged page can give text that is not UTF-8. Check it all once.
        table.validate(full=True)
        return table
    except (pa.ArrowException, OSError, ValueError) as exc:  # ValueError: pyarrow quoting bytes that are not UTF-8
        shown = "standard input ('-')" if source != spath else spath
        raise InputError(f"{shown} is not a readable Parquet file ({cut_text(str(exc).replace(source, spath))})", path=spath) from exc


def inspect_manifest(path: str | os.PathLike) -> tuple[Manifest, list[Violation]]:
    """Read a manifest however it breaks the contract, and list *every* violation, metadata included.

    For ``mdprep validate`` and ``mdprep check``: metadata of the wrong shape is
    reported as violations (check ``"metadata"``) next to those of the rows, which
    are judged against the well-formed part of the metadata. Raises
    :class:`InputError` only for a file that is no readable mdprep manifest at all.

    Examples
    --------
    >>> import pandas as pd, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "m.parquet")
    >>> write_manifest(Manifest(pd.DataFrame({"image_id": ["a"], "path": ["a.png"], "patient_id": ["p1"]})), p)
    >>> inspect_manifest(p)[1]
    []
    """
    spath = os.fspath(path)
    table = _read_table(spath)
    meta, violations = _metadata(table, spath)
    labels, root, history = _salvaged(meta)
    table = upgraded_table(table, meta)
    manifest = Manifest(frame=frame_from_arrow(table), labels=labels, root=root, history=history, level=_salvaged_level(meta))
    return manifest, violations + validate(manifest)


# --------------------------------------------------------------------------- summaries


@dataclass(frozen=True)
class LabelCounts:
    label: str
    positive: int
    negative: int
    uncertain: int
    missing: int

    @property
    def prevalence(self) -> float:
        """Positives over all rows (uncertain and missing count as not positive)."""
        total = self.positive + self.negative + self.uncertain + self.missing
        return self.positive / total if total else float("nan")


@dataclass(frozen=True)
class ManifestSummary:
    rows: int
    patients: int
    images_per_patient_median: float
    images_per_patient_max: int
    unlabeled_rows: int
    labels: tuple[LabelCounts, ...]


def label_counts(frame: pd.DataFrame, labels: Iterable[str]) -> list[LabelCounts]:
    """Positive, negative, uncertain and missing counts per label column (vectorised)."""
    out = []
    for col in labels:
        v = frame[col].to_numpy(dtype="float64", na_value=np.nan)
        out.append(
            LabelCounts(
                col,
                int((v == POSITIVE).sum()),
                int((v == NEGATIVE).sum()),
                int((v == UNCERTAIN).sum()),
                int(np.isnan(v).sum()),
            )
        )
    return out


def summarize(manifest: Manifest) -> ManifestSummary:
    """Rows, patients, images per patient, and per-label counts of a manifest."""
    frame = manifest.frame
    per_patient = frame.groupby("patient_id", sort=False, observed=True).size() if len(frame) else pd.Series([], dtype="int64")
    if manifest.labels:
        unlabeled = int(frame[list(manifest.labels)].isna().all(axis=1).sum())
    else:
        unlabeled = 0
    return ManifestSummary(
        rows=len(frame),
        patients=int(per_patient.size),
        images_per_patient_median=float(per_patient.median()) if per_patient.size else 0.0,
        images_per_patient_max=int(per_patient.max()) if per_patient.size else 0,
        unlabeled_rows=unlabeled,
        labels=tuple(label_counts(frame, manifest.labels)),
    )

"""Ingest sources: DICOM trees, image folders and dataset tables, each into one manifest.

Every source returns an :class:`IngestResult`: the manifest, a table of the inputs
that did not become rows (with why), and an :class:`IngestReport` whose counts
reconcile (``found == ingested + skipped + failed + aggregated + dropped``).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Mapping

import numpy as np
import pyarrow as pa

from .._lazy import LazyModule
from ..manifest import Manifest, write_table

if TYPE_CHECKING:
    from ..incremental import Signatures, UpdateCounts
    from .series import SeriesSummary

# pandas, and the modules of each source, are imported on first use: `ingest table`
# builds the manifests of its nih and chexpert presets in Arrow (see .table_arrow).
pd = LazyModule("pandas")
pc = LazyModule("pyarrow.compute")  # extract_groups_arrow only: the table paths use mdprep._compute

#: Columns of the error table.
ERROR_COLUMNS = ("path", "outcome", "error_type", "message")


@dataclass(frozen=True)
class IngestReport:
    """Counts that reconcile: every input item is ingested, skipped, failed, aggregated or dropped.

    Attributes
    ----------
    found : int
        Input files (or table rows) seen.
    ingested : int
        Manifest rows written.
    skipped : int
        Inputs that are not images of this source (a text file in a DICOM tree).
    failed : int
        Inputs that should have been images but could not be read.
    aggregated : int
        Table rows combined into another row of the same image (``ingest table
        --aggregate``): the rows found minus the images they gave; at ``ingest dicom
        --level series``, the files combined into another file's series row (files
        in series rows minus series rows).
    dropped : int
        Files left out with their series (``ingest dicom --level series --drop-bad-series``).
    lenient : int
        DICOM files read without the Part 10 preamble.
    unlabeled : int
        Rows kept with every label null (labels were asked for but none given).
    invalid_values : dict
        Column -> number of values that did not parse and were stored as null.
    reasons : dict
        ``"outcome:error_type"`` -> count, for skipped and failed inputs.
    notes : tuple of str
        Anything else the user must know (joined rows that found no partner, ...).
    invalid_examples : dict
        Column -> a few distinct values (as text) counted in ``invalid_values``, for messages.
    update : UpdateCounts or None
        With ``update=OLD``: files new, changed, removed and unchanged since OLD
        (:class:`mdprep.incremental.UpdateCounts`); None for a full run.
    series : SeriesSummary or None
        ``ingest dicom --level series``: series rows, files in them, volume problems
        per series, what was dropped (:class:`mdprep.ingest.series.SeriesSummary`).
    """

    found: int
    ingested: int
    skipped: int = 0
    failed: int = 0
    aggregated: int = 0
    lenient: int = 0
    unlabeled: int = 0
    invalid_values: Mapping[str, int] = field(default_factory=dict)
    reasons: Mapping[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    invalid_examples: Mapping[str, tuple] = field(default_factory=dict)
    update: UpdateCounts | None = None
    dropped: int = 0
    series: SeriesSummary | None = None

    @property
    def reconciles(self) -> bool:
        return self.found == self.ingested + self.skipped + self.failed + self.aggregated + self.dropped


@dataclass(frozen=True)
class IngestResult:
    """The manifest, the error table, the counts, and (incremental runs) the signatures to write beside the manifest."""

    manifest: Manifest
    errors: pd.DataFrame
    report: IngestReport
    signatures: Signatures | None = None


def empty_errors() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype="str") for c in ERROR_COLUMNS})


def errors_frame(rows: Iterable[tuple[str, str, str, str]]) -> pd.DataFrame:
    rows = list(rows)
    if not rows:
        return empty_errors()
    return pd.DataFrame(rows, columns=list(ERROR_COLUMNS)).astype("str")


def write_errors(errors: pd.DataFrame, path: str) -> None:
    """Write the error table as Parquet, or as CSV when ``path`` ends in ``.csv``."""
    from ..fileio import atomic_write

    if str(path).lower().endswith(".csv"):
        with atomic_write(path) as tmp:
            errors.to_csv(tmp, index=False)
        return
    table = pa.Table.from_pandas(errors, preserve_index=False).replace_schema_metadata(None)
    table = table.cast(pa.schema([pa.field(c, pa.string()) for c in table.column_names]))
    write_table(table, path)


#: Spellings of sex in DICOM and public tables (upper case) -> canonical code.
SEX_CODES = {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F", "O": "O", "OTHER": "O"}
#: Spellings that mean "unknown": null without counting as a bad value.
UNKNOWN_SEX = frozenset({"", "U", "UNKNOWN", "NAN", "NONE", "<NA>"})


def canonical_sex(value: str | None) -> tuple[str | None, bool]:
    """One value's canonical code and whether it was a recognised spelling.

    >>> canonical_sex(" female"), canonical_sex("x"), canonical_sex(None)
    (('F', True), (None, False), (None, True))
    """
    if value is None:
        return None, True
    key = value.strip().upper()
    code = SEX_CODES.get(key)
    return code, code is not None or key in UNKNOWN_SEX


def normalize_sex(values: pd.Series) -> tuple[pd.Series, int]:
    """Map a column of sex spellings to the canonical ``M``/``F``/``O`` (null when unknown).

    Returns the new column and how many non-empty values were not recognised.

    >>> normalize_sex(pd.Series(["M", "Female", "x", None]))[0].tolist()
    ['M', 'F', nan, nan]
    """
    # A column holds a handful of spellings: read each distinct value once, then spread the result by code.
    codes, distinct = pd.factorize(values, use_na_sentinel=True)
    mapped, unknown = sex_of_spellings(pd.Series(distinct).astype("str").str.strip().str.upper())
    not_recognised = int(unknown[codes].sum())
    return pd.Series(np.array(mapped, dtype=object)[codes], index=values.index, name=values.name, dtype="str"), not_recognised


def sex_of_spellings(spellings: Iterable[str]) -> tuple[list[str | None], np.ndarray]:
    """The canonical code of each distinct spelling (stripped, upper case), and which are not recognised.

    Both have one more slot, last, for nulls: no code, not counted.

    >>> sex_of_spellings(["FEMALE", "X", "UNKNOWN"])
    (['F', None, None, None], array([False,  True, False, False]))
    """
    spellings = list(spellings)
    mapped = [SEX_CODES.get(s) for s in spellings] + [None]
    unknown = np.array([s not in SEX_CODES and s not in UNKNOWN_SEX for s in spellings] + [False])
    return mapped, unknown


def extract_groups(values: pd.Series, regex: re.Pattern, engine: str = "auto") -> tuple[pd.DataFrame, np.ndarray]:
    """Named groups of ``regex`` searched in each value, and which values matched.

    A group that took no part in the match, or matched an empty string, is null.

    Parameters
    ----------
    values : pandas.Series
        Text to search.
    regex : re.Pattern
        The pattern, with named groups.
    engine : {"auto", "python"}
        ``auto`` runs pyarrow's vectorised RE2 engine, and Python's ``re`` for
        patterns RE2 cannot run (look-arounds, back-references). ``python`` always
        runs Python's ``re`` (once per distinct value), so the pattern means what
        Python says: RE2's ``\\d`` is ASCII only and RE2 reads ``[[:digit:]]`` as a
        POSIX class, Python's ``\\d`` takes any Unicode digit and ``[[:digit:]]`` is a
        set of characters. Slower: CheXpert's 223,414 paths take 0.55 s of CPU
        against RE2's 0.08 s, little beside reading as many image headers.

    Examples
    --------
    >>> g, ok = extract_groups(pd.Series(["p1/s2", "x"]), re.compile(r"(?P<p>p\\d)/(?P<s>s\\d)"))
    >>> g["p"].tolist(), ok.tolist()
    (['p1', nan], [True, False])
    >>> extract_groups(pd.Series(["p\u0663"]), re.compile(r"(?P<p>p\\d)"), engine="python")[1].tolist()  # an Arabic-Indic 3
    [True]
    """
    names = list(regex.groupindex)
    if engine == "python":
        return _extract_groups_python(values, regex, names)
    try:
        arr = pa.array(values.astype("str"), type=pa.string(), from_pandas=True)
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        groups, matched = extract_groups_arrow(arr, regex)
        columns = {n: pd.Series(child.to_pandas(), dtype="str", index=values.index) for n, child in groups.items()}
        return pd.DataFrame(columns, index=values.index), matched
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # pandas: "has match groups"
            matched = values.str.contains(regex, regex=True).fillna(False).to_numpy(dtype=bool)
        return values.str.extract(regex, expand=True).astype("str"), matched


def extract_groups_arrow(values: pa.Array, regex: re.Pattern) -> tuple[dict[str, pa.Array], np.ndarray]:
    """:func:`extract_groups` on an Arrow ``string`` array, with pyarrow's RE2 engine: each named group, and which values matched.

    Raises what pyarrow raises for a pattern RE2 cannot run (``ArrowInvalid``, ``ArrowNotImplementedError``).

    >>> groups, ok = extract_groups_arrow(pa.chunked_array([["p1/s2", "x"]]).combine_chunks(), re.compile(r"(?P<p>p\\d)/(?P<s>s\\d)"))
    >>> groups["p"].to_pylist(), ok.tolist()
    (['p1', None], [True, False])
    """
    from ._arrow import null_scalar, text_scalar, true_mask

    found = pc.extract_regex(values, regex.pattern)
    matched = true_mask(found.is_valid())
    empty, null = text_scalar(""), null_scalar(pa.string())
    groups = {}
    for n in regex.groupindex:
        # A group that took no part in the match is null, as in Python's re.
        child = pc.struct_field(found, [regex.groupindex[n] - 1])
        groups[n] = pc.if_else(pc.equal(child, empty), null, child)
    return groups, matched


def _extract_groups_python(values: pd.Series, regex: re.Pattern, names: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """:func:`extract_groups` with Python's ``re``: one search per distinct value, mapped back."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    search = regex.search
    found = [search(v) if isinstance(v, str) else None for v in uniques]
    hit = np.array([m is not None for m in found] + [False], dtype=bool)  # the last slot: missing values (code -1)
    matched = hit[codes]
    columns = {}
    for n in names:
        groups = np.array([(m.group(n) or None) if m is not None else None for m in found] + [None], dtype=object)
        columns[n] = pd.Series(groups[codes], dtype="str", index=values.index)
    return pd.DataFrame(columns, index=values.index), matched


#: Names of this package defined in its modules, imported when first asked for (PEP 562).
_LAZY = {"ingest_dicom": "dicom", "ingest_images": "images", "ingest_table": "tables", "PRESETS": "tables"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "IngestReport",
    "IngestResult",
    "PRESETS",
    "ingest_dicom",
    "ingest_images",
    "ingest_table",
    "normalize_sex",
    "write_errors",
]

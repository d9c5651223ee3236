"""Label columns: parsing label lists, coercing one-hot values, derived labels, label-name
harmonisation, blank and uncertainty policies, and combining several rows per image.

The column functions take and return pandas objects; the name, list and map functions
import no data library. A label column holds ``int8`` values 1 (positive),
0 (negative), -1 (uncertain) or null (not mentioned); see docs/manifest.md.
"""

from __future__ import annotations

import ast
import json
import os
import re
import warnings
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from ._lazy import LazyModule
from .choices import AGGREGATE_POLICIES, BLANK_POLICIES, LABEL_WHEN_SYNTAX, UNCERTAIN_POLICIES
from .errors import InputError, ManifestValidationError, MdprepWarning, MissingColumnError, UsageError, Violation, examples_text, short_repr
from .manifest import NEGATIVE, POSITIVE, UNCERTAIN, labels_outside_range

#: pandas, imported on first use: label names, lists and maps are read without it.
pd = LazyModule("pandas")

#: Cell texts of a label-list column that mean "no value" (Python's ``str(nan)`` and ``str(None)``).
_NULL_TEXTS = frozenset({"nan", "None"})


class MalformedListError(ValueError):
    """A label-list cell that opens a list literal (``[`` or ``{``) but is not a flat list of names."""


def rows_text(positions: Sequence[int], total: int, first_line: int | None = None) -> str:
    """Where rows are, for messages: ``lines 3, 5`` in a text table, ``rows 2, 4, counting from 1`` otherwise.

    ``positions`` are 0-based row positions; ``first_line`` is the line of the first row
    (2 below a one-line header) or None when the table has no lines (Parquet).

    >>> rows_text([1, 3], 2, first_line=2), rows_text([1, 3], 2)
    ('lines 3, 5', 'rows 2, 4, counting from 1')
    """
    if first_line is None:
        shown = [int(p) + 1 for p in positions]
        return f"row{'s' if total > 1 else ''} {examples_text(shown, total)}, counting from 1"
    shown = [int(p) + first_line for p in positions]
    return f"line{'s' if total > 1 else ''} {examples_text(shown, total)}"


def _scalar(item: object) -> bool:
    return item is None or isinstance(item, (str, int, float, bool))


#: A list literal of plain quoted names (``['a', "b"]``, spaces around the items, no escapes,
#: quotes, control characters or lone surrogates inside), which JSON or Python read as the quoted texts.
#: PadChest's 28,808 distinct ``Labels`` cells are all such lists.
_PLAIN_ITEM = r"""(?:'[^'"\\\x00-\x1f\x7f\ud800-\udfff]*'|"[^'"\\\x00-\x1f\x7f\ud800-\udfff]*")"""
_PLAIN_LIST = re.compile(rf"\[ *(?:{_PLAIN_ITEM} *(?:, *{_PLAIN_ITEM} *)*,? *)?\]")
_PLAIN_TEXT = re.compile(r"'([^']*)'|\"([^\"]*)\"")


def parse_label_list(text: str, sep: str = "|") -> list[str]:
    """Split one cell of a label-list column into label names.

    A cell that starts with ``[`` is read as a JSON or Python list literal
    (``['a', 'b']``); one whose literal does not parse but that ends with ``]`` and
    holds no other bracket is split on commas (``[a, b]``). Otherwise the cell is
    split on ``sep``. Entries are stripped of white space; empty entries and
    ``None`` are dropped.

    Raises :class:`MalformedListError` for a cell that starts with ``[`` or ``{`` but
    is not a flat list of names: an unclosed list (``['a', 'b'``), a nested list
    (``[['a']]``), a dict or a set.

    Examples
    --------
    >>> parse_label_list("Effusion|Mass")
    ['Effusion', 'Mass']
    >>> parse_label_list("[' Effusion', \\"Mass\\"]")
    ['Effusion', 'Mass']
    >>> parse_label_list("")
    []
    >>> parse_label_list("nan")
    []
    >>> parse_label_list("[['Mass']]")
    Traceback (most recent call last):
    ...
    mdprep.labels.MalformedListError: a nested list
    """
    s = text.strip()
    if s in _NULL_TEXTS:
        return []
    items: Iterable
    if s[:1] == "[" and _PLAIN_LIST.fullmatch(s):
        items = [single or double for single, double in _PLAIN_TEXT.findall(s)]  # what json.loads or ast.literal_eval give, faster
    elif s[:1] in ("[", "{"):
        try:
            items = json.loads(s)
        except ValueError:
            try:
                items = ast.literal_eval(s)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                inner = s[1:-1]
                if s[0] != "[" or s[-1] != "]" or any(c in inner for c in "[]{}"):
                    raise MalformedListError("not a list literal (is a bracket or quote not closed?)") from None
                items = [i.strip().strip("'\"") for i in inner.split(",")]
        if not isinstance(items, (list, tuple)):
            raise MalformedListError(f"a {type(items).__name__}, not a list")
        if not all(_scalar(i) for i in items):
            raise MalformedListError("a nested list" if any(isinstance(i, (list, tuple)) for i in items) else "a list of non-names")
    else:
        items = s.split(sep) if sep else [s]
    return [str(i).strip() for i in items if i is not None and str(i).strip()]


def labels_from_lists(
    values: pd.Series,
    *,
    sep: str = "|",
    known: Sequence[str] = (),
    column: str | None = None,
    path: str | None = None,
    first_line: int | None = None,
) -> tuple[pd.DataFrame, list[str], int]:
    """One-hot label columns from a column of label lists.

    Each distinct cell is parsed once (public tables have a few hundred distinct
    combinations for 100k rows), then broadcast to the rows by their codes. A row
    whose cell is empty, null, an empty list (``[]``) or the text ``nan``/``None``
    has every label null (not mentioned); a row with labels has 1 for those and 0
    for the others.

    Parameters
    ----------
    values : pandas.Series of str
    sep : str
        Separator when cells are not list literals.
    known : sequence of str
        Labels that get a column even when absent, in this order; labels found
        that are not known follow in sorted order.
    column, path, first_line
        For messages: the column's name, the table, and the line of the first row
        (None for a table without lines, such as Parquet: rows are then counted).

    Returns
    -------
    (frame, labels, unlabeled_rows)

    Raises
    ------
    InputError
        Cells that start with ``[`` or ``{`` but are not flat lists (see
        :func:`parse_label_list`), all of them counted, a few quoted with their lines.

    Examples
    --------
    >>> f, names, empty = labels_from_lists(pd.Series(["A|B", "B", None]))
    >>> names, f["A"].tolist(), empty
    (['A', 'B'], [1, 0, <NA>], 1)
    """
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    names, table, empty_unique, malformed = parse_label_cells(uniques, sep=sep, known=known)
    if malformed:
        bad_rows = np.flatnonzero(np.isin(codes, list(malformed)))
        cells = [str(uniques[u]) for u in malformed]
        where = f" in {path}" if path else ""
        name = f"{column!r}" if column else "the label list column"
        raise InputError(
            f"{len(bad_rows)} cell(s) of {name}{where} start with '[' or '{{' but are not a flat list of names: "
            f"{examples_text(cells, len(cells))} ({rows_text(bad_rows[:5], len(bad_rows), first_line)}); "
            f"write each as a list such as ['A', 'B'] or as A{sep}B",
            path=path,
            column=column,
            cells=cells[:20],
            reasons=[malformed[u] for u in list(malformed)[:20]],
            rows=bad_rows[:20].tolist(),
        )
    rows = table[codes]
    empty_rows = empty_unique[codes]
    frame = pd.DataFrame(
        {name: pd.arrays.IntegerArray(rows[:, j].copy(), empty_rows.copy()) for j, name in enumerate(names)},
        index=values.index,
    )
    return frame, names, int(empty_rows.sum())


def parse_label_cells(cells: Sequence[object], *, sep: str = "|", known: Sequence[str] = ()) -> tuple[list[str], np.ndarray, np.ndarray, dict[int, str]]:
    """The distinct cells of a label-list column, each parsed once (:func:`parse_label_list`).

    Returns the label names (``known`` first, in order, then the others sorted); an
    ``int8`` table with one row per cell and one more, last, for null cells, holding 1
    where the cell names the label and 0 elsewhere; which of those rows name no label
    (the last one included); and the malformed cells, position -> why.

    >>> names, table, empty, bad = parse_label_cells(["A|B", "", "[x"])
    >>> names, table.tolist(), empty.tolist(), bad
    (['A', 'B'], [[1, 1], [0, 0], [0, 0], [0, 0]], [False, True, True, True], {2: 'not a list literal (is a bracket or quote not closed?)'})
    """
    parsed: list[list[str]] = []
    malformed: dict[int, str] = {}
    for u, cell in enumerate(cells):
        try:
            parsed.append(parse_label_list(str(cell), sep))
        except MalformedListError as exc:
            malformed[u] = str(exc)
            parsed.append([])
    found = sorted({name for items in parsed for name in items} - set(known))
    names = list(known) + found
    index = {n: i for i, n in enumerate(names)}
    table = np.zeros((len(parsed) + 1, len(names)), dtype=np.int8)
    empty = np.zeros(len(parsed) + 1, dtype=bool)
    for u, items in enumerate(parsed):
        if not items:
            empty[u] = True
        for name in items:
            table[u, index[name]] = POSITIVE
    empty[-1] = True  # code -1 (null) lands on the last row
    return names, table, empty, malformed


_TRUE = {"true", "yes", "positive"}
_FALSE = {"false", "no", "negative"}


def coerce_label_values(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Turn one-hot label columns into ``Int8`` with values 1/0/-1/null.

    Accepts numbers (``1``, ``1.0``, ``-1``), their text forms, booleans and blanks.
    Collects every bad value of every column, text that is not a number and numbers
    outside {1, 0, -1} alike, then raises one
    :class:`~mdprep.errors.ManifestValidationError` with one violation per column.

    >>> coerce_label_values(pd.DataFrame({"A": ["1.0", "", "-1"]}), ["A"])["A"].tolist()
    [1, <NA>, -1]
    """
    out: dict[str, pd.Series] = {}
    violations: list[Violation] = []
    for col in columns:
        s = frame[col]
        unparsed_values: list = []
        n_unparsed = 0
        if pd.api.types.is_bool_dtype(s) or pd.api.types.is_numeric_dtype(s):
            arr = s.to_numpy(dtype="float64", na_value=np.nan)  # numbers (CheXpert's 1.0/0.0/-1.0/blank) as they are
        else:
            text = s.astype("str").str.strip()
            lower = text.str.lower()
            numeric = pd.to_numeric(text.where(~lower.isin(_TRUE | _FALSE)), errors="coerce").astype("Float64")
            numeric = numeric.mask(lower.isin(_TRUE), 1.0).mask(lower.isin(_FALSE), 0.0)
            blank = text.isna() | (text == "")
            unparsed = numeric.isna() & ~blank
            n_unparsed = int(unparsed.sum())
            unparsed_values = list(pd.unique(text[unparsed]))
            arr = numeric.to_numpy(dtype="float64", na_value=np.nan)
        n_outside, numbers, _ = labels_outside_range(arr)
        if n_unparsed or n_outside:
            parts = []
            if n_unparsed:
                parts.append(f"{n_unparsed} that are not numbers: {examples_text(unparsed_values, len(unparsed_values), limit=3)}")
            if n_outside:
                parts.append(f"{n_outside} outside {{1, 0, -1, null}}: {examples_text(numbers, len(numbers), limit=3)}")
            violations.append(
                Violation(
                    "bad_label_value",
                    col,
                    n_unparsed + n_outside,
                    tuple((unparsed_values + numbers)[:5]),
                    f"label column {col!r} has {n_unparsed + n_outside} bad value(s), {'; '.join(parts)}",
                )
            )
            continue
        out[col] = pd.Series(pd.arrays.IntegerArray(*label_codes(arr)), index=frame.index)
    if violations:
        raise ManifestValidationError(violations)
    return pd.DataFrame(out, index=frame.index)


def label_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label ``values`` (float, NaN for null, already checked to lie in {1, 0, -1}) as ``int8`` codes and a null mask.

    >>> [a.tolist() for a in label_codes(np.array([1.0, np.nan, -1.0]))]
    [[1, 0, -1], [False, True, False]]
    """
    null = np.isnan(values)
    return np.where(null, 0, values).astype(np.int8), null


def apply_uncertain_policy(frame: pd.DataFrame, labels: Sequence[str], policy: str) -> pd.DataFrame:
    """Return ``frame`` with uncertain (-1) labels replaced as ``policy`` says.

    >>> f = pd.DataFrame({"A": pd.array([1, -1, None], dtype="Int8")})
    >>> apply_uncertain_policy(f, ["A"], "ones")["A"].tolist()
    [1, 1, <NA>]
    """
    if policy not in UNCERTAIN_POLICIES:
        raise UsageError(
            f"unknown uncertain-label policy {policy!r}; choose one of {', '.join(UNCERTAIN_POLICIES)}", policy=policy
        )
    if policy == "keep" or not labels:
        return frame
    out = frame.copy()
    for col in labels:
        s = out[col]
        is_unc = (s == UNCERTAIN).fillna(False)
        if policy == "ones":
            out[col] = s.mask(is_unc, POSITIVE)
        elif policy == "zeros":
            out[col] = s.mask(is_unc, NEGATIVE)
        else:
            out[col] = s.mask(is_unc, pd.NA)
    return out


# ----------------------------------------------------------------------------- blank cells


def parse_blank_specs(specs: str | Sequence[str] | None) -> tuple[str, dict[str, str]]:
    """The global blank policy and the per-label ones, from ``--blank`` values.

    Each spec is a policy (``negative``) or ``LABEL=POLICY``. A per-label policy wins
    over the global one; without a global one it is ``missing``. Giving a spec twice
    is harmless.

    Raises :class:`~mdprep.errors.UsageError` quoting every malformed spec; for two
    different global policies; and for two policies of one label (names compared
    as :func:`label_key` does, ignoring case, spaces and underscores).

    >>> parse_blank_specs(["negative", "No Finding=missing"])
    ('negative', {'No Finding': 'missing'})
    >>> parse_blank_specs(None)
    ('missing', {})
    """
    specs = [specs] if isinstance(specs, str) else list(specs or ())
    global_specs: list[tuple[str, str]] = []
    per_label: dict[str, tuple[str, str, str]] = {}  # label_key -> (name, policy, spec)
    bad: list[str] = []
    conflicts: list[str] = []
    for spec in specs:
        name, eq, policy = spec.rpartition("=")
        name, policy = name.strip(), policy.strip().lower()
        if policy not in BLANK_POLICIES or (eq and not name):
            bad.append(spec)
        elif not eq:
            global_specs.append((spec, policy))
        else:
            first = per_label.setdefault(label_key(name), (name, policy, spec))
            if first[1] != policy:
                conflicts.append(f"{first[2]!r} and {spec!r}")
    if bad:
        raise UsageError(
            f"--blank {examples_text(bad, len(bad))}: write POLICY or LABEL=POLICY with POLICY one of "
            f"{', '.join(BLANK_POLICIES)} (for example --blank negative --blank 'No Finding=missing')",
            specs=bad,
        )
    policies = list(dict.fromkeys(p for _, p in global_specs))
    if len(policies) > 1:
        given = [s for s, _ in global_specs]
        raise UsageError(
            f"--blank was given {len(policies)} global policies ({examples_text(given, len(given))}); give one global "
            "policy, and LABEL=POLICY for the labels that differ (for example --blank negative --blank 'No Finding=missing')",
            specs=given,
        )
    if conflicts:
        raise UsageError(
            f"--blank gives one label two policies: {'; '.join(conflicts[:5])} (label names match ignoring case, spaces "
            "and underscores); give each label one policy",
            conflicts=conflicts,
        )
    return (policies[0] if policies else "missing"), {name: policy for name, policy, _ in per_label.values()}


def apply_blank_policy(
    frame: pd.DataFrame, labels: Sequence[str], default: str = "missing", per_label: Mapping[str, str] | None = None
) -> tuple[pd.DataFrame, int]:
    """Return ``frame`` with blank label cells made negative where the policy says so.

    Only rows that have at least one label value are touched: a row without any
    label (a study without a label row, an empty label list) stays unlabeled, since
    a missing label row says nothing about findings. ``per_label`` names are label
    columns (see :func:`resolve_label_names`). Returns the frame and how many cells
    were set to 0.

    >>> f = pd.DataFrame({"A": pd.array([1, None, None], dtype="Int8"), "B": pd.array([None, 0, None], dtype="Int8")})
    >>> out, n = apply_blank_policy(f, ["A", "B"], "negative")
    >>> out["A"].tolist(), out["B"].tolist(), n
    ([1, 0, <NA>], [0, 0, <NA>], 2)
    """
    per_label = dict(per_label or {})
    negative = [c for c in labels if per_label.get(c, default) == "negative"]
    if not negative:
        return frame, 0
    labelled = frame[list(labels)].notna().any(axis=1)
    out = frame.copy()
    filled = 0
    for col in negative:
        fill = out[col].isna() & labelled
        filled += int(fill.sum())
        out[col] = out[col].mask(fill, NEGATIVE)
    return out, filled


# ----------------------------------------------------------------------------- derived labels

_RULE = re.compile(r"^\s*(?P<name>[^:]*?)\s*:\s*(?P<column>.*?)\s*(?P<op>==|!=)\s*(?P<value>.*?)\s*$")


@dataclass(frozen=True)
class LabelRule:
    """A derived binary label: ``name`` is 1 when ``column`` is (``==``) or is not (``!=``) ``value``.

    Cells are compared as numbers when ``value`` and every non-blank cell are numbers,
    else as stripped text; a blank cell gives null (see :func:`derive_labels`).
    """

    name: str
    column: str
    op: str
    value: str

    def __str__(self) -> str:
        return f"{self.name}:{self.column}{self.op}{self.value}"


def parse_label_rules(specs: str | Sequence[str] | None) -> list[LabelRule]:
    """Parse ``--label-when`` specs such as ``Pneumothorax:EncodedPixels!=-1``.

    Raises :class:`~mdprep.errors.UsageError` quoting every bad spec and the syntax.

    >>> parse_label_rules(["Pneumonia: Target == 1"])
    [LabelRule(name='Pneumonia', column='Target', op='==', value='1')]
    """
    specs = [specs] if isinstance(specs, str) else list(specs or ())
    rules: list[LabelRule] = []
    bad: list[str] = []
    for spec in specs:
        m = _RULE.match(spec)
        if not m or not all(m.group(g) for g in ("name", "column", "value")):
            bad.append(spec)
            continue
        rules.append(LabelRule(m["name"], m["column"], m["op"], m["value"]))
    if bad:
        raise UsageError(
            f"--label-when {examples_text(bad, len(bad))} is not {LABEL_WHEN_SYNTAX} "
            "(for example 'Pneumothorax:EncodedPixels!=-1' or 'Pneumonia:Target==1')",
            specs=bad,
        )
    names = [r.name for r in rules]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UsageError(f"--label-when defines {examples_text(dupes, len(dupes))} more than once; give each label one rule")
    return rules


def find_column(columns: Sequence[str], name: str) -> str | None:
    """``name`` among ``columns``, exactly or else ignoring surrounding white space.

    >>> find_column(["ImageId", " EncodedPixels"], "EncodedPixels")
    ' EncodedPixels'
    """
    if name in columns:
        return name
    hits = [c for c in columns if str(c).strip() == name.strip()]
    return hits[0] if len(hits) == 1 else None


def _number(text: str) -> float | None:
    """``text`` as a finite number, or None."""
    value = pd.to_numeric(pd.Series([text.strip()]), errors="coerce").iloc[0]
    return float(value) if pd.notna(value) and np.isfinite(value) else None


def derive_labels(source: pd.DataFrame, rules: Sequence[LabelRule], *, path: str | None = None) -> pd.DataFrame:
    """Binary ``Int8`` label columns computed from ``source`` by ``rules`` (see :class:`LabelRule`).

    A rule compares numbers when its value is a number and every non-blank cell of
    the column is one (a numeric column, or text such as RSNA's ``0``/``1``), so
    ``1``, ``1.0`` and ``"1.0"`` are equal. Otherwise it compares text, cells
    stripped of surrounding white space (SIIM's ``' -1'`` equals ``-1``). A blank
    cell gives null.

    A value that no cell of the column has makes a label that is the same in every
    row: almost always a typo. It is kept, with a
    :class:`~mdprep.errors.MdprepWarning` quoting the value and the column's most
    common values.

    Raises :class:`~mdprep.errors.MissingColumnError` naming every column that is
    not in ``source``.

    >>> src = pd.DataFrame({"px": [" -1", "1 5", None], "t": ["1", "0", "1"]})
    >>> derive_labels(src, parse_label_rules("Ptx:px!=-1"))["Ptx"].tolist()
    [0, 1, <NA>]
    >>> derive_labels(src, parse_label_rules("P:t==1.0"))["P"].tolist()
    [1, 0, 1]
    """
    present = list(source.columns)
    found = {r.column: find_column(present, r.column) for r in rules}
    missing = [c for c, hit in found.items() if hit is None]
    if missing:
        raise MissingColumnError(missing, present, path=path, hint=f"--label-when {LABEL_WHEN_SYNTAX} names a column of the table")
    out: dict[str, pd.Series] = {}
    for rule in rules:
        column = found[rule.column]
        s = source[column]
        if pd.api.types.is_bool_dtype(s):
            s = s.astype("str").where(s.notna())
        # Each distinct cell is read once: as stripped text, and as a number where it is one.
        codes, uniques = pd.factorize(s, use_na_sentinel=True)
        texts = pd.Series([str(u).strip() for u in uniques], dtype="object")
        numbers = pd.to_numeric(texts, errors="coerce").to_numpy(dtype="float64") if len(texts) else np.empty(0)
        blank_unique = (texts == "").to_numpy()
        value = _number(rule.value)
        numeric = value is not None and bool(np.isfinite(numbers[~blank_unique]).all())
        equal_unique = numbers == value if numeric else (texts == rule.value.strip()).to_numpy()
        blank = (codes == -1) | np.append(blank_unique, True)[codes]
        equal = np.append(equal_unique, False)[codes] & ~blank
        if not equal.any() and not blank.all():
            _warn_value_not_found(rule, column, texts[~blank_unique], np.bincount(codes[codes >= 0], minlength=len(uniques))[~blank_unique])
        hit = ~equal if rule.op == "!=" else equal
        out[rule.name] = pd.Series(pd.arrays.IntegerArray(hit.astype(np.int8), blank), index=source.index)
    return pd.DataFrame(out, index=source.index)


def _warn_value_not_found(rule: LabelRule, column: str, texts: pd.Series, counts: np.ndarray) -> None:
    order = np.argsort(-counts, kind="stable")[:5]
    common = ", ".join(f"{short_repr(texts.iloc[i])} ({int(counts[i]):,} row{'s' if counts[i] != 1 else ''})" for i in order)
    more = f" and {len(texts) - 5:,} other values" if len(texts) > 5 else ""
    constant = 1 if rule.op == "!=" else 0
    warnings.warn(
        f"--label-when '{rule}': no cell of column {column!r} is {short_repr(rule.value)}, so {rule.name!r} is {constant} "
        f"in every row with a value; the column's most common values are {common}{more}",
        MdprepWarning,
        stacklevel=3,
    )


# ----------------------------------------------------------------------------- label names

#: One spelling for each finding of the public chest X-ray datasets, with every spelling
#: those datasets use and where it comes from (``--label-map cxr``). Names match ignoring
#: case, white space and underscores, so PadChest's lower-case names need no entry of their
#: own unless they differ otherwise; they are listed for the record.
CXR_LABEL_MAP: dict[str, tuple[tuple[str, str], ...]] = {
    "No Finding": (
        ("No Finding", "NIH ChestX-ray14, CheXpert, MIMIC-CXR"),
        ("No finding", "VinDr-CXR"),
        ("normal", "PadChest"),
    ),
    "Atelectasis": (("Atelectasis", "NIH ChestX-ray14, CheXpert, MIMIC-CXR, VinDr-CXR"), ("atelectasis", "PadChest")),
    "Cardiomegaly": (("Cardiomegaly", "NIH ChestX-ray14, CheXpert, MIMIC-CXR, VinDr-CXR"), ("cardiomegaly", "PadChest")),
    "Consolidation": (("Consolidation", "NIH ChestX-ray14, CheXpert, MIMIC-CXR, VinDr-CXR"), ("consolidation", "PadChest")),
    "Edema": (("Edema", "NIH ChestX-ray14, CheXpert, MIMIC-CXR"), ("pulmonary edema", "PadChest")),
    "Emphysema": (("Emphysema", "NIH ChestX-ray14"), ("emphysema", "PadChest")),
    "Fibrosis": (("Fibrosis", "NIH ChestX-ray14"), ("Pulmonary fibrosis", "VinDr-CXR"), ("pulmonary fibrosis", "PadChest")),
    "Fracture": (("Fracture", "CheXpert, MIMIC-CXR, NIH Google 2019 expert labels"), ("fracture", "PadChest")),
    "Infiltration": (("Infiltration", "NIH ChestX-ray14, VinDr-CXR"), ("infiltrates", "PadChest")),
    "Interstitial Lung Disease": (("ILD", "VinDr-CXR"),),
    "Lung Opacity": (("Lung Opacity", "CheXpert, MIMIC-CXR, VinDr-CXR"),),
    "Mass": (("Mass", "NIH ChestX-ray14"), ("mass", "PadChest")),
    "Nodule": (("Nodule", "NIH ChestX-ray14"), ("nodule", "PadChest")),
    "Nodule/Mass": (("Nodule/Mass", "VinDr-CXR"), ("Nodule or mass", "NIH Google 2019 expert labels")),
    "Pleural Effusion": (
        ("Effusion", "NIH ChestX-ray14"),
        ("Pleural Effusion", "CheXpert, MIMIC-CXR"),
        ("Pleural effusion", "VinDr-CXR"),
        ("pleural effusion", "PadChest"),
    ),
    "Pleural Thickening": (
        ("Pleural_Thickening", "NIH ChestX-ray14"),
        ("Pleural thickening", "VinDr-CXR"),
        ("pleural thickening", "PadChest"),
    ),
    "Pneumonia": (("Pneumonia", "NIH ChestX-ray14, CheXpert, MIMIC-CXR, RSNA Pneumonia (Target)"), ("pneumonia", "PadChest")),
    "Pneumothorax": (
        ("Pneumothorax", "NIH ChestX-ray14, CheXpert, MIMIC-CXR, VinDr-CXR, SIIM-ACR, NIH Google 2019 expert labels"),
        ("pneumothorax", "PadChest"),
    ),
}
#: Names ``--label-map`` accepts besides a file.
BUILTIN_LABEL_MAPS = {"cxr": CXR_LABEL_MAP}


def label_key(name: str) -> str:
    """How label names are matched: case, white space and underscores ignored.

    >>> label_key(" Pleural_Thickening") == label_key("pleural thickening")
    True
    """
    return re.sub(r"[\s_]+", "", str(name)).casefold()


def load_label_map(spec: str | os.PathLike | Mapping[str, str]) -> dict[str, str]:
    """A label map as ``{label_key(source): target}``.

    ``spec`` is a built-in name (``cxr``, see :data:`CXR_LABEL_MAP`), a mapping, a
    JSON file holding one object ``{"source": "target"}``, or a CSV file with the
    columns ``source,target``. Two sources that match alike but map to different
    targets are an :class:`~mdprep.errors.InputError` (or a
    :class:`~mdprep.errors.UsageError` for a mapping given in code).

    >>> load_label_map({"Effusion": "Pleural Effusion"})
    {'effusion': 'Pleural Effusion'}
    """
    where = "the label map"
    if isinstance(spec, Mapping):
        pairs = [(str(k), str(v)) for k, v in spec.items()]
        error = UsageError
    elif os.fspath(spec) in BUILTIN_LABEL_MAPS and not os.path.exists(os.fspath(spec)):
        table = BUILTIN_LABEL_MAPS[os.fspath(spec)]
        pairs = [(canon, canon) for canon in table] + [(name, canon) for canon, names in table.items() for name, _ in names]
        error = UsageError
    else:
        path = os.fspath(spec)
        where, error = path, InputError
        pairs = _read_label_map_file(path)
    out: dict[str, str] = {}
    conflicts: list[str] = []
    for source, target in pairs:
        key = label_key(source)
        if not key or not target.strip():
            conflicts.append(f"{source!r} -> {target!r}")
        elif out.setdefault(key, target.strip()) != target.strip():
            conflicts.append(f"{source!r} -> {target!r} and {out[key]!r}")
    if conflicts:
        message = (
            f"{where} maps {', '.join(conflicts[:5])}{' ...' if len(conflicts) > 5 else ''}: every source name "
            "(compared ignoring case, spaces and underscores) needs one non-empty target"
        )
        raise InputError(message, path=where) if error is InputError else UsageError(message)
    return out


def _read_label_map_file(path: str) -> list[tuple[str, str]]:
    import csv

    if os.path.isdir(path):
        raise InputError(f"label map {path!r} is a folder; give a CSV (source,target) or JSON file, or one of: {', '.join(BUILTIN_LABEL_MAPS)}", path=path)
    if not os.path.isfile(path):
        raise InputError(
            f"label map {path!r} does not exist; give a CSV (source,target) or JSON file, or one of: {', '.join(BUILTIN_LABEL_MAPS)}",
            path=path,
        )
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise InputError(f"cannot read label map {path}: {exc}", path=path) from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(
            f"line {line} of label map {path} is not valid UTF-8 (byte 0x{data[exc.start]:02x}); save the file as UTF-8 "
            "(for example `iconv -f latin1 -t utf-8`)",
            path=path,
            line=line,
        ) from None
    if path.lower().endswith(".json") or text.lstrip().startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise InputError(f"label map {path} is not valid JSON ({exc})", path=path) from exc
        if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in obj.items()):
            raise InputError(f'label map {path} must hold one JSON object of names, {{"source": "target", ...}}', path=path)
        return list(obj.items())
    rows = list(csv.reader(text.splitlines()))
    header = [h.strip().lower() for h in rows[0]] if rows else []
    if header[:2] != ["source", "target"] or any(len(r) < 2 for r in rows[1:] if any(c.strip() for c in r)):
        raise InputError(
            f"label map {path} must be a CSV with the header 'source,target' and two names on every line "
            f"(header found: {', '.join(map(repr, rows[0])) if rows else 'none'})",
            path=path,
        )
    return [(r[0], r[1]) for r in rows[1:] if any(c.strip() for c in r)]


def resolve_label_names(names: Iterable[str], labels: Sequence[str], label_map: Mapping[str, str] | None = None, *, option: str = "") -> dict[str, str]:
    """Each of ``names`` -> the label column it means.

    A name matches a label ignoring case, white space and underscores, either
    directly or through ``label_map`` (so a source spelling finds its target).
    Raises :class:`~mdprep.errors.UsageError` listing the names that match none.

    >>> resolve_label_names(["no_finding"], ["No Finding", "Edema"])
    {'no_finding': 'No Finding'}
    """
    by_key = {label_key(lab): lab for lab in labels}
    out: dict[str, str] = {}
    unknown: list[str] = []
    for name in names:
        key = label_key(name)
        hit = by_key.get(key)
        if hit is None and label_map and key in label_map:
            hit = by_key.get(label_key(label_map[key]))
        if hit is None:
            unknown.append(name)
        else:
            out[name] = hit
    if unknown:
        raise UsageError(
            f"{option + ' ' if option else ''}names {examples_text(unknown, len(unknown))}, which {'is' if len(unknown) == 1 else 'are'} "
            f"not a label; the labels are: {', '.join(map(repr, labels)) or 'none'}",
            names=unknown,
        )
    return out


def merge_label_values(block: pd.DataFrame) -> pd.Series:
    """Combine label columns that mean one finding, per row: 1 > -1 > 0 > null.

    >>> b = pd.DataFrame({"a": pd.array([0, None, -1, None], dtype="Int8"), "b": pd.array([1, 0, 0, None], dtype="Int8")})
    >>> merge_label_values(b).tolist()
    [1, 0, -1, <NA>]
    """
    return pd.Series(pd.arrays.IntegerArray(*merge_votes(block.to_numpy(dtype="float64", na_value=np.nan))), index=block.index)


def merge_votes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``values`` (rows x columns, NaN for null), the strongest value, 1 > -1 > 0 > null: ``int8`` codes and a null mask.

    >>> [a.tolist() for a in merge_votes(np.array([[0, 1], [np.nan, 0], [-1, 0], [np.nan, np.nan]]))]
    [[1, 0, -1, 0], [False, False, False, True]]
    """
    rank = np.select([np.isnan(values), values == NEGATIVE, values == UNCERTAIN], [0, 1, 2], 3).max(axis=1)
    back = np.array([0, NEGATIVE, UNCERTAIN, POSITIVE], dtype=np.int8)
    return back[rank], rank == 0


def apply_label_map(
    frame: pd.DataFrame, labels: Sequence[str], label_map: Mapping[str, str]
) -> tuple[pd.DataFrame, list[str], list[tuple[str, str]], dict[str, list[str]]]:
    """Rename label columns by ``label_map`` (from :func:`load_label_map`) and merge those that meet.

    Labels the map does not name keep their name. Columns that map to one name are
    combined with :func:`merge_label_values`. Returns the frame, the new label names
    (in order of first appearance), the renames ``(source, target)`` and the merges
    ``{target: [sources]}``. A target that is also a non-label column is a
    :class:`~mdprep.errors.UsageError`.

    >>> f = pd.DataFrame({"Effusion": pd.array([1, 0], dtype="Int8"), "pleural effusion": pd.array([0, None], dtype="Int8")})
    >>> out, names, renamed, merged = apply_label_map(f, list(f.columns), load_label_map("cxr"))
    >>> names, out["Pleural Effusion"].tolist(), merged
    (['Pleural Effusion'], [1, 0], {'Pleural Effusion': ['Effusion', 'pleural effusion']})
    """
    plan, renamed, merged = label_map_plan(labels, label_map)
    names = list(plan)
    clash = [n for n in names if n in frame.columns and n not in labels]
    if clash:
        raise UsageError(f"the label map gives labels named like other columns ({examples_text(clash, len(clash))}); map them to other names")
    new = {name: frame[sources[0]] if len(sources) == 1 else merge_label_values(frame[sources]) for name, sources in plan.items()}
    if not renamed and not merged:
        return frame, list(labels), [], {}
    rest = frame.drop(columns=list(labels))
    labelled = pd.DataFrame(new, index=frame.index)
    return pd.concat([rest, labelled], axis=1), names, renamed, merged


def label_map_plan(
    labels: Sequence[str], label_map: Mapping[str, str]
) -> tuple[dict[str, list[str]], list[tuple[str, str]], dict[str, list[str]]]:
    """What :func:`apply_label_map` does to ``labels``: each new name with its source labels (in order of first
    appearance), the renames ``(source, target)`` and the merges ``{target: [sources]}``.

    >>> label_map_plan(["Effusion", "Mass", "pleural effusion"], load_label_map("cxr"))[0]
    {'Pleural Effusion': ['Effusion', 'pleural effusion'], 'Mass': ['Mass']}
    """
    targets = [label_map.get(label_key(lab), lab) for lab in labels]
    plan = {name: [lab for lab, t in zip(labels, targets) if t == name] for name in dict.fromkeys(targets)}
    renamed = [(sources[0], name) for name, sources in plan.items() if len(sources) == 1 and sources[0] != name]
    merged = {name: sources for name, sources in plan.items() if len(sources) > 1}
    return plan, renamed, merged


# ----------------------------------------------------------------------------- several rows per image


def combine_votes(values: pd.DataFrame, groups: np.ndarray, n_groups: int, policy: str) -> pd.DataFrame:
    """One row per group: the label votes of its rows combined by ``policy``.

    ``groups`` gives each row's group (0 .. n_groups-1). Votes are 1, 0, -1; null
    is no vote. Per group, with ``pos``, ``neg``, ``unc`` votes and ``n`` non-null:

    * ``any``: 1 if pos > 0, else -1 if unc > 0, else 0 if neg > 0, else null;
    * ``all``: null if n = 0, 1 if pos = n, else 0 if neg > 0, else -1;
    * ``majority``: null if n = 0, 1 if pos > n/2, 0 if neg > n/2, else -1
      (an uncertain majority and a tie are both uncertain).

    >>> v = pd.DataFrame({"A": pd.array([1, 0, 0, 1, None], dtype="Int8")})
    >>> g = np.array([0, 0, 0, 1, 2])
    >>> [combine_votes(v, g, 3, p)["A"].tolist() for p in ("any", "all", "majority")]
    [[1, 1, <NA>], [0, 1, <NA>], [0, 1, <NA>]]
    """
    if policy not in AGGREGATE_POLICIES or policy == "error":
        raise UsageError(f"unknown aggregation {policy!r}; choose one of any, majority, all", policy=policy)
    out: dict[str, pd.arrays.IntegerArray] = {}
    for col in values.columns:
        v = values[col].to_numpy(dtype="float64", na_value=np.nan)
        pos, neg, unc = (np.bincount(groups, weights=(v == x), minlength=n_groups) for x in (POSITIVE, NEGATIVE, UNCERTAIN))
        n = pos + neg + unc
        if policy == "any":
            result = np.select([pos > 0, unc > 0, neg > 0], [POSITIVE, UNCERTAIN, NEGATIVE], np.nan)
        elif policy == "all":
            result = np.select([n == 0, pos == n, neg > 0], [np.nan, POSITIVE, NEGATIVE], UNCERTAIN)
        else:
            result = np.select([n == 0, 2 * pos > n, 2 * neg > n], [np.nan, POSITIVE, NEGATIVE], UNCERTAIN)
        null = np.isnan(result)
        out[col] = pd.arrays.IntegerArray(np.where(null, 0, result).astype(np.int8), null)
    return pd.DataFrame(out, index=pd.RangeIndex(n_groups))


def aggregate_labels(
    values: pd.DataFrame, images: np.ndarray, n_images: int, policy: str, readers: np.ndarray | None = None
) -> pd.DataFrame:
    """Label votes of several rows per image combined into one row per image.

    ``images`` gives each row's image (0 .. n_images-1). With ``readers`` (one code per
    row, -1 for a blank reader), the rows of one reader for one image are first
    combined with ``any``; the readers then vote by ``policy`` (see
    :func:`combine_votes`). All the rows of one image with a blank reader count
    together as one reader. Without ``readers``, each row is one vote.

    >>> v = pd.DataFrame({"A": pd.array([1, 0, 0, 0], dtype="Int8")})
    >>> aggregate_labels(v, np.zeros(4, int), 1, "majority", readers=np.array([0, 0, 1, 2]))["A"].tolist()
    [0]
    >>> aggregate_labels(v, np.zeros(4, int), 1, "majority", readers=np.array([0, 0, 1, 1]))["A"].tolist()
    [-1]
    """
    if readers is not None:
        key = images.astype(np.int64) * (int(readers.max(initial=-1)) + 2) + (readers.astype(np.int64) + 1)
        pairs, uniques = pd.factorize(key)
        values = combine_votes(values, pairs, len(uniques), "any")
        images = uniques // (int(readers.max(initial=-1)) + 2)
    return combine_votes(values, np.asarray(images), n_images, policy)

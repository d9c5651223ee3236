"""Label columns: parsing label lists, coercing one-hot values, uncertainty policies.

Touches pandas objects only. A label column holds ``int8`` values 1 (positive),
0 (negative), -1 (uncertain) or null (not mentioned); see docs/manifest.md.
"""

from __future__ import annotations

import ast
import json
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .errors import ManifestValidationError, UsageError, Violation, examples_text
from .manifest import NEGATIVE, POSITIVE, UNCERTAIN, label_value_violation

#: What ``--uncertain`` may say, and what it does to -1.
UNCERTAIN_POLICIES = {
    "keep": "keep -1 (uncertain) as it is",
    "ones": "count uncertain as positive (U-Ones)",
    "zeros": "count uncertain as negative (U-Zeros)",
    "ignore": "treat uncertain as not mentioned (null)",
}


def parse_label_list(text: str, sep: str = "|") -> list[str]:
    """Split one cell of a label-list column into label names.

    A cell written as a JSON or Python list literal (``['a', 'b']``) is parsed as
    one; otherwise it is split on ``sep``. Entries are stripped of white space and
    empty entries dropped.

    Examples
    --------
    >>> parse_label_list("Effusion|Mass")
    ['Effusion', 'Mass']
    >>> parse_label_list("[' Effusion', \\"Mass\\"]")
    ['Effusion', 'Mass']
    >>> parse_label_list("")
    []
    """
    s = text.strip()
    items: Iterable
    if len(s) >= 2 and s[0] == "[" and s[-1] == "]":
        try:
            items = json.loads(s)
        except ValueError:
            try:
                items = ast.literal_eval(s)
            except (ValueError, SyntaxError):
                items = s[1:-1].split(",")
                items = [i.strip().strip("'\"") for i in items]
        if isinstance(items, str) or not isinstance(items, (list, tuple)):
            items = [items]
    else:
        items = s.split(sep) if sep else [s]
    return [str(i).strip() for i in items if str(i).strip()]


def labels_from_lists(
    values: pd.Series, *, sep: str = "|", known: Sequence[str] = ()
) -> tuple[pd.DataFrame, list[str], int]:
    """One-hot label columns from a column of label lists.

    Each distinct cell is parsed once (public tables have a few hundred distinct
    combinations for 100k rows), then broadcast to the rows by their codes. A row
    whose cell is empty or null has every label null (not mentioned); a row with
    labels has 1 for those and 0 for the others.

    Parameters
    ----------
    values : pandas.Series of str
    sep : str
        Separator when cells are not list literals.
    known : sequence of str
        Labels that get a column even when absent, in this order; labels found
        that are not known follow in sorted order.

    Returns
    -------
    (frame, labels, unlabeled_rows)

    Examples
    --------
    >>> f, names, empty = labels_from_lists(pd.Series(["A|B", "B", None]))
    >>> names, f["A"].tolist(), empty
    (['A', 'B'], [1, 0, <NA>], 1)
    """
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    parsed = [parse_label_list(str(u), sep) for u in uniques]
    found = sorted({name for items in parsed for name in items} - set(known))
    names = list(known) + found
    index = {n: i for i, n in enumerate(names)}
    table = np.zeros((len(uniques) + 1, len(names)), dtype=np.int8)
    empty_unique = np.zeros(len(uniques) + 1, dtype=bool)
    for u, items in enumerate(parsed):
        if not items:
            empty_unique[u] = True
        for name in items:
            table[u, index[name]] = POSITIVE
    empty_unique[-1] = True  # code -1 (null) lands on the last row
    rows = table[codes]
    empty_rows = empty_unique[codes]
    frame = pd.DataFrame(
        {name: pd.arrays.IntegerArray(rows[:, j].copy(), empty_rows.copy()) for j, name in enumerate(names)},
        index=values.index,
    )
    return frame, names, int(empty_rows.sum())


_TRUE = {"true", "yes", "positive"}
_FALSE = {"false", "no", "negative"}


def coerce_label_values(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Turn one-hot label columns into ``Int8`` with values 1/0/-1/null.

    Accepts numbers (``1``, ``1.0``, ``-1``), their text forms, booleans and blanks.
    Collects every bad value of every column, then raises one
    :class:`~mdprep.errors.ManifestValidationError` naming them all.

    >>> coerce_label_values(pd.DataFrame({"A": ["1.0", "", "-1"]}), ["A"])["A"].tolist()
    [1, <NA>, -1]
    """
    out: dict[str, pd.Series] = {}
    violations: list[Violation] = []
    for col in columns:
        s = frame[col]
        if pd.api.types.is_bool_dtype(s):
            numeric = s.astype("Float64")
        elif pd.api.types.is_numeric_dtype(s):
            numeric = s.astype("Float64")
        else:
            text = s.astype("str").str.strip()
            lower = text.str.lower()
            numeric = pd.to_numeric(text.where(~lower.isin(_TRUE | _FALSE)), errors="coerce").astype("Float64")
            numeric = numeric.mask(lower.isin(_TRUE), 1.0).mask(lower.isin(_FALSE), 0.0)
            blank = text.isna() | (text == "")
            unparsed = numeric.isna() & ~blank
            if unparsed.any():
                bad = pd.unique(text[unparsed])
                violations.append(
                    Violation(
                        "bad_label_value",
                        col,
                        int(unparsed.sum()),
                        tuple(bad[:5]),
                        f"label column {col!r} has {int(unparsed.sum())} value(s) that are not numbers: "
                        f"{examples_text(list(bad), len(bad))}",
                    )
                )
                continue
        arr = numeric.to_numpy(dtype="float64", na_value=np.nan)
        violation = label_value_violation(col, arr)
        if violation:
            violations.append(violation)
            continue
        nan = np.isnan(arr)
        out[col] = pd.Series(pd.arrays.IntegerArray(np.where(nan, 0, arr).astype(np.int8), nan), index=frame.index)
    if violations:
        raise ManifestValidationError(violations)
    return pd.DataFrame(out, index=frame.index)


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

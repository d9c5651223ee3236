"""Link-aware groups: patients joined by anything the leakage audit would catch between splits.

Touches arrays and DataFrames only. A split that keeps each patient in one part can
still leak: the same study filed under two patient ids, one file copied under a new
id, near-identical images. :func:`link_groups` makes every such link part of the
group, so a split made on its groups cannot leak through them by construction.

Groups are the connected components of a graph whose nodes are the ``--group``
values (the patients) and whose edges join two patients that share a value of a
link:

* a column (``study_id``, ``accession``, ``file_sha256``, ``pixel_sha256``, any
  column): the patients of rows with the same non-null value;
* ``phash`` or ``phash:T``: rows whose perceptual hashes differ in at most T bits
  (default the audit's 4), found with the audit's banded index (never all pairs);
* ``same_person``: patient ids sharing every one of the person columns (birth date
  and sex by default), the pairs the audit's ``same_person`` check reports.

Each link adds one edge per pair of patients it joins (each patient to the first
patient holding the value), so the graph has at most one edge per row and link; components come from SciPy's linear-time
``connected_components`` over factorised codes.

A link that glues thousands of patients together (a constant accession, the hash
of a blank image) would make one part of the split out of a single component. A
merged component above ``max_component`` rows is an error
(:class:`~mdprep.errors.ComponentTooLargeError`) that names the link responsible
and its most shared value.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from .errors import ComponentTooLargeError, MdprepWarning, MissingColumnError, UsageError, examples_text, short_repr

#: The near-duplicate link and the person link, besides column names.
PHASH = "phash"
SAME_PERSON = "same_person"
#: Default Hamming threshold of ``--link phash``: the audit's.
DEFAULT_THRESHOLD = 4
#: The default ``max_component``: this share of the rows, but never fewer than MIN_COMPONENT_ROWS.
MAX_COMPONENT_SHARE = 0.01
MIN_COMPONENT_ROWS = 100
#: How many of the largest merged components a summary lists.
LARGEST_SHOWN = 10
#: ``phash:T`` above this warns: the banded index's candidates grow fast with T.
SLOW_THRESHOLD = 6
#: A value "glues" a component when it alone is held by at least this share of the component's groups.
GLUE_SHARE = 0.5


@dataclass(frozen=True)
class Link:
    """One ``--link`` item: a column, ``phash`` within ``threshold`` bits, or ``same_person`` over ``columns``."""

    text: str
    kind: str  # "column", "phash" or "same_person"
    columns: tuple[str, ...]
    threshold: int | None = None


def link_items(values: Sequence[str | None]) -> list[str]:
    """Items of repeated, comma-separated ``--link`` values, in order, without repeats.

    >>> link_items(["study_id,file_sha256", "phash:2", "study_id"])
    ['study_id', 'file_sha256', 'phash:2']
    """
    out = [t.strip() for v in values for t in (v or "").split(",")]
    return list(dict.fromkeys(t for t in out if t))


def parse_links(texts: Sequence[str], columns: Sequence[str], *, person_columns: Sequence[str] = ("birth_date", "sex")) -> list[Link]:
    """Check ``--link`` items against the manifest's columns; every problem in one error.

    ``phash`` and ``phash:T`` need a ``phash`` column (from ``mdprep hash``),
    ``same_person`` needs every person column; any other item is a column name.

    >>> [(l.kind, l.columns, l.threshold) for l in parse_links(["study_id", "phash:2"], ["study_id", "phash"])]
    [('column', ('study_id',), None), ('phash', ('phash',), 2)]
    """
    links: list[Link] = []
    problems: list[str] = []
    absent: list[str] = []
    for text in texts:
        name, colon, spec = text.partition(":")
        if not text.strip():
            problems.append("--link names an empty item; give column names, phash[:T] or same_person")
        elif text in columns and text != PHASH:
            links.append(Link(text, "column", (text,)))
        elif name == PHASH:
            threshold = DEFAULT_THRESHOLD
            if colon:
                threshold = int(spec) if re.fullmatch(r"[0-9]{1,2}", spec) else -1
                if not 0 <= threshold <= 16:
                    problems.append(f"--link {text!r}: the Hamming threshold must be a whole number from 0 to 16 bits, for example phash:4")
                    continue
            if threshold > SLOW_THRESHOLD:
                warnings.warn(
                    f"--link {text}: thresholds above {SLOW_THRESHOLD} bits make many candidate pairs (minutes on 100,000 images); "
                    "near-duplicates of one image rarely differ in more than 4 to 6 bits",
                    MdprepWarning,
                    stacklevel=3,
                )
            if PHASH not in columns:
                problems.append(f"--link {text!r} needs a 'phash' column: run `mdprep hash` first")
                continue
            links.append(Link(text, "phash", (PHASH,), threshold))
        elif text == SAME_PERSON:
            cols = tuple(dict.fromkeys(person_columns))
            if not cols:
                problems.append("--link same_person needs person columns (--person-cols birth_date,sex)")
                continue
            missing = [c for c in cols if c not in columns]
            if missing:
                problems.append(
                    f"--link same_person needs the person columns {', '.join(map(repr, missing))}, which this manifest lacks; "
                    f"its columns are {examples_text(list(columns), len(columns), limit=12)} (--person-cols names others)"
                )
                continue
            links.append(Link(text, "same_person", cols))
        else:
            absent.append(text)
    if absent and not problems:
        raise MissingColumnError(absent, list(columns), hint="--link takes column names, phash[:T] or same_person")
    if absent:
        problems.append(f"--link {', '.join(map(repr, absent))}: no such column (--link takes column names, phash[:T] or same_person)")
    if problems:
        raise UsageError("; ".join(problems), links=list(texts))
    return links


def max_component_rows(value: int | float | str | None, n_rows: int) -> int:
    """The largest merged component allowed, in rows: ``N`` rows, ``P%`` of the rows, or the default.

    The default is 1% of the rows, but at least 100 rows, so a small manifest is not
    refused for one patient with two ids.

    >>> max_component_rows(None, 112_120), max_component_rows("5%", 1000), max_component_rows(None, 500), max_component_rows("7%", 100)
    (1122, 50, 100, 7)
    """
    if value is None:
        return max(math.ceil(MAX_COMPONENT_SHARE * n_rows), MIN_COMPONENT_ROWS)
    text = str(value).strip()
    bad = UsageError(f"--max-component {value!r}: give a whole number of rows (5000) or a share of the manifest above 0% and up to 100% (5%)")
    if text.endswith("%"):
        if not re.fullmatch(r"[0-9]+(\.[0-9]+)?", text[:-1]) or not 0 < float(text[:-1]) <= 100:
            raise bad
        # Exact decimal arithmetic: 7% of 100 rows is 7, not ceil(7.000000000000001).
        from fractions import Fraction

        return max(math.ceil(Fraction(text[:-1]) * n_rows / 100), 1)
    if not re.fullmatch(r"[0-9]+", text) or int(text) < 1:
        raise bad
    return int(text)


@dataclass(frozen=True)
class Component:
    """One merged component: its rows, its groups (patients) and the joins each link made in it."""

    rows: int
    groups: int
    links: dict[str, int]  # link text -> pairs of groups it joined within this component
    examples: tuple[str, ...]  # a few of its group values, smallest first

    def to_dict(self) -> dict:
        return {"rows": self.rows, "groups": self.groups, "links": dict(self.links), "examples": list(self.examples)}


@dataclass(frozen=True)
class LinkedGroups:
    """Groups after linking: one code per row, and what the links merged.

    ``codes`` numbers the components in the order of their smallest group value;
    ``names`` gives that value for each component (``p1 (+2 linked)`` for a merged
    one), so messages name a component by one of its patients.
    """

    codes: np.ndarray
    names: np.ndarray
    links: tuple[Link, ...]
    groups: int
    components: int
    merged: int  # components of two or more groups
    merged_groups: int
    merged_rows: int
    max_component: int
    per_link: dict[str, dict] = field(default_factory=dict)  # link text -> rows with a value, pairs of groups joined
    largest: tuple[Component, ...] = ()
    notes: tuple[str, ...] = ()  # links that join nothing, blank values

    def to_dict(self) -> dict:
        return {
            "links": [l.text for l in self.links],
            "groups_before": self.groups,
            "groups_after": self.components,
            "merged_components": self.merged,
            "merged_groups": self.merged_groups,
            "merged_rows": self.merged_rows,
            "max_component": self.max_component,
            "per_link": self.per_link,
            "largest": [c.to_dict() for c in self.largest],
        }

    def summary(self, group: str = "patient_id") -> str:
        """One line for people: groups before and after, merged components, the largest one."""
        text = (
            f"{self.groups:,} {group} values became {self.components:,} groups: "
            f"{self.merged:,} merged component(s) hold {self.merged_groups:,} {group} values and {self.merged_rows:,} rows"
        )
        if self.largest:
            top = self.largest[0]
            joined = ", ".join(f"{k} ({v:,})" for k, v in top.links.items() if v)
            text += f"; the largest has {top.rows:,} rows of {top.groups:,} {group} values, joined by {joined}"
        return text


def _value_edges(values: np.ndarray, group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edges joining the groups of rows that share a value code (``values`` >= 0): each to the value's first group."""
    present = values >= 0
    v, g = values[present], group[present]
    if not len(v):
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    order = np.lexsort((g, v))
    v, g = v[order], g[order]
    start = np.ones(len(v), dtype=bool)
    start[1:] = v[1:] != v[:-1]
    first = g[start][np.cumsum(start) - 1]
    join = g != first
    return first[join], g[join]


def _codes_of(frame: pd.DataFrame, link: Link) -> np.ndarray:
    """Per row, the code of its link value (-1 where it has none); rows with equal values share a code."""
    if link.kind == "same_person":
        from .audit import person_key

        present, key = person_key(frame, link.columns)  # the audit's own key, so the two always agree
        codes = np.full(len(frame), -1, dtype=np.int64)
        codes[present] = pd.factorize(key[present])[0]
        return codes
    return pd.factorize(frame[link.columns[0]], use_na_sentinel=True)[0].astype(np.int64)


def _link_edges(frame: pd.DataFrame, link: Link, group: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Edges (between group codes) that ``link`` adds, and the number of rows that have a value for it."""
    codes = _codes_of(frame, link)
    a, b = _value_edges(codes, group)
    rows = int((codes >= 0).sum())
    if link.kind == "phash" and link.threshold:
        from .audit import near_duplicate_pairs, phash_values

        present = codes >= 0
        hashes = phash_values(frame[PHASH])
        uniq, first_row = np.unique(hashes, return_index=True)
        ui, uj, _ = near_duplicate_pairs(uniq, link.threshold)
        rep = group[present][first_row]  # every row of one hash value is joined to this group already
        keep = rep[ui] != rep[uj]
        a, b = np.concatenate([a, rep[ui][keep]]), np.concatenate([b, rep[uj][keep]])
    if len(a):  # one edge per pair of groups, however many rows join them
        pairs = np.unique(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1), axis=0)
        a, b = pairs[:, 0], pairs[:, 1]
    return a, b, rows


def _components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Component label of each of ``n`` nodes joined by edges ``a``-``b``, numbered by their smallest node."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not len(a):
        return np.arange(n, dtype=np.int64)
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n)).tocsr()
    _, labels = connected_components(graph, directed=False)
    smallest = np.full(labels.max() + 1, n, dtype=np.int64)
    np.minimum.at(smallest, labels, np.arange(n))
    rank = np.empty(len(smallest), dtype=np.int64)
    rank[np.argsort(smallest, kind="stable")] = np.arange(len(smallest))
    return rank[labels]


def _check_values(frame: pd.DataFrame, links: Sequence[Link]) -> list[str]:
    """Refuse link columns that hold lists (one value per row is needed); notes on columns that link nothing."""
    import pyarrow as pa

    problems, notes = [], []
    for link in links:
        for col in link.columns:
            values = frame[col]
            dtype = values.dtype
            nested = isinstance(dtype, pd.ArrowDtype) and (pa.types.is_list(dtype.pyarrow_dtype) or pa.types.is_large_list(dtype.pyarrow_dtype)
                                                          or pa.types.is_struct(dtype.pyarrow_dtype) or pa.types.is_map(dtype.pyarrow_dtype))
            if not nested and dtype == object:
                nested = bool(values.dropna().map(lambda v: isinstance(v, (list, tuple, dict, set, np.ndarray))).any())
            if nested:
                problems.append(f"--link {link.text}: column {col!r} holds lists, not one value per row; link a column with one value per image")
    if problems:
        raise UsageError("; ".join(problems), links=[l.text for l in links])
    for link in links:
        if link.kind == "same_person":
            continue
        values = frame[link.columns[0]]
        if not values.notna().any():
            hint = ": run `mdprep hash` first" if link.kind == "phash" else ""
            notes.append(f"--link {link.text}: no row has a value, so it links nothing{hint}")
        elif pd.api.types.is_string_dtype(values.dtype) or values.dtype == object:
            blank = values.dropna().astype("str").str.strip() == ""
            if blank.any():
                notes.append(
                    f"--link {link.text}: {int(blank.sum()):,} row(s) hold a blank value, which links them like any other value "
                    "(as the audit compares them); make blanks null if they mean unknown"
                )
    return notes


def link_groups(
    frame: pd.DataFrame,
    group_codes: np.ndarray,
    group_names: np.ndarray,
    links: Sequence[Link],
    *,
    max_component: int | float | str | None = None,
) -> LinkedGroups:
    """Join the groups of ``frame`` by ``links``; see the module docstring.

    Parameters
    ----------
    frame : DataFrame
        The manifest's rows (the link columns are read from it).
    group_codes : (n,) int
        Each row's group, ``0..G-1`` in the sorted order of ``group_names``.
    group_names : (G,)
        The group values, as messages should show them.
    links : sequence of Link
        From :func:`parse_links`.
    max_component : int, "P%" or None
        The most rows links may join to a component's largest group (see
        :func:`max_component_rows`): a patient with many images is never glue.

    Raises
    ------
    ComponentTooLargeError
        A merged component adds more rows than ``max_component`` to its largest
        group: the message names the link whose joins alone make the largest part of
        it and, when one value joins most of its groups, that value.

    Examples
    --------
    >>> f = pd.DataFrame({"patient_id": ["a", "b", "c"], "study_id": ["s1", "s1", "s2"]})
    >>> codes, names = pd.factorize(f["patient_id"], sort=True)
    >>> linked = link_groups(f, codes, names, parse_links(["study_id"], list(f.columns)))
    >>> linked.codes.tolist(), linked.names.tolist(), linked.merged
    ([0, 0, 1], ['a (+1 linked)', 'c'], 1)
    """
    group_codes = np.asarray(group_codes, dtype=np.int64)
    n_groups = len(group_names)
    limit = max_component_rows(max_component, len(frame))
    notes = _check_values(frame, links)
    edges = {l.text: _link_edges(frame, l, group_codes) for l in links}
    a = np.concatenate([e[0] for e in edges.values()]) if edges else np.zeros(0, dtype=np.int64)
    b = np.concatenate([e[1] for e in edges.values()]) if edges else np.zeros(0, dtype=np.int64)
    comp_of_group = _components(n_groups, a, b)
    n_comp = int(comp_of_group.max()) + 1 if n_groups else 0
    group_rows = np.bincount(group_codes, minlength=n_groups)
    comp_rows = np.bincount(comp_of_group, weights=group_rows, minlength=n_comp).astype(np.int64)
    comp_groups = np.bincount(comp_of_group, minlength=n_comp)
    biggest_member = np.zeros(n_comp, dtype=np.int64)
    np.maximum.at(biggest_member, comp_of_group, group_rows)
    added = comp_rows - biggest_member  # rows the links brought to the component's largest group
    merged = comp_groups > 1
    # Joins per (component, link): pairs of groups that link joined inside the component.
    joins = {text: np.bincount(comp_of_group[e[0]], minlength=n_comp) for text, e in edges.items()}
    per_link = {text: {"rows": e[2], "joins": int(len(e[0]))} for text, e in edges.items()}
    names = np.asarray(group_names, dtype=object)
    first_group = np.full(n_comp, n_groups, dtype=np.int64)
    np.minimum.at(first_group, comp_of_group, np.arange(n_groups))
    shown = np.array([str(x) for x in names[first_group]], dtype=object) if n_comp else names[:0]
    if merged.any():
        shown[merged] = [f"{n} (+{k - 1} linked)" for n, k in zip(shown[merged], comp_groups[merged])]

    def component(c: int) -> Component:
        members = np.flatnonzero(comp_of_group == c)[:3]
        return Component(int(comp_rows[c]), int(comp_groups[c]), {t: int(j[c]) for t, j in joins.items()}, tuple(str(names[g]) for g in members))

    over = np.flatnonzero(merged & (added > limit))
    if len(over):
        worst = int(over[np.argmax(added[over])])
        raise _too_large(frame, links, group_codes, n_groups, comp_of_group, worst, component(worst), int(added[worst]), limit, len(over))
    order = np.flatnonzero(merged)
    order = order[np.lexsort((order, -comp_rows[order]))][:LARGEST_SHOWN]
    return LinkedGroups(
        codes=comp_of_group[group_codes],
        names=shown,
        links=tuple(links),
        groups=n_groups,
        components=n_comp,
        merged=int(merged.sum()),
        merged_groups=int(comp_groups[merged].sum()),
        merged_rows=int(comp_rows[merged].sum()),
        max_component=limit,
        per_link=per_link,
        largest=tuple(component(int(c)) for c in order),
        notes=tuple(notes),
    )


def _shown_value(frame: pd.DataFrame, link: Link, row: int) -> str:
    """A link's value in one row as text: the hash in hex, the person columns joined by ``|``."""
    if link.kind == "phash":
        from .audit import phash_values

        return f"{int(phash_values(frame[PHASH].iloc[[row]])[0]):016x}"
    if link.kind == "same_person":
        from .audit import person_key

        return str(person_key(frame.iloc[[row]], link.columns)[1][0])
    return str(frame[link.columns[0]].iloc[row])


def _too_large(frame, links, group_codes, n_groups, comp_of_group, c, comp: Component, added: int, limit: int, count: int) -> ComponentTooLargeError:
    """The error for component ``c``: which link alone joins most of it, and whether one value glues it."""
    inside = comp_of_group[group_codes] == c
    shares = []
    for link in links:
        a, b, _ = _link_edges(frame, link, group_codes)
        solo = _components(n_groups, a, b)
        solo_rows = np.bincount(solo[group_codes][inside], minlength=solo.max() + 1)
        shares.append((int(solo_rows.max()) if len(solo_rows) else 0, link))
    size, link = max(shares, key=lambda t: t[0])
    codes = _codes_of(frame, link)[inside]
    groups_in = group_codes[inside]
    glue = ""
    if (codes >= 0).any():
        pairs = np.unique(np.stack([codes[codes >= 0], groups_in[codes >= 0]], axis=1), axis=0)
        value_code, n = np.unique(pairs[:, 0], return_counts=True)
        top = int(np.argmax(n))
        if n[top] > 2 and n[top] >= GLUE_SHARE * comp.groups:
            row = np.flatnonzero(inside)[np.flatnonzero(codes == value_code[top])[0]]
            glue = short_repr(_shown_value(frame, link, row))
            glue_groups = int(n[top])
    more = f" ({count:,} components are over the limit)" if count > 1 else ""
    head = (
        f"--link joins {comp.rows:,} rows of {comp.groups:,} groups into one component, {added:,} more than its largest group holds, "
        f"over --max-component {limit:,} rows{more}"
    )
    if glue:
        message = (
            f"{head}; --link {link.text} alone joins {size:,} of those rows, and its value {glue} is shared by {glue_groups:,} groups. "
            f"A constant or placeholder value (an empty accession, the hash of a blank image) glues unrelated patients: make it null, "
            f"drop {link.text} from --link, or raise --max-component if the component is real"
        )
    else:
        joined = ", ".join(f"{t} {j:,}" for t, j in comp.links.items() if j)
        message = (
            f"{head}; no single value joins most of it: it is a chain of pairs ({joined} pairs of groups joined), the largest part "
            f"of which --link {link.text} alone joins ({size:,} rows). Check that link's values, or raise --max-component if the chain is real"
        )
    return ComponentTooLargeError(message, link=link.text, rows=comp.rows, groups=comp.groups, limit=limit, value=glue or None)

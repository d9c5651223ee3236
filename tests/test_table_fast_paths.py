"""The shortcuts of `ingest table` give what the general code gives.

Plain label lists skip ``json``/``ast``; sex spellings are read once per distinct value;
distinct ids and stripped ids are tested on the Arrow arrays; the CLI writes the manifest
that ``ingest_table`` checked without checking it again. Each is compared here with the
slow reading it replaces, on generated values.
"""

from __future__ import annotations

import ast
import json

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from mdprep.cli import main
from mdprep.ingest import SEX_CODES, UNKNOWN_SEX, ingest_table, normalize_sex
from mdprep.ingest.tables import _distinct_text, _stripped_already
from mdprep.labels import _PLAIN_LIST, parse_label_list
from mdprep.manifest import write_manifest
from mdprep.synthetic import write_chexpert_table, write_nih_table

#: Characters that make label names hard to read: quotes, escapes, separators, brackets, odd spaces.
_NAME_PARTS = st.sampled_from(list("ab Z,|[]{}'\"\\\t\n\x00\x7f") + ["é", "\u00a0", "\u2003", "COPD signs", "\ud800"])
_NAME = st.lists(_NAME_PARTS, max_size=4).map("".join)
_NAMES = st.lists(_NAME, max_size=5)


def _reference(cell: str) -> list[str]:
    """What parse_label_list returns for a list literal that Python reads, by ast alone."""
    return [str(i).strip() for i in ast.literal_eval(cell) if i is not None and str(i).strip()]


@settings(max_examples=300, deadline=None)
@given(names=_NAMES, spaced=st.booleans(), trailing=st.booleans())
def test_label_lists_read_as_python_reads_them(names, spaced, trailing):
    cell = repr(names)  # Python's own literal: quotes and backslashes escaped
    if spaced:
        cell = cell.replace("[", "[ ").replace("]", " ]").replace(", ", " , ")
    if trailing and names:
        cell = cell[:-1] + ",]"
    assert parse_label_list(cell) == _reference(cell)


@settings(max_examples=200, deadline=None)
@given(names=st.lists(_NAME.filter(lambda s: "\ud800" not in s), max_size=5))
def test_json_label_lists_read_as_json_reads_them(names):
    cell = json.dumps(names, ensure_ascii=False)
    expected = [n.strip() for n in json.loads(cell) if n.strip()]
    assert parse_label_list(cell) == expected


def test_padchest_like_lists_take_the_plain_path():
    cells = ["['normal']", "['COPD signs', ' cardiomegaly']", "[]", "['pleural effusion', 'alveolar pattern',]", '["a", \'b\']']
    assert all(_PLAIN_LIST.fullmatch(c) for c in cells)
    assert [parse_label_list(c) for c in cells] == [["normal"], ["COPD signs", "cardiomegaly"], [], ["pleural effusion", "alveolar pattern"], ["a", "b"]]
    # Escapes, quotes inside and adjacent literals go the general way, and read the same.
    for cell, expected in (("['it\\'s']", ["it's"]), ("['a' 'b']", ["ab"]), ("['a\\\\b']", ["a\\b"]), ("[,]", [])):
        assert not _PLAIN_LIST.fullmatch(cell) and parse_label_list(cell) == expected


_SEX_VALUES = st.one_of(
    st.sampled_from(["M", "F", "O", "male", " Female ", "other", "U", "unknown", "", "nan", "None", "<NA>", "x", "m ", "Ｍ"]),
    st.none(),
    st.just(np.nan),
    st.integers(-2, 2),
    st.floats(allow_nan=False, allow_infinity=False, width=16),
    st.booleans(),
)


@settings(max_examples=200, deadline=None)
@given(values=st.lists(_SEX_VALUES, max_size=12), as_text=st.booleans())
def test_sex_spellings_read_once_per_distinct_value_as_per_row(values, as_text):
    series = pd.Series(values, dtype=object)
    if as_text:
        series = series.map(lambda v: v if v is None or isinstance(v, str) else str(v)).astype("str")
    text = series.astype("str").str.strip().str.upper()  # the per-row reading
    expected = text.map(SEX_CODES)
    expected_bad = int((expected.isna() & series.notna() & ~text.isin(UNKNOWN_SEX)).sum())
    got, bad = normalize_sex(series)
    assert bad == expected_bad
    assert got.dtype == "str" and got.index.equals(series.index)
    assert got.isna().tolist() == expected.isna().tolist()
    assert got.dropna().tolist() == expected.dropna().tolist()


_IDS = st.lists(st.one_of(st.none(), st.text(st.sampled_from(list("ab1 \t\n") + ["\u00a0", "\u2003", "\u3000"]), max_size=4)), max_size=10)


@settings(max_examples=300, deadline=None)
@given(ids=_IDS)
def test_id_shortcuts_agree_with_pandas(ids):
    values = pd.Series(ids, dtype="str")
    repeated = bool((values.duplicated(keep=False) & values.notna()).any())
    assert _distinct_text(values) == (not repeated)
    stripped = values.str.strip()
    assert _stripped_already(values) == (not bool((values.notna() & (values != stripped)).any()))


def test_id_shortcuts_leave_other_columns_to_the_general_check():
    assert not _distinct_text(pd.Series(["a", "b"], dtype=object))
    assert not _distinct_text(pd.Series([1, 2]))


def test_cli_writes_the_bytes_that_write_manifest_writes(runner, tmp_path):
    for name, write, preset in (("Data_Entry_2017.csv", write_nih_table, "nih"), ("train.csv", write_chexpert_table, "chexpert")):
        table = tmp_path / name
        write(table, patients=15)
        library = tmp_path / f"{preset}-library.parquet"
        write_manifest(ingest_table(table, preset=preset).manifest, library)
        cli = tmp_path / f"{preset}-cli.parquet"
        res = runner.invoke(main, ["ingest", "table", str(table), "--preset", preset, "-o", str(cli), "-q"])
        assert res.exit_code == 0, res.stderr
        assert cli.read_bytes() == library.read_bytes()
        res = runner.invoke(main, ["ingest", "table", str(table), "--preset", preset, "-o", "-", "-q"])
        assert res.exit_code == 0 and res.stdout_bytes == library.read_bytes()

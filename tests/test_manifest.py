from __future__ import annotations

import datetime as dt
import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdprep.errors import InputError, ManifestValidationError
from mdprep.fileio import atomic_write
from mdprep.manifest import Manifest, provenance_step, read_manifest, summarize, validate, validate_frame, write_manifest


def _manifest(n=4, **extra):
    frame = pd.DataFrame(
        {
            "image_id": [f"img{i}" for i in range(n)],
            "path": [f"p/img{i}.png" for i in range(n)],
            "patient_id": [f"pat{i // 2}" for i in range(n)],
            "Edema": pd.array([1, 0, -1, None][:n], dtype="Int8"),
            **extra,
        }
    )
    return Manifest(frame, labels=("Edema",), root="/data").with_step(provenance_step("test", {"b": 1, "a": 2}))


def test_valid_manifest_has_no_violations():
    assert validate(_manifest()) == []


def test_every_violation_is_reported_at_once():
    frame = pd.DataFrame(
        {
            "image_id": ["a", "a", "b", None],
            "patient_id": ["p", None, "q", "r"],
            "Edema": [1, 2, 0, 7],
            "Mass": ["yes", None, None, None],
        }
    )
    violations = validate_frame(frame, labels=("Edema", "Mass", "Gone"))
    checks = sorted(v.check for v in violations)
    assert checks == sorted(
        ["missing_column", "missing_column", "null_value", "null_value", "duplicate_image_id", "bad_label_value", "bad_label_value"]
    )
    dup = next(v for v in violations if v.check == "duplicate_image_id")
    assert dup.examples == ("a",) and dup.count == 2
    bad = next(v for v in violations if v.check == "bad_label_value" and v.column == "Edema")
    assert bad.count == 2 and set(bad.examples) == {2, 7}
    missing = [v for v in violations if v.check == "missing_column"]
    assert any("'path'" in v.message for v in missing) and any("'Gone'" in v.message for v in missing)
    nulls = {v.column: v for v in violations if v.check == "null_value"}
    assert nulls["patient_id"].examples == (1,) and nulls["image_id"].examples == (3,)


def test_write_refuses_invalid_manifest_and_leaves_nothing(tmp_path):
    m = _manifest()
    bad = m.with_frame(m.frame.assign(patient_id=None))
    with pytest.raises(ManifestValidationError) as err:
        write_manifest(bad, tmp_path / "m.parquet")
    assert err.value.violations[0].check == "null_value"
    assert list(tmp_path.iterdir()) == []


def test_round_trip_keeps_types_labels_root_and_history(tmp_path):
    m = _manifest(age=np.array([30, 40, 50, 60], dtype="float32"), study_date=[dt.date(2020, 1, i + 1) for i in range(4)])
    path = tmp_path / "m.parquet"
    write_manifest(m, path)
    back = read_manifest(path)
    assert back.labels == ["Edema"] and back.root == "/data"
    assert back.history[0]["command"] == "test" and list(back.history[0]["options"]) == ["a", "b"]
    assert back.frame["Edema"].tolist() == [1, 0, -1, pd.NA]
    assert back.frame["study_date"].tolist() == [dt.date(2020, 1, i + 1) for i in range(4)]
    schema = pq.read_schema(path)
    assert str(schema.field("Edema").type) == "int8" and str(schema.field("age").type) == "float"
    assert str(schema.field("study_date").type) == "date32[day]"


def test_same_manifest_gives_identical_bytes_and_rewrite_changes_nothing(tmp_path):
    write_manifest(_manifest(), tmp_path / "a.parquet")
    write_manifest(_manifest(), tmp_path / "b.parquet")
    a = (tmp_path / "a.parquet").read_bytes()
    assert a == (tmp_path / "b.parquet").read_bytes()
    write_manifest(read_manifest(tmp_path / "a.parquet"), tmp_path / "c.parquet")
    assert (tmp_path / "c.parquet").read_bytes() == a


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path):
    target = tmp_path / "m.parquet"
    target.write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.parquet"]


def test_reading_a_plain_parquet_says_how_to_make_a_manifest(tmp_path):
    pd.DataFrame({"a": [1]}).to_parquet(tmp_path / "plain.parquet")
    with pytest.raises(InputError, match="not an mdprep manifest.*mdprep ingest table"):
        read_manifest(tmp_path / "plain.parquet")
    with pytest.raises(InputError, match="does not exist"):
        read_manifest(tmp_path / "nope.parquet")
    (tmp_path / "junk.parquet").write_text("junk")
    with pytest.raises(InputError, match="not a readable Parquet"):
        read_manifest(tmp_path / "junk.parquet")


def test_summary_counts():
    s = summarize(_manifest())
    assert (s.rows, s.patients, s.images_per_patient_max, s.unlabeled_rows) == (4, 2, 2, 1)
    (edema,) = s.labels
    assert (edema.positive, edema.negative, edema.uncertain, edema.missing) == (1, 1, 1, 1)
    assert edema.prevalence == 0.25


label_value = st.sampled_from([1, 0, -1, None])
text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(st.tuples(text, text, label_value, label_value, st.one_of(st.none(), st.floats(0, 120, width=32))), min_size=1, max_size=30),
)
def test_round_trip_property(tmp_path_factory, rows):
    frame = pd.DataFrame(
        {
            "image_id": [f"{i}-{r[0]}" for i, r in enumerate(rows)],
            "path": [r[0] for r in rows],
            "patient_id": [r[1] for r in rows],
            "A": pd.array([r[2] for r in rows], dtype="Int8"),
            "B": pd.array([r[3] for r in rows], dtype="Int8"),
            "age": pd.array([r[4] for r in rows], dtype="Float32").astype("float32"),
        }
    )
    m = Manifest(frame, labels=("A", "B"))
    path = tmp_path_factory.mktemp("rt") / "m.parquet"
    write_manifest(m, path)
    back = read_manifest(path)
    pd.testing.assert_frame_equal(back.frame, m.frame, check_dtype=False)
    assert back.frame["A"].dtype == "Int8"
    first = path.read_bytes()
    write_manifest(back, path)
    assert path.read_bytes() == first
    assert not any(name.endswith(".tmp") for name in os.listdir(path.parent))


def test_integer_labels_are_judged_like_their_float_values():
    import pyarrow as pa

    values = [1, 0, -1, None, 3, -2, 3, 1]
    kinds = {
        "Int8": pd.array(values, dtype="Int8"),
        "int8[pyarrow]": pd.array(values, dtype=pd.ArrowDtype(pa.int8())),
        "int64": pd.Series([0 if v is None else v for v in values], dtype="int64"),
        "UInt8": pd.array([None if v is None else abs(v) for v in values], dtype="UInt8"),
    }
    for name, labels in kinds.items():
        frame = _manifest(4).frame.drop(columns="Edema").sample(8, replace=True, random_state=0).reset_index(drop=True)
        frame = frame.assign(image_id=[f"i{i}" for i in range(8)], Edema=labels)
        floats = frame.assign(Edema=pd.Series(labels).to_numpy(dtype="float64", na_value=np.nan))
        got, expected = validate_frame(frame, ("Edema",)), validate_frame(floats, ("Edema",))
        assert [v.message for v in got] == [v.message for v in expected] and len(got) == 1, name
        assert validate_frame(frame.assign(Edema=pd.Series(labels).clip(-1, 1)), ("Edema",)) == [], name
    assert validate_frame(_manifest(4).frame.assign(Edema=pd.array([None] * 4, dtype="Int8")), ("Edema",)) == []

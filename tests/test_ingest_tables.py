from __future__ import annotations

import gzip

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdprep.cli import main
from mdprep.errors import EmptyInputError, EncodingError, ManifestValidationError, MdprepWarning, MissingColumnError, UsageError
from mdprep.ingest import ingest_table
from mdprep.ingest.tables import NIH_LABEL_COLUMNS, read_table
from mdprep.labels import labels_from_lists, parse_label_list
from mdprep.synthetic import CHEXPERT_LABELS, write_chexpert_table, write_mimic_tables, write_nih_table


@pytest.mark.parametrize("trailing_comma", [False, True])
@pytest.mark.parametrize("name", ["Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv.gz"])
def test_nih_preset(tmp_path, name, trailing_comma):
    path = tmp_path / name
    n = write_nih_table(path, patients=30, trailing_comma=trailing_comma)
    result = ingest_table(path, preset="nih")
    m = result.manifest
    frame = m.frame
    assert len(frame) == n and m.labels == list(NIH_LABEL_COLUMNS) and len(m.labels) == 15
    assert frame["patient_id"].nunique() == 30
    assert {"width", "height", "pixel_spacing_x", "pixel_spacing_y", "follow_up"} <= set(frame.columns)
    assert not any(c.startswith("_unnamed") for c in frame.columns)
    # Every row has exactly its listed findings, and "No Finding" rows nothing else.
    src = pd.read_csv(path, usecols=[0, 1], names=["img", "labels"], header=0)
    for img, labels in src.head(40).itertuples(index=False):
        row = frame.loc[frame["image_id"] == img, list(NIH_LABEL_COLUMNS)].iloc[0]
        assert sorted(c for c in NIH_LABEL_COLUMNS if row[c] == 1) == sorted(labels.split("|"))
    assert result.manifest.history[0]["inputs"][0]["size"] == path.stat().st_size


def test_chexpert_preset_and_uncertain_policies(tmp_path):
    path = tmp_path / "train.csv"
    n = write_chexpert_table(path, patients=20)
    keep = ingest_table(path, preset="chexpert").manifest
    assert len(keep.frame) == n and keep.labels == list(CHEXPERT_LABELS)
    f = keep.frame
    assert f["study_id"].str.match(r"patient\d+/study\d+$").all()
    assert set(f["view"].dropna()) <= {"AP", "PA", "LATERAL"}
    raw = pd.read_csv(path)
    assert (f["Edema"].isna().to_numpy() == raw["Edema"].isna().to_numpy()).all()
    assert (f["Edema"] == -1).sum() == (raw["Edema"] == -1).sum() > 0
    ones = ingest_table(path, preset="chexpert", uncertain="ones").manifest.frame
    zeros = ingest_table(path, preset="chexpert", uncertain="zeros").manifest.frame
    ignore = ingest_table(path, preset="chexpert", uncertain="ignore").manifest.frame
    assert (ones["Edema"] == 1).sum() == (raw["Edema"] == 1).sum() + (raw["Edema"] == -1).sum()
    assert (zeros["Edema"] == 0).sum() == (raw["Edema"] == 0).sum() + (raw["Edema"] == -1).sum()
    assert ignore["Edema"].isna().sum() == raw["Edema"].isna().sum() + (raw["Edema"] == -1).sum()
    assert not (ignore[list(CHEXPERT_LABELS)] == -1).any().any()


def test_mimic_join(tmp_path):
    lab, meta = tmp_path / "mimic-cxr-2.0.0-chexpert.csv.gz", tmp_path / "mimic-cxr-2.0.0-metadata.csv"
    info = write_mimic_tables(lab, meta, patients=10)
    with pytest.warns(MdprepWarning, match="labelled stud.* no image in .*metadata.csv and gave no rows"):
        result = ingest_table(lab, preset="mimic", metadata=meta)
    f = result.manifest.frame
    assert len(f) == info["images"]
    assert result.report.unlabeled == info["images_without_labels"]
    first = f.iloc[0]
    assert first["path"] == f"files/p{first['patient_id'][:2]}/p{first['patient_id']}/s{first['study_id']}/{first['image_id']}.jpg"
    assert str(f["study_date"].dtype).startswith("date32")
    with pytest.raises(UsageError, match="--metadata"):
        ingest_table(lab, preset="mimic")


def test_generic_label_list_column_with_literals_and_separator(tmp_path):
    path = tmp_path / "labels.tsv"
    path.write_text(
        "file\tsubject\tfindings\tsex\tage\n"
        "a.png\ts1\t['Edema', ' Mass']\tMale\t40\n"
        "b.png\ts1\tEdema|Mass\tF\tn/a\n"
        "c.png\ts2\t\tF\t33\n"
        'd.png\ts3\t["Nodule"]\tF\t50\n'
    )
    result = ingest_table(path, image_col="file", patient_col="subject", labels_col="findings")
    m = result.manifest
    assert m.labels == ["Edema", "Mass", "Nodule"]
    assert m.frame["Edema"].tolist() == [1, 1, pd.NA, 0]
    assert result.report.unlabeled == 1
    assert result.report.invalid_values == {"age": 1}
    assert m.frame["sex"].tolist() == ["M", "F", "F", "F"]
    assert m.frame["path"].tolist() == ["a.png", "b.png", "c.png", "d.png"]


def test_generic_one_hot_columns_and_ids_keep_leading_zeros(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("image_id,patient_id,A,B,site\n001.png,007,1,0,x\n002.png,007,-1,,y\n")
    m = ingest_table(path, label_cols=["A", "B"]).manifest
    assert m.frame["patient_id"].tolist() == ["007", "007"]
    assert m.frame["A"].tolist() == [1, -1] and m.frame["B"].tolist() == [0, pd.NA]
    assert m.frame["site"].tolist() == ["x", "y"]


def test_generic_parquet_input(tmp_path):
    path = tmp_path / "t.parquet"
    pd.DataFrame({"image_id": ["a", "b"], "patient_id": [1, 2], "A": [1.0, None]}).to_parquet(path)
    m = ingest_table(path, label_cols=["A"]).manifest
    assert m.frame["patient_id"].tolist() == ["1", "2"]


def test_missing_column_names_it_and_lists_present(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("img,pid\na,1\n")
    with pytest.raises(MissingColumnError) as err:
        ingest_table(path, image_col="img", patient_col="patient")
    assert err.value.missing == ["patient"] and err.value.present == ["img", "pid"]
    assert "'patient' not found" in str(err.value) and "'img', 'pid'" in str(err.value)


def test_bad_label_values_are_all_reported(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("image_id,patient_id,A,B\na,1,2,x\nb,1,5,0\n")
    with pytest.raises(ManifestValidationError) as err:
        ingest_table(path, label_cols=["A", "B"])
    assert {v.column for v in err.value.violations} == {"A", "B"}


def test_text_and_out_of_range_label_values_are_reported_in_one_pass(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("image_id,patient_id,A\na,1,y\nb,1,0.5\nc,1,2\nd,1,1\n")
    with pytest.raises(ManifestValidationError) as err:
        ingest_table(path, label_cols=["A"])
    (v,) = err.value.violations
    assert v.count == 3 and v.examples == ("y", 0.5, 2)
    assert v.message == "label column 'A' has 3 bad value(s), 1 that are not numbers: 'y'; 2 outside {1, 0, -1, null}: 0.5, 2"


def test_many_broken_rules_give_a_bounded_error(runner, tmp_path):
    names = [f"L{i}" for i in range(50)]
    rows = "".join(f"{r},p{r}," + ",".join(f"val{r}_{i}_" + "q" * 50 for i in range(50)) + "\n" for r in range(10))
    path = tmp_path / "t.csv"
    path.write_text("image_id,patient_id," + ",".join(names) + "\n" + rows)
    with pytest.raises(ManifestValidationError) as err:
        ingest_table(path, label_cols=names)
    assert len(err.value.violations) == 50 and len(str(err.value)) < 4000
    assert str(err.value).endswith("... and 40 more rules broken (columns 'L10', 'L11', 'L12', 'L13', 'L14', 'L15', 'L16', 'L17', 'L18', 'L19', ... (40 in all))")
    res = runner.invoke(main, ["ingest", "table", str(path), "--label-cols", ",".join(names), "-o", str(tmp_path / "m.parquet")])
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 12 and len(res.stderr) < 4000
    assert lines[0] == "Error: the manifest breaks 50 rules of the contract (docs/manifest.md):"
    assert lines[-1].startswith("  ... and 40 more rules broken (columns 'L10', 'L11'")


def test_empty_inputs(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(EmptyInputError, match="is empty"):
        ingest_table(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("image_id,patient_id\n")
    with pytest.raises(EmptyInputError, match="header but no data rows"):
        ingest_table(tmp_path / "header.csv")
    with gzip.open(tmp_path / "e.csv.gz", "wb") as fh:
        fh.write(b"")
    with pytest.raises(EmptyInputError):
        ingest_table(tmp_path / "e.csv.gz")


def test_non_utf8_names_the_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"image_id,patient_id,note\na,1,ok\nb,2,caf\xe9\n")
    with pytest.raises(EncodingError) as err:
        ingest_table(path)
    assert err.value.line == 3 and "line 3" in str(err.value) and "--encoding latin-1" in str(err.value)
    m = ingest_table(path, encoding="latin-1").manifest
    assert m.frame["note"].tolist() == ["ok", "café"]


def test_duplicate_ids_and_null_patients_are_reported_together(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("image_id,patient_id\na,1\na,2\nb,\nc,3\nc,3\n")
    with pytest.raises(ManifestValidationError) as err:
        ingest_table(path)
    msg = str(err.value)
    assert "'a', 'c'" in msg and "line 4" in msg
    assert sorted(v.check for v in err.value.violations) == ["duplicate_image_id", "null_value"]


def test_generic_options_refused_for_presets(tmp_path):
    path = tmp_path / "d.csv"
    write_nih_table(path, patients=2)
    with pytest.raises(UsageError, match="--label-cols: only for --preset generic"):
        ingest_table(path, preset="nih", label_cols=["A"])


def test_same_input_gives_identical_bytes(tmp_path):
    from mdprep.manifest import write_manifest

    path = tmp_path / "d.csv.gz"
    write_nih_table(path, patients=20)
    write_manifest(ingest_table(path, preset="nih").manifest, tmp_path / "a.parquet")
    write_manifest(ingest_table(path, preset="nih").manifest, tmp_path / "b.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def test_read_table_expands_bracketed_headers(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,Size[w,h],b\n1,2,3,4\n")
    assert read_table(path).column_names == ["a", "Size[w]", "Size[h]", "b"]


names = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghij_ ", min_size=1, max_size=8).map(str.strip).filter(bool)


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.one_of(st.none(), st.lists(names, max_size=4)), min_size=1, max_size=25), literal=st.booleans())
def test_labels_from_lists_property(rows, literal):
    cells = [None if r is None else (repr(r) if literal else "|".join(r)) for r in rows]
    frame, labels, unlabeled = labels_from_lists(pd.Series(cells, dtype="str"))
    assert unlabeled == sum(1 for r in rows if not r)
    for i, r in enumerate(rows):
        if not r:
            assert frame.iloc[i].isna().all()
        else:
            assert sorted(c for c in labels if frame.iloc[i][c] == 1) == sorted(set(r))
            assert frame.iloc[i].notna().all()


def test_parse_label_list_edge_cases():
    assert parse_label_list("[]") == []
    assert parse_label_list("['a, b', 'c']") == ["a, b", "c"]
    assert parse_label_list(" a | b |") == ["a", "b"]

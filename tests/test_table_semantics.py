"""`ingest table` semantics on small look-alikes of the public chest X-ray tables.

VinDr-CXR (one row per reader and box), SIIM-ACR (one RLE mask per row), RSNA Pneumonia
(one box per row; patientId is the image), PadChest (list literals, ``_DICOM`` columns),
CheXpert (blanks), DICOM header tables (AS ages, YYYYMMDD dates).
"""

from __future__ import annotations

import gzip
import json
import warnings

import numpy as np
import pandas as pd
import pytest

from mdprep.cli import main
from mdprep.errors import InputError, ManifestValidationError, MdprepWarning, MissingColumnError, UsageError
from mdprep.ingest import ingest_table
from mdprep.labels import (
    aggregate_labels,
    apply_blank_policy,
    combine_votes,
    labels_from_lists,
    load_label_map,
    parse_blank_specs,
    parse_label_rules,
)
from mdprep.manifest import read_manifest
from mdprep.synthetic import CHEXPERT_LABELS, write_chexpert_table, write_mimic_tables, write_nih_table


# Box and reader columns that aggregation drops are expected here; tests that check the warning catch it.
pytestmark = pytest.mark.filterwarnings(r"ignore:column\(s\) .* were dropped:mdprep.errors.MdprepWarning")


def _int8(values):
    return pd.array(values, dtype="Int8")


# ----------------------------------------------------------------------------- VinDr-CXR


VINDR = """image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max
a,Nodule/Mass,8,R1,10,10,20,20
a,Cardiomegaly,3,R1,1,2,3,4
a,Cardiomegaly,3,R2,1,2,3,5
a,No finding,14,R3,,,,
b,No finding,14,R1,,,,
b,No finding,14,R2,,,,
b,No finding,14,R3,,,,
c,Pneumothorax,12,R1,5,5,6,6
c,Pneumothorax,12,R2,5,5,6,7
c,No finding,14,R3,,,,
d,No finding,14,R4,,,,
"""


@pytest.fixture
def vindr(tmp_path):
    path = tmp_path / "vinbigdata-train.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write(VINDR)
    return path


def _labels(result, image):
    f = result.manifest.frame.set_index("image_id")
    return {k: v for k, v in f.loc[image, list(result.manifest.labels)].items()}


def test_repeated_images_are_refused_by_default_with_the_hint(vindr):
    with pytest.raises(InputError) as err:
        ingest_table(vindr, patient_col="image_id", labels_col="class_name")
    msg = str(err.value)
    assert "3 image id(s)" in msg and "(10 rows)" in msg and "'a', 'b', 'c'" in msg
    assert "pass --aggregate any|majority|all (one row per reader or box)" in msg
    assert err.value.fields["repeated_images"] == 3


def test_majority_with_readers_votes_once_per_reader(vindr):
    with pytest.warns(MdprepWarning) as caught:
        r = ingest_table(vindr, patient_col="image_id", labels_col="class_name", aggregate="majority", reader_col="rad_id")
    f = r.manifest.frame
    assert f["image_id"].tolist() == ["a", "b", "c", "d"]
    a = _labels(r, "a")
    # R1 gave two rows (box + Cardiomegaly): combined with 'any' first, so Cardiomegaly is 2 of 3 readers.
    assert a["Cardiomegaly"] == 1 and a["Nodule/Mass"] == 0 and a["No finding"] == 0
    assert _labels(r, "c")["Pneumothorax"] == 1 and _labels(r, "b")["No finding"] == 1
    assert f["source_rows"].tolist() == [4, 3, 3, 1] and str(f["source_rows"].dtype) == "int32"
    rep = r.report
    assert rep.found == 11 and rep.ingested == 4 and rep.aggregated == 7 and rep.reconciles
    assert any("11 rows aggregated into 4 images" in n for n in rep.notes)
    dropped = [str(w.message) for w in caught if "were dropped" in str(w.message)]
    assert len(dropped) == 1 and all(c in dropped[0] for c in ("'class_id'", "'rad_id'", "'x_min'", "'y_max'"))
    assert {"class_id", "rad_id", "x_min"}.isdisjoint(f.columns)


def test_majority_without_readers_counts_rows_and_a_tie_is_uncertain(vindr):
    r = ingest_table(vindr, patient_col="image_id", labels_col="class_name", aggregate="majority")
    # Image a has 4 rows: Cardiomegaly on 2 of them is a tie.
    assert _labels(r, "a")["Cardiomegaly"] == -1
    ignored = ingest_table(vindr, patient_col="image_id", labels_col="class_name", aggregate="majority", uncertain="ignore")
    assert pd.isna(_labels(ignored, "a")["Cardiomegaly"])


def test_any_and_all(vindr):
    any_ = ingest_table(vindr, patient_col="image_id", labels_col="class_name", aggregate="any")
    a = _labels(any_, "a")
    assert (a["Nodule/Mass"], a["Cardiomegaly"], a["No finding"], a["Pneumothorax"]) == (1, 1, 1, 0)
    all_ = ingest_table(vindr, patient_col="image_id", labels_col="class_name", aggregate="all", reader_col="rad_id")
    assert _labels(all_, "a")["Cardiomegaly"] == 0 and _labels(all_, "b")["No finding"] == 1
    assert _labels(all_, "d")["No finding"] == 1


def test_combine_votes_truth_table():
    # groups: 0 = {1, 0}, 1 = {1, -1}, 2 = {-1, 0}, 3 = {0, null}, 4 = {null}, 5 = {1, 1, -1}, 6 = {-1, -1, 1}
    values = pd.DataFrame({"A": _int8([1, 0, 1, -1, -1, 0, 0, None, None, 1, 1, -1, -1, -1, 1])})
    groups = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 5, 5, 5, 6, 6, 6])
    got = {p: combine_votes(values, groups, 7, p)["A"].tolist() for p in ("any", "all", "majority")}
    na = pd.NA
    assert got["any"] == [1, 1, -1, 0, na, 1, 1]
    assert got["all"] == [0, -1, 0, 0, na, -1, -1]
    assert got["majority"] == [-1, -1, -1, 0, na, 1, -1]


def test_reader_rows_combine_with_any_before_voting():
    values = pd.DataFrame({"A": _int8([1, 0, 0, 1, 0])})
    images = np.zeros(5, dtype=int)
    readers = np.array([0, 0, 0, 1, -1])  # -1: a blank reader counts as one reader
    # Readers: r0 any(1, 0, 0) = 1, r1 = 1, blank reader 0: 2 of 3. Rows: 2 of 5.
    assert aggregate_labels(values, images, 1, "majority", readers)["A"].tolist() == [1]
    assert aggregate_labels(values, images, 1, "majority")["A"].tolist() == [0]


def test_identifier_that_differs_within_an_image_is_an_error(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("image_id,patient_id,label\nx,p1,A\nx,p2,B\ny,p3,A\n")
    with pytest.raises(InputError, match=r"patient_id differs between rows of 1 image\(s\), for example 'x'"):
        ingest_table(path, labels_col="label", aggregate="any")


def test_constant_columns_are_kept_and_nulls_checked_by_line_before_aggregating(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("image_id,patient_id,site,label,box\nx,p1,s1,A,1\nx,p1,s1,B,2\ny,p2,s2,A,\n")
    r = ingest_table(path, labels_col="label", aggregate="any")
    assert r.manifest.frame["site"].tolist() == ["s1", "s2"] and "box" not in r.manifest.frame.columns
    path.write_text("image_id,patient_id,label\nx,p1,A\nx,,B\n")
    with pytest.raises(ManifestValidationError, match="line 3"):
        ingest_table(path, labels_col="label", aggregate="any")


def test_one_hot_columns_aggregate_with_blanks_and_uncertain(tmp_path):
    path = tmp_path / "readers.csv"
    path.write_text("image_id,patient_id,reader,A,B\nx,p,r1,1,\nx,p,r2,-1,\nx,p,r3,0,0\ny,p,r1,,\ny,p,r2,,\n")
    r = ingest_table(path, label_cols=["A", "B"], aggregate="any", reader_col="reader")
    f = r.manifest.frame.set_index("image_id")
    assert f.loc["x", "A"] == 1 and f.loc["x", "B"] == 0 and pd.isna(f.loc["y", "A"])
    assert r.report.unlabeled == 1
    r = ingest_table(path, label_cols=["A", "B"], aggregate="all")
    assert r.manifest.frame["A"].tolist()[0] == 0


def test_reader_col_needs_aggregation_and_must_exist(vindr):
    with pytest.raises(UsageError, match="--aggregate"):
        ingest_table(vindr, patient_col="image_id", labels_col="class_name", reader_col="rad_id")
    with pytest.raises(MissingColumnError, match="'reader'"):
        ingest_table(vindr, patient_col="image_id", labels_col="class_name", aggregate="any", reader_col="reader")


# ----------------------------------------------------------------------------- SIIM, RSNA: derived labels


def test_siim_rle_table_gives_pneumothorax(tmp_path):
    path = tmp_path / "siim-pneumothorax-train-rle.csv"
    path.write_text(
        "ImageId, EncodedPixels\n"
        "1.2.276.0.1, -1\n"
        "1.2.276.0.2, 557374 2 1015 8\n"
        "1.2.276.0.2, 4 5 6 7\n"
        "1.2.276.0.3,\n"
    )
    r = ingest_table(path, image_col="ImageId", patient_col="ImageId", label_when=["Pneumothorax:EncodedPixels!=-1"], aggregate="any")
    f = r.manifest.frame
    assert f["Pneumothorax"].tolist() == [0, 1, pd.NA]
    assert f["path"].tolist() == f["image_id"].tolist()
    assert "EncodedPixels" not in f.columns and r.manifest.labels == ["Pneumothorax"]
    assert r.manifest.history[-1]["options"]["label_when"] == ["Pneumothorax:EncodedPixels!=-1"]


def test_rsna_labels_patient_is_the_image(tmp_path):
    path = tmp_path / "stage_2_train_labels.csv"
    path.write_text(
        "patientId,x,y,width,height,Target\n"
        "0004cfab,,,,,0\n"
        "00436515,264.0,152.0,213.0,379.0,1\n"
        "00436515,562.0,152.0,256.0,453.0,1\n"
        "00569f44,,,,,0\n"
    )
    r = ingest_table(path, image_col="patientId", patient_col="patientId", label_when="Pneumonia:Target==1", aggregate="any")
    f = r.manifest.frame
    assert f["image_id"].tolist() == ["0004cfab", "00436515", "00569f44"]
    assert (f["patient_id"] == f["image_id"]).all() and (f["path"] == f["image_id"]).all()
    assert f["Pneumonia"].tolist() == [0, 1, 0] and f["source_rows"].tolist() == [1, 2, 1]
    assert "x" not in f.columns and "Target" not in f.columns
    assert r.report.found == 4 and r.report.aggregated == 1 and r.report.reconciles


def test_label_when_on_a_numeric_parquet_column(tmp_path):
    path = tmp_path / "t.parquet"
    pd.DataFrame({"image_id": ["a", "b", "c"], "patient_id": ["1", "2", "3"], "Target": [1.0, 0.0, None]}).to_parquet(path)
    assert ingest_table(path, label_when=["P:Target==1"]).manifest.frame["P"].tolist() == [1, 0, pd.NA]


@pytest.mark.parametrize("spec", ["Pneumothorax", "Pneumothorax:EncodedPixels", ":col==1", "P:==1", "P:col==", "P:col=1"])
def test_label_when_parse_errors_quote_the_spec_and_the_syntax(spec):
    with pytest.raises(UsageError) as err:
        parse_label_rules([spec])
    assert repr(spec) in str(err.value) and "NAME:COLUMN==VALUE or NAME:COLUMN!=VALUE" in str(err.value)


def test_label_when_missing_column_and_name_clash(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("image_id,patient_id,Target,site\na,1,1,x\n")
    with pytest.raises(MissingColumnError, match="'Targ' not found"):
        ingest_table(path, label_when=["P:Targ==1"])
    with pytest.raises(UsageError, match="'site'"):
        ingest_table(path, label_when=["site:Target==1"])
    with pytest.raises(UsageError, match="more than once"):
        ingest_table(path, label_when=["P:Target==1", "P:Target!=0"])


# ----------------------------------------------------------------------------- blank cells


def test_blank_negative_on_chexpert_leaves_uncertain_and_unlabeled_rows_alone(tmp_path):
    path = tmp_path / "train.csv"
    write_chexpert_table(path, patients=15)
    raw = pd.read_csv(path)
    # One row with every label blank: no label row at all, it stays unlabeled.
    raw.loc[0, list(CHEXPERT_LABELS)] = np.nan
    raw.to_csv(path, index=False)
    labelled = raw[list(CHEXPERT_LABELS)].notna().any(axis=1)
    neg = ingest_table(path, preset="chexpert", blank="negative").manifest.frame
    blank = raw["Edema"].isna()
    assert (neg.loc[blank & labelled, "Edema"] == 0).all()
    assert neg.loc[0, list(CHEXPERT_LABELS)].isna().all()
    assert (neg["Edema"] == -1).sum() == (raw["Edema"] == -1).sum() > 0
    # --uncertain ignore turns -1 into null after the blank policy: those stay null.
    ign = ingest_table(path, preset="chexpert", blank="negative", uncertain="ignore")
    assert ign.manifest.frame["Edema"].isna().sum() == (raw["Edema"] == -1).sum() + (~labelled).sum()
    assert ign.report.unlabeled == (~labelled).sum() and any("counted as negative" in n for n in ign.report.notes)
    # Per label wins over global, names match ignoring case and underscores.
    per = ingest_table(path, preset="chexpert", blank=["negative", "no_finding=missing"]).manifest.frame
    assert per["No Finding"].isna().sum() == raw["No Finding"].isna().sum()
    assert (per.loc[blank & labelled, "Edema"] == 0).all()
    only = ingest_table(path, preset="chexpert", blank=["Edema=negative"]).manifest.frame
    assert (only.loc[blank & labelled, "Edema"] == 0).all() and only["Cardiomegaly"].isna().sum() == raw["Cardiomegaly"].isna().sum()


def test_blank_specs_errors():
    assert parse_blank_specs("negative") == ("negative", {})
    for bad in (["maybe"], ["A=maybe"], ["=negative"]):
        with pytest.raises(UsageError, match="POLICY or LABEL=POLICY"):
            parse_blank_specs(bad)
    # Valid syntax, contradicting values: said as such.
    with pytest.raises(UsageError, match=r"--blank was given 2 global policies \('negative', 'missing'\); give one global policy"):
        parse_blank_specs(["negative", "missing"])
    with pytest.raises(UsageError, match=r"one label two policies: 'No Finding=negative' and 'nofinding=missing'"):
        parse_blank_specs(["No Finding=negative", "nofinding=missing"])
    assert parse_blank_specs(["negative", "negative", "A=missing", "a=missing"]) == ("negative", {"A": "missing"})


def test_blank_unknown_label_lists_the_labels(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("image_id,patient_id,A\na,1,\n")
    with pytest.raises(UsageError, match="'Nope', which is not a label; the labels are: 'A'"):
        ingest_table(path, label_cols=["A"], blank=["Nope=negative"])


def test_blank_policy_touches_only_labelled_rows():
    f = pd.DataFrame({"A": _int8([None, 1, None]), "B": _int8([None, None, -1])})
    out, n = apply_blank_policy(f, ["A", "B"], "negative", {"B": "missing"})
    assert out["A"].tolist() == [pd.NA, 1, 0] and out["B"].tolist() == [pd.NA, pd.NA, -1] and n == 1


# ----------------------------------------------------------------------------- label names


def test_label_map_file_renames_and_merges(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("image_id,patient_id,Effusion,Pleural Effusion,Mass,Other\na,1,0,1,1,0\nb,1,-1,0,0,\nc,1,,,0,1\n")
    csv_map = tmp_path / "map.csv"
    csv_map.write_text("source,target\neffusion,Pleural Effusion\npleural_effusion,Pleural Effusion\nMASS,Lesion\n")
    json_map = tmp_path / "map.json"
    json_map.write_text(json.dumps({"Effusion": "Pleural Effusion", "Mass": "Lesion"}))
    for spec in (csv_map, json_map):
        r = ingest_table(table, label_cols=["Effusion", "Pleural Effusion", "Mass", "Other"], label_map=spec)
        m = r.manifest
        assert m.labels == ["Pleural Effusion", "Lesion", "Other"]
        assert m.frame["Pleural Effusion"].tolist() == [1, -1, pd.NA]  # 1 > -1 > 0 > null
        assert m.frame["Lesion"].tolist() == [1, 0, 0] and m.frame["Other"].tolist() == [0, pd.NA, 1]
        assert any("merged 'Effusion', 'Pleural Effusion' into 'Pleural Effusion'" in n for n in r.report.notes)
        assert any("'Mass' to 'Lesion'" in n for n in r.report.notes)
        assert r.manifest.history[-1]["inputs"][-1]["path"].endswith(spec.name)


def test_builtin_cxr_map_harmonises_public_names():
    mapping = load_label_map("cxr")
    names = ["Effusion", "Pleural Effusion", "Pleural effusion", "pleural effusion", "Pleural_Thickening", "Nodule or mass", "Nodule/Mass", "normal", "No finding", "infiltrates"]
    got = {n: mapping[n.replace(" ", "").replace("_", "").casefold()] for n in names}
    assert set(got[n] for n in names[:4]) == {"Pleural Effusion"}
    assert got["Pleural_Thickening"] == "Pleural Thickening" and got["Nodule or mass"] == got["Nodule/Mass"] == "Nodule/Mass"
    assert got["normal"] == got["No finding"] == "No Finding" and got["infiltrates"] == "Infiltration"


def test_label_map_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_label_map(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("from,to\na,b\n")
    with pytest.raises(InputError, match="header 'source,target'"):
        load_label_map(bad)
    two = tmp_path / "two.csv"
    two.write_text("source,target\nEffusion,A\neffusion,B\n")
    with pytest.raises(InputError, match="one non-empty target"):
        load_label_map(two)
    broken = tmp_path / "m.json"
    broken.write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        load_label_map(broken)


def test_label_map_with_aggregation_and_vindr_names(vindr):
    r = ingest_table(vindr, patient_col="image_id", labels_col="class_name", aggregate="any", label_map="cxr")
    assert "No Finding" in r.manifest.labels and "No finding" not in r.manifest.labels


# ----------------------------------------------------------------------------- PadChest and list cells


def test_padchest_lookalike_lists_and_dicom_suffix_columns(tmp_path):
    path = tmp_path / "PADCHEST_chest_x_ray_images_labels_160K.csv.gz"
    frame = pd.DataFrame(
        {
            "": ["0", "1", "2", "3", "4"],
            "ImageID": ["i1.png", "i2.png", "i3.png", "i4.png", "i5.png"],
            "StudyDate_DICOM": ["20140915", "20150914", "20150914", "2015-07-17", "201507"],
            "StudyID": ["0017", "0018", "0018", "0019", "0020"],
            "PatientID": ["007", "008", "008", "009", "010"],
            "PatientSex_DICOM": ["F", "M", "M", "O", "nan"],
            "ViewPosition_DICOM": ["POSTEROANTERIOR", "LATERAL", "nan", "PA", "PA"],
            "Labels": ["['normal']", "['pleural effusion', ' cardiomegaly']", "[]", "nan", "['']"],
        }
    )
    frame.to_csv(path, index=False)
    r = ingest_table(path, image_col="ImageID", patient_col="PatientID", study_col="StudyID", labels_col="Labels")
    f = r.manifest.frame
    assert f["patient_id"].tolist() == ["007", "008", "008", "009", "010"] and f["study_id"].tolist()[0] == "0017"
    assert f["sex"].tolist()[:4] == ["F", "M", "M", "O"] and pd.isna(f["sex"].iloc[4])
    assert f["view"].tolist()[:2] == ["POSTEROANTERIOR", "LATERAL"] and pd.isna(f["view"].iloc[2])
    assert [str(d) for d in f["study_date"].tolist()[:4]] == ["2014-09-15", "2015-09-14", "2015-09-14", "2015-07-17"]
    assert r.report.invalid_values == {"study_date": 1}
    assert r.manifest.labels == ["cardiomegaly", "normal", "pleural effusion"]
    assert f["normal"].tolist() == [1, 0, pd.NA, pd.NA, pd.NA] and r.report.unlabeled == 3
    assert any("'PatientSex_DICOM' as sex" in n for n in r.report.notes)


def test_labels_from_lists_null_texts():
    frame, names, empty = labels_from_lists(pd.Series(["['normal']", "[]", "nan", None, "None", "['']"], dtype="str"))
    assert names == ["normal"] and empty == 5


# ----------------------------------------------------------------------------- generic canonical spellings


def test_dicom_header_table_spellings(tmp_path):
    path = tmp_path / "dicom_headers.csv"
    path.write_text(
        ",Filename,PatientID,PatientAge,PatientSex,ViewPosition,StudyDate,StudyInstanceUID,SeriesInstanceUID,SOPInstanceUID,AccessionNumber\n"
        "0,a.dcm,0042,058Y,F,PA,20200102,1.2.3,1.2.3.4,1.2.3.4.5,00123\n"
        "1,b.dcm,0043,6M,M,AP,20200103,1.2.4,1.2.4.4,1.2.4.4.5,00124\n"
        "2,c.dcm,0044,61,M,AP,,1.2.5,1.2.5.4,1.2.5.4.5,00125\n"
    )
    r = ingest_table(path, image_col="Filename")
    f = r.manifest.frame
    assert f["patient_id"].tolist() == ["0042", "0043", "0044"] and f["accession"].tolist()[0] == "00123"
    assert f["age"].tolist() == [58.0, 0.5, 61.0]
    assert [str(d) for d in f["study_date"].tolist()[:2]] == ["2020-01-02", "2020-01-03"] and pd.isna(f["study_date"].iloc[2])
    assert (f["study_id"].tolist()[0], f["series_uid"].tolist()[0], f["sop_uid"].tolist()[0]) == ("1.2.3", "1.2.3.4", "1.2.3.4.5")
    assert {"PatientID", "PatientAge", "StudyInstanceUID"}.isdisjoint(f.columns)
    assert r.report.invalid_values == {}
    note = next(n for n in r.report.notes if "recognised spellings" in n)
    assert "'PatientAge' as age" in note and "'PatientID' as patient_id" in note


def test_spellings_read_as_text_even_in_unlisted_case(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("image_id,PATIENT_ID_DICOM,study date\na,007,20200102\nb,008,20200103\n")
    f = ingest_table(path).manifest.frame
    assert f["patient_id"].tolist() == ["007", "008"] and str(f["study_date"].iloc[0]) == "2020-01-02"


def test_spellings_never_override_and_ambiguity_is_noted(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("image_id,patient_id,PatientID,sex,Patient Gender,StudyInstanceUID,StudyID,View Position\na,1,x,M,F,1.2,s1,PA\n")
    r = ingest_table(path)
    f = r.manifest.frame
    assert f["patient_id"].tolist() == ["1"] and f["sex"].tolist() == ["M"] and f["view"].tolist() == ["PA"]
    assert "study_id" not in f.columns and {"PatientID", "Patient Gender", "StudyInstanceUID", "StudyID"} <= set(f.columns)
    assert any("'StudyInstanceUID', 'StudyID' all look like study_id; none was used" in n for n in r.report.notes)
    # An explicit --col claims the target: the spelling is left alone.
    r = ingest_table(path, columns={"view": "StudyID"})
    assert r.manifest.frame["view"].tolist() == ["s1"] and "View Position" in r.manifest.frame.columns


def test_col_option_validation(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("image_id,patient_id,Set Id,fold\na,1,val,2\n")
    f = ingest_table(path, columns=["split=Set Id"]).manifest.frame
    assert f["split"].tolist() == ["val"] and "Set Id" not in f.columns
    with pytest.raises(UsageError, match="'colour', not a canonical column.*sex, age"):
        ingest_table(path, columns=["colour=Set Id"])
    with pytest.raises(UsageError, match="patient_id: use --patient-col"):
        ingest_table(path, columns=["patient_id=Set Id"])
    with pytest.raises(UsageError, match="CANONICAL=SOURCE"):
        ingest_table(path, columns=["split"])
    with pytest.raises(MissingColumnError, match="'Set'"):
        ingest_table(path, columns=["split=Set"])


def test_patient_needed_when_no_spelling_matches(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("image_id,who\na,1\n")
    with pytest.raises(MissingColumnError, match="--patient-col"):
        ingest_table(path)


def test_col_for_a_preset_replaces_its_column(tmp_path):
    path = tmp_path / "train.csv"
    write_chexpert_table(path, patients=3)
    raw = pd.read_csv(path)
    raw["Gender"] = "F"
    raw.to_csv(path, index=False)
    r = ingest_table(path, preset="chexpert", columns={"sex": "Gender"})
    assert set(r.manifest.frame["sex"]) == {"F"} and "Gender" not in r.manifest.frame.columns
    assert any("replaced the preset's sex" in n for n in r.report.notes)


# ----------------------------------------------------------------------------- command line


def test_cli_aggregate_summary_and_errors(runner, vindr, tmp_path):
    out = tmp_path / "m.parquet"
    base = ["ingest", "table", str(vindr), "--patient-col", "image_id", "--labels-col", "class_name", "-o", str(out)]
    res = runner.invoke(main, base)
    assert res.exit_code == 2 and res.stderr.startswith("Error: 3 image id(s)") and "--aggregate any|majority|all" in res.stderr
    res = runner.invoke(main, base + ["--aggregate", "majority", "--reader-col", "rad_id", "--label-map", "cxr", "--blank", "negative"])
    assert res.exit_code == 0, res.stderr
    assert "11 found = 4 ingested + 0 skipped + 0 failed + 7 aggregated" in res.stderr
    assert "Note: 11 rows aggregated into 4 images" in res.stderr
    m = read_manifest(out)
    assert m.history[-1]["options"]["aggregate"] == "majority" and m.history[-1]["options"]["label_map"] == "cxr"
    res = runner.invoke(main, base + ["--label-when", "Pneumothorax:class_name"])
    assert res.exit_code == 2 and "Error: --label-when 'Pneumothorax:class_name' is not NAME:COLUMN==VALUE" in res.stderr
    res = runner.invoke(main, base + ["--col", "colour=rad_id"])
    assert res.exit_code == 2 and "Error: --col names 'colour'" in res.stderr


def test_cli_label_when_and_col(runner, tmp_path):
    table = tmp_path / "stage_2_train_labels.csv"
    table.write_text("patientId,x,Target,Set\np1,,0,train\np2,3.0,1,test\np2,5.0,1,test\n")
    out = tmp_path / "m.parquet"
    res = runner.invoke(
        main,
        ["ingest", "table", str(table), "--image-col", "patientId", "--patient-col", "patientId", "--label-when", "Pneumonia:Target==1",
         "--aggregate", "any", "--col", "split=Set", "-o", str(out)],
    )
    assert res.exit_code == 0, res.stderr
    f = read_manifest(out).frame
    assert f["Pneumonia"].tolist() == [0, 1] and f["split"].tolist() == ["train", "test"]


# ----------------------------------------------------------------------------- tester's findings: folds


FOLDS = "image_id,patient_id,f\n1,p1,0\n2,p2,1.5\n3,p3,x\n4,p4,-3\n5,p5,99999\n6,p6,\n7,p7,2\n"


def test_fold_values_that_are_not_fold_numbers_are_an_error(runner, tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(FOLDS)
    with pytest.raises(InputError) as err:
        ingest_table(path, columns=["fold=f"])
    msg = str(err.value)
    assert "column 'f' (read as fold)" in msg and "4 value(s) that are not whole numbers from 0 to 32767" in msg
    assert "'1.5', 'x', '-3', '99999'" in msg and "lines 3, 4, 5, 6" in msg and err.value.fields["values"][0] == "1.5"
    plain = tmp_path / "plain.csv"
    plain.write_text(FOLDS.replace(",f\n", ",fold\n"))
    with pytest.raises(InputError, match=r"column 'fold' of .* 4 value\(s\) that are not whole numbers"):
        ingest_table(plain)
    res = runner.invoke(main, ["ingest", "table", str(plain), "-o", str(tmp_path / "m.parquet")])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1 and res.stderr.startswith("Error: column 'fold'")
    good = tmp_path / "good.csv"
    good.write_text("image_id,patient_id,f\n1,p1,0\n2,p2,1.0\n3,p3,\n")
    f = ingest_table(good, columns=["fold=f"]).manifest.frame
    assert f["fold"].tolist() == [0, 1, pd.NA] and str(f["fold"].dtype) == "Int16"


def test_split_names_given_as_fold_suggest_split(tmp_path):
    path = tmp_path / "google.csv"
    path.write_text("image_id,patient_id,Set Id\n1,p1,train\n2,p2,test\n3,p3,val\n")
    with pytest.raises(InputError) as err:
        ingest_table(path, columns=["fold=Set Id"])
    assert "holds names ('train', 'test', 'val'; lines 2, 3, 4)" in str(err.value)
    assert "use --col 'split=Set Id'" in str(err.value)
    assert ingest_table(path, columns=["split=Set Id"]).manifest.frame["split"].tolist() == ["train", "test", "val"]


# ----------------------------------------------------------------------------- --label-when compares numbers


def test_label_when_compares_numbers_when_value_and_column_are_numbers(tmp_path):
    rsna = tmp_path / "rsna.csv"
    rsna.write_text("patientId,Target\na,1\nb,0\nc,1\nd,\n")
    opts = dict(image_col="patientId", patient_col="patientId")
    for value in ("1", "1.0", " 1.00"):
        assert ingest_table(rsna, label_when=[f"P:Target=={value}"], **opts).manifest.frame["P"].tolist() == [1, 0, 1, pd.NA]
    pq_path = tmp_path / "rsna.parquet"
    pd.DataFrame({"patientId": list("abc"), "Target": [1.0, 0.0, None]}).to_parquet(pq_path)
    assert ingest_table(pq_path, label_when=["P:Target==1.0"], **opts).manifest.frame["P"].tolist() == [1, 0, pd.NA]
    # A column that is not all numbers compares text: '-1' is not '-1.0'.
    siim = tmp_path / "siim.csv"
    siim.write_text("ImageId, EncodedPixels\na, -1\nb,1 5 9 2\n")
    r = ingest_table(siim, image_col="ImageId", patient_col="ImageId", label_when=["Ptx:EncodedPixels!=-1"])
    assert r.manifest.frame["Ptx"].tolist() == [0, 1]


def test_label_when_value_found_nowhere_warns_with_the_common_values(runner, tmp_path):
    path = tmp_path / "rsna.csv"
    path.write_text("patientId,Target\n" + "".join(f"p{i},{'1' if i % 3 == 0 else '0'}\n" for i in range(9)))
    opts = dict(image_col="patientId", patient_col="patientId")
    with pytest.warns(MdprepWarning) as caught:
        r = ingest_table(path, label_when=["Pneumonia:Target==yes"], **opts)
    assert r.manifest.frame["Pneumonia"].sum() == 0
    assert [str(w.message) for w in caught] == [
        "--label-when 'Pneumonia:Target==yes': no cell of column 'Target' is 'yes', so 'Pneumonia' is 0 in every row "
        "with a value; the column's most common values are '0' (6 rows), '1' (3 rows)"
    ]
    res = runner.invoke(main, ["ingest", "table", str(path), "--image-col", "patientId", "--patient-col", "patientId",
                               "--label-when", "Pneumonia:Target!=2", "-q", "-o", str(tmp_path / "m.parquet")])
    assert res.exit_code == 0 and "Warning: --label-when 'Pneumonia:Target!=2': no cell of column 'Target' is '2', so 'Pneumonia' is 1" in res.stderr


# ----------------------------------------------------------------------------- label names that clash


def test_labels_named_like_manifest_columns_are_refused_and_a_label_map_renames_them(runner, tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("image_id,patient_id,findings,note\n1,p1,path|Mass,x\n2,p2,patient_id,y\n3,p3,note,z\n")
    with pytest.raises(UsageError) as err:
        ingest_table(path, labels_col="findings")
    msg = str(err.value)
    assert "label(s) 'path', 'patient_id' found in --labels-col 'findings' are names of manifest columns" in msg
    assert f"label(s) 'note' found in --labels-col 'findings' are names of other columns of {path}" in msg
    assert "rename them with --label-map" in msg and err.value.fields["names"] == ["path", "patient_id", "note"]
    rename = tmp_path / "rename.csv"
    rename.write_text("source,target\npath,Path finding\npatient_id,Patient finding\nnote,Note finding\n")
    m = ingest_table(path, labels_col="findings", label_map=rename).manifest
    assert m.labels == ["Mass", "Note finding", "Path finding", "Patient finding"] and m.frame["note"].tolist() == ["x", "y", "z"]
    res = runner.invoke(main, ["ingest", "table", str(path), "--labels-col", "findings", "-o", str(tmp_path / "m.parquet")])
    assert res.exit_code == 2 and res.stderr.startswith("Error: label(s) 'path', 'patient_id'") and "Traceback" not in res.stderr


def test_label_when_names_like_manifest_or_table_columns(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("image_id,patient_id,Target,site\na,1,1,x\na,1,0,x\n")
    for name in ("path", "source_rows", "fold"):
        with pytest.raises(UsageError, match=f"--label-when names '{name}', names of manifest columns"):
            ingest_table(path, label_when=[f"{name}:Target==1"], aggregate="any")
    with pytest.raises(UsageError, match=f"--label-when names 'site', names of other columns of {path}"):
        ingest_table(path, label_when=["site:Target==1"], aggregate="any")
    with pytest.raises(UsageError, match=r"the label map gives labels 'study_id', names of manifest columns"):
        ingest_table(path, label_when=["P:Target==1"], label_map={"P": "study_id"}, aggregate="any")


# ----------------------------------------------------------------------------- identifiers, --sep, metadata


def test_white_space_around_identifiers_is_stripped_with_a_warning(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('image_id,patient_id,A\n1.png,p1,1\n2.png, p1,0\n3.png,p1 ,1\n"4.png ",p2,0\n5.png,"  ",1\n')
    with pytest.warns(MdprepWarning, match=r"removed white space around identifiers: 1 image_id, 1 path, 3 patient_id value\(s\)"):
        with pytest.raises(ManifestValidationError, match=r"1 row\(s\) have no patient_id \(line 6\)"):
            ingest_table(path, label_cols=["A"])
    path.write_text('image_id,patient_id,A\n1.png,p1,1\n2.png, p1,0\n3.png,p1 ,1\n"3.png ",p1,0\n')
    with pytest.warns(MdprepWarning), pytest.raises(InputError, match=r"1 image id\(s\) .* for example '3.png'"):
        ingest_table(path, label_cols=["A"])
    with pytest.warns(MdprepWarning):
        r = ingest_table(path, label_cols=["A"], aggregate="any")
    f = r.manifest.frame
    assert f["image_id"].tolist() == ["1.png", "2.png", "3.png"] and set(f["patient_id"]) == {"p1"}


@pytest.mark.parametrize("preset", ["nih", "chexpert", "mimic"])
def test_sep_is_honoured_and_recorded_by_every_preset(tmp_path, preset):
    comma, semi = tmp_path / "comma.csv", tmp_path / "semi.txt"
    extra = {}
    if preset == "nih":
        write_nih_table(comma, patients=4)
    elif preset == "chexpert":
        write_chexpert_table(comma, patients=4)
    else:
        meta = tmp_path / "meta.csv"
        write_mimic_tables(comma, meta, patients=4)
        semi_meta = tmp_path / "meta.txt"
        pd.read_csv(meta, dtype=str).to_csv(semi_meta, sep=";", index=False)
        extra = {"metadata": semi_meta}
    pd.read_csv(comma, dtype=str, keep_default_na=False).to_csv(semi, sep=";", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MdprepWarning)
        want = ingest_table(comma, preset=preset, metadata=tmp_path / "meta.csv" if extra else None).manifest
        got = ingest_table(semi, preset=preset, sep=";", **extra).manifest
    assert got.frame.equals(want.frame) and got.labels == want.labels
    assert got.history[-1]["options"]["sep"] == ";" and want.history[-1]["options"]["sep"] is None


def test_unparsed_metadata_is_quoted_and_its_source_kept(runner, tmp_path):
    path = tmp_path / "headers.csv"
    path.write_text(
        "image_id,PatientID,PatientSex,PatientAge,StudyDate,sex_note\n"
        "a,p1,M,058Y,20200101,x\nb,p2,X,abc,2020-13-45,y\nc,p3,unknown,40,notadate,z\nd,p4,F,,20200102,w\n"
    )
    r = ingest_table(path)
    f, rep = r.manifest.frame, r.report
    assert rep.invalid_values == {"sex": 1, "age": 1, "study_date": 2}
    assert rep.invalid_examples == {"sex": ("X",), "age": ("abc",), "study_date": ("2020-13-45", "notadate")}
    assert f["StudyDate"].tolist() == ["20200101", "2020-13-45", "notadate", "20200102"] and f["study_date"].isna().sum() == 2
    assert f["PatientSex"].tolist() == ["M", "X", "unknown", "F"] and f["PatientAge"].tolist()[:2] == ["058Y", "abc"]
    assert any("kept the source column(s) 'PatientSex' (sex), 'PatientAge' (age), 'StudyDate' (study_date)" in n for n in rep.notes)
    res = runner.invoke(main, ["ingest", "table", str(path), "-q", "-o", str(tmp_path / "m.parquet")])
    assert res.exit_code == 0
    assert res.stderr.splitlines() == [
        "Warning: 1 value(s) of 'sex' did not parse and were stored as null: 'X'",
        "Warning: 1 value(s) of 'age' did not parse and were stored as null: 'abc'",
        "Warning: 2 value(s) of 'study_date' did not parse and were stored as null: '2020-13-45', 'notadate'",
    ]
    # Values that all parse leave no source column behind.
    path.write_text("image_id,PatientID,StudyDate\na,p1,20200101\n")
    assert "StudyDate" not in ingest_table(path).manifest.frame.columns


# ----------------------------------------------------------------------------- list cells, label maps, Parquet rows


def test_malformed_list_cells_are_an_error_listing_them(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(
        "image_id,patient_id,f\n1,p1,\"['A', 'B'\"\n2,p2,\"[['A']]\"\n3,p3,\"[1, 2]\"\n4,p4,A| |B|\n"
        "5,p5,\"{'A': 1}\"\n6,p6,\"[\"\"A\"\", \"\"b\"\"]\"\n7,p7,\"[C, D]\"\n"
    )
    with pytest.raises(InputError) as err:
        ingest_table(path, labels_col="f")
    assert str(err.value) == (
        f"3 cell(s) of 'f' in {path} start with '[' or '{{' but are not a flat list of names: \"['A', 'B'\", \"[['A']]\", "
        "\"{'A': 1}\" (lines 2, 3, 6); write each as a list such as ['A', 'B'] or as A|B"
    )
    pq_path = tmp_path / "t.parquet"
    pd.DataFrame({"image_id": ["1", "2"], "patient_id": ["p", "q"], "f": ["['A']", "[['A']]"]}).to_parquet(pq_path)
    with pytest.raises(InputError, match=r"\(row 2, counting from 1\)"):
        ingest_table(pq_path, labels_col="f")
    good = tmp_path / "good.csv"
    good.write_text("image_id,patient_id,f\n3,p3,\"[1, 2]\"\n4,p4,A| |B|\n6,p6,\"[\"\"A\"\", \"\"b\"\"]\"\n7,p7,\"[C, D]\"\n")
    m = ingest_table(good, labels_col="f").manifest
    assert m.labels == ["1", "2", "A", "B", "C", "D", "b"]
    with pytest.raises(UsageError, match="--labels-sep is empty"):
        ingest_table(good, labels_col="f", labels_sep="")


def test_label_map_file_errors_name_the_file(tmp_path):
    latin = tmp_path / "map.csv"
    latin.write_bytes("source,target\nEffusion,Épanchement\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"line 2 of label map .*map.csv is not valid UTF-8 \(byte 0xc9\); save the file as UTF-8"):
        load_label_map(latin)
    js = tmp_path / "map.json"
    js.write_bytes('{\n "Effusion": "Épanchement"}'.encode("latin-1"))
    with pytest.raises(InputError, match="line 2 of label map .*map.json is not valid UTF-8"):
        load_label_map(js)
    with pytest.raises(InputError, match="is a folder; give a CSV"):
        load_label_map(tmp_path)


def test_missing_patient_in_parquet_is_reported_by_row(tmp_path):
    path = tmp_path / "t.parquet"
    pd.DataFrame({"image_id": ["a", "b", "c"], "patient_id": ["1", "2", None]}).to_parquet(path)
    with pytest.raises(ManifestValidationError, match=r"1 row\(s\) have no patient_id \(row 3, counting from 1\)"):
        ingest_table(path)


def test_blank_policies_that_meet_through_the_label_map(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("image_id,patient_id,Effusion,Mass\na,1,1,\nb,2,,1\n")
    with pytest.raises(UsageError, match="--blank gives label 'Pleural Effusion' two policies: Effusion=negative and pleural effusion=missing"):
        ingest_table(path, label_cols=["Effusion", "Mass"], label_map="cxr", blank=["Effusion=negative", "pleural effusion=missing"])


# ----------------------------------------------------------------------------- --quiet


def test_quiet_keeps_warnings_and_aggregation_but_not_notes(runner, vindr, tmp_path):
    out = tmp_path / "m.parquet"
    args = ["ingest", "table", str(vindr), "--patient-col", "image_id", "--labels-col", "class_name", "--aggregate", "any", "-o", str(out)]
    loud = runner.invoke(main, args)
    assert loud.exit_code == 0 and "Note: 11 rows aggregated into 4 images" in loud.stderr and "Wrote" in loud.stderr
    quiet = runner.invoke(main, args + ["-q"])
    assert quiet.exit_code == 0
    assert quiet.stderr.splitlines() == [
        "Warning: column(s) 'class_id', 'rad_id', 'x_min', 'y_min', 'x_max', 'y_max' differ between rows of one image "
        "(readers, boxes, masks) and were dropped",
        "11 found = 4 ingested + 0 skipped + 0 failed + 7 aggregated",
    ]

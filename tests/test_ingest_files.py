from __future__ import annotations

import os

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdprep.errors import EmptyInputError, InputError, UsageError
from mdprep.ingest import ingest_dicom, ingest_images, write_errors
from mdprep.manifest import write_manifest
from mdprep.synthetic import write_dicom_tree


def _outcomes(result):
    got = {p: f"{o}:{t}" for p, o, t in zip(result.errors["path"], result.errors["outcome"], result.errors["error_type"])}
    for p in result.manifest.frame["path"]:
        got[p] = "ok"
    return got


def _assert_matches_planted(result, planted):
    rep = result.report
    assert rep.reconciles
    assert (rep.found, rep.ingested, rep.skipped, rep.failed) == (planted.found, planted.ingested, planted.skipped, planted.failed)
    got = _outcomes(result)
    assert set(got) == set(planted.outcomes)
    for rel, expected in planted.outcomes.items():
        assert got[rel].startswith(expected), (rel, got[rel], expected)


def test_planted_dicom_tree_reconciles_exactly(dicom_tree):
    result = ingest_dicom(dicom_tree.root, workers=1)
    _assert_matches_planted(result, dicom_tree)
    assert result.report.lenient == dicom_tree.lenient == 1
    frame = result.manifest.frame
    assert frame["image_id"].is_unique and frame["patient_id"].notna().all()
    assert frame.loc[frame["lenient_read"], "patient_id"].tolist() == ["PATNOPRE"]
    assert frame.loc[frame["patient_id"] == "PATBIG", "rows"].tolist() == [16]  # big endian via pydicom
    assert set(frame["sex"].dropna()) <= {"M", "F"}
    assert result.manifest.root == os.path.abspath(dicom_tree.root)
    assert result.manifest.history[0]["inputs"][0]["kind"] == "tree"


def test_workers_do_not_change_the_result(dicom_tree, tmp_path):
    one = ingest_dicom(dicom_tree.root, workers=1)
    two = ingest_dicom(dicom_tree.root, workers=2)
    write_manifest(one.manifest, tmp_path / "one.parquet")
    write_manifest(two.manifest, tmp_path / "two.parquet")
    assert (tmp_path / "one.parquet").read_bytes() == (tmp_path / "two.parquet").read_bytes()
    pd.testing.assert_frame_equal(one.errors, two.errors)


def test_file_list_instead_of_walk(dicom_tree):
    files = [
        "PAT00000/study0/img000.dcm",
        os.path.join(dicom_tree.root, "PAT00001/study0/img000.dcm"),
        "PAT00000/study0/img000.dcm",
        "/elsewhere/x.dcm",
        "missing.dcm",
        "",
    ]
    result = ingest_dicom(dicom_tree.root, files=files, workers=1)
    rep = result.report
    assert (rep.found, rep.ingested, rep.skipped, rep.failed) == (5, 2, 1, 2)
    reasons = dict(zip(result.errors["path"], result.errors["error_type"]))
    assert reasons["/elsewhere/x.dcm"] == "OutsideRoot"
    assert reasons["missing.dcm"] == "FileNotFoundError"


def test_extra_tags_and_error_table(dicom_tree, tmp_path):
    result = ingest_dicom(dicom_tree.root, tags=["Manufacturer", "KVP", "0020,0013"], workers=1)
    frame = result.manifest.frame
    assert {"manufacturer", "kvp", "instance_number"} <= set(frame.columns)
    assert frame["kvp"].dropna().eq(110.0).all()
    write_errors(result.errors, tmp_path / "e.csv")
    write_errors(result.errors, tmp_path / "e.parquet")
    back = pd.read_csv(tmp_path / "e.csv")
    assert list(back.columns) == ["path", "outcome", "error_type", "message"]
    assert len(back) == len(pd.read_parquet(tmp_path / "e.parquet")) == dicom_tree.skipped + dicom_tree.failed


def test_bad_roots(tmp_path):
    with pytest.raises(InputError, match="is not a folder"):
        ingest_dicom(tmp_path / "nope")
    with pytest.raises(EmptyInputError, match="no files found"):
        ingest_dicom(tmp_path)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(patients=st.integers(1, 3), per=st.integers(1, 4), plant=st.booleans(), seed=st.integers(0, 100))
def test_nothing_is_lost_property(tmp_path_factory, patients, per, plant, seed):
    root = tmp_path_factory.mktemp("prop")
    planted = write_dicom_tree(root, patients=patients, images_per_patient=per, shape=(4, 4), seed=seed, plant_bad_files=plant, private_tags=seed % 5)
    result = ingest_dicom(root, workers=1)
    _assert_matches_planted(result, planted)
    assert sum(1 for _ in _walk(root)) == result.report.found


def _walk(root):
    for folder, _, files in os.walk(root):
        yield from files


REGEX = r"(?P<patient>patient\d+)/(?P<study>study\d+)/view\d+_(?P<view>frontal|lateral)"


def test_image_tree_reconciles_and_reads_sizes(image_tree):
    result = ingest_images(image_tree.root, patient_regex=REGEX, workers=1)
    _assert_matches_planted(result, image_tree)
    frame = result.manifest.frame
    assert frame["study_id"].str.match(r"patient\d+/study\d+$").all()
    assert set(frame["view"]) == {"frontal", "lateral"}
    assert (frame["width"] == 10).all() and (frame["height"] == 12).all()
    assert set(frame["format"]) == {"PNG"}


def test_image_regex_needs_a_patient_group(image_tree):
    with pytest.raises(UsageError, match="no named group 'patient'"):
        ingest_images(image_tree.root, patient_regex=r"(patient\d+)/")
    with pytest.raises(UsageError, match="not a valid regular expression"):
        ingest_images(image_tree.root, patient_regex=r"(?P<patient>")


def test_image_workers_agree(image_tree, tmp_path):
    a = ingest_images(image_tree.root, patient_regex=REGEX, workers=1)
    b = ingest_images(image_tree.root, patient_regex=REGEX, workers=2)
    pd.testing.assert_frame_equal(a.manifest.frame, b.manifest.frame)


def test_heavy_parent_uses_a_fork_server_with_the_same_result(dicom_tree, monkeypatch):
    import mdprep.executor as executor

    baseline = ingest_dicom(dicom_tree.root, workers=1)
    monkeypatch.setattr(executor, "FORK_RSS_LIMIT", 0)  # every parent counts as heavy
    served = ingest_dicom(dicom_tree.root, workers=2)
    pd.testing.assert_frame_equal(baseline.manifest.frame, served.manifest.frame)
    pd.testing.assert_frame_equal(baseline.errors, served.errors)

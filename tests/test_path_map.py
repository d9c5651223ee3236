"""A pseudonymised manifest's images are read through the private path map, never named by their real paths."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest

from mdprep.cli import main
from mdprep.manifest import read_manifest
from mdprep.pseudonyms import KEY_ENV
from mdprep.synthetic import write_image_tree

KEY = hashlib.sha256(b"mdprep path map test").hexdigest()
REGEX = r"(?P<patient>patient\d+)/(?P<study>study\d+)/"


@pytest.fixture
def pseudonymised(runner, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    root = tmp_path / "images"
    write_image_tree(root, patients=4, studies=1, shape=(16, 16))
    raw = tmp_path / "raw.parquet"
    assert runner.invoke(main, ["ingest", "images", str(root), "--patient-regex", REGEX, "-o", str(raw), "-q"]).exit_code == 0
    # One image that can no longer be decoded, so hash has an error row to write.
    (root / "patient00000" / "study1" / "view1_frontal.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    pseudo, path_map = tmp_path / "pseudo.parquet", tmp_path / "private" / "paths.csv"
    res = runner.invoke(main, ["pseudonymize", str(raw), "-o", str(pseudo), "--path-map", str(path_map), "-q"])
    assert res.exit_code == 0, res.stderr
    return raw, pseudo, path_map


def test_hash_reads_real_paths_and_names_pseudonymised_ones(runner, tmp_path, pseudonymised):
    raw, pseudo, path_map = pseudonymised
    res = runner.invoke(main, ["hash", str(raw), "-o", str(tmp_path / "raw-h.parquet"), "-q"])
    assert res.exit_code == 0, res.stderr
    out, errors = tmp_path / "h.parquet", tmp_path / "errors.csv"
    res = runner.invoke(main, ["hash", str(pseudo), "--path-map", str(path_map), "-o", str(out), "--errors", str(errors), "-q"])
    assert res.exit_code == 0, res.stderr
    hashed, before = read_manifest(out).frame, read_manifest(pseudo).frame
    assert hashed["path"].tolist() == before["path"].tolist()  # the output keeps the pseudonyms
    expected = read_manifest(tmp_path / "raw-h.parquet").frame
    # Same images, same hashes, in the same row order as the raw manifest.
    assert sorted(hashed["file_sha256"].dropna()) == sorted(expected["file_sha256"].dropna())
    assert hashed["file_sha256"].notna().all() and hashed["pixel_sha256"].isna().sum() == 1
    table = pd.read_csv(errors, dtype=str)
    assert table["path"].tolist() == before.loc[hashed["pixel_sha256"].isna(), "path"].tolist()
    written = errors.read_text() + out.read_bytes().decode("latin-1") + res.stderr
    for real in read_manifest(raw).frame["path"]:
        assert real not in written and real.split("/")[0] not in written


def test_hash_without_the_path_map_finds_nothing_and_a_wrong_map_is_refused(runner, tmp_path, pseudonymised):
    raw, pseudo, path_map = pseudonymised
    res = runner.invoke(main, ["hash", str(pseudo), "-o", str(tmp_path / "h.parquet"), "-q"])
    assert res.exit_code == 0 and read_manifest(tmp_path / "h.parquet").frame["file_sha256"].isna().all()
    other = tmp_path / "other.csv"
    other.write_text("path,original_path\nx.png,patient00001/study1/view1_frontal.png\n")
    res = runner.invoke(main, ["hash", str(pseudo), "--path-map", str(other), "-o", str(tmp_path / "h2.parquet"), "-q"])
    assert res.exit_code == 2 and "not in the path map" in res.stderr and "patient0" not in res.stderr


# ----------------------------------------------------------------------------- ingest --pseudonymize


def test_ingest_pseudonymize_hides_error_paths_and_quoted_values(runner, tmp_path, monkeypatch):
    from mdprep.synthetic import write_dicom_tree

    monkeypatch.setenv(KEY_ENV, KEY)
    root = tmp_path / "dump"
    write_dicom_tree(root, patients=3, images_per_patient=2, shape=(8, 8), plant_bad_files=True)
    errors, path_map = tmp_path / "errors.csv", tmp_path / "private" / "paths.csv"
    res = runner.invoke(
        main,
        ["ingest", "dicom", str(root), "--pseudonymize", "--paths", "pseudonymize", "--path-map", str(path_map), "-o", str(tmp_path / "m.parquet"), "--errors", str(errors)],
    )
    assert res.exit_code == 0, res.stderr
    table = pd.read_csv(errors, dtype=str)
    assert len(table) and table["path"].str.fullmatch(r"[0-9a-f]{20}(\.[a-z]+)?").all()
    # The path map leads from each error row back to its real file, as it does for manifest rows.
    mapped = dict(pd.read_csv(path_map, dtype=str, keep_default_na=False).values)
    assert all((root / mapped[p]).exists() or (root / mapped[p]).is_symlink() for p in table["path"])
    written = errors.read_text() + res.stderr + (tmp_path / "m.parquet").read_bytes().decode("latin-1")
    assert "PAT0" not in written and "zz_bad" not in written


def test_ingest_pseudonymize_quotes_no_cell_value(runner, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    table = tmp_path / "t.csv"
    table.write_text("image_id,patient_id,StudyDate,A\nimg1,MRN0001,20200131,1\nimg2,MRN0002,31/31/2020,0\n")
    res = runner.invoke(main, ["ingest", "table", str(table), "--label-cols", "A", "-o", str(tmp_path / "plain.parquet")])
    assert res.exit_code == 0 and "31/31/2020" in res.stderr  # without --pseudonymize the bad value is quoted
    res = runner.invoke(main, ["ingest", "table", str(table), "--label-cols", "A", "--pseudonymize", "-o", str(tmp_path / "m.parquet")])
    assert res.exit_code == 0, res.stderr
    assert "31/31/2020" not in res.stderr and "'study_date'" in res.stderr and "MRN" not in res.stderr
    # An error that would quote ids quotes none once pseudonymisation is asked.
    table.write_text("image_id,patient_id,A\nimg1,MRN0001,1\nimg1,MRN0001,0\n")
    res = runner.invoke(main, ["ingest", "table", str(table), "--label-cols", "A", "--pseudonymize", "-o", str(tmp_path / "d.parquet")])
    assert res.exit_code == 2 and res.stderr.startswith("Error:") and "img1" not in res.stderr and "MRN" not in res.stderr
    assert "--aggregate" in res.stderr


def test_pseudonymize_options_need_pseudonymize(runner, tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("image_id,patient_id\nimg1,p1\n")
    res = runner.invoke(main, ["ingest", "table", str(table), "--paths", "keep", "-o", str(tmp_path / "m.parquet")])
    assert res.exit_code == 2 and "Error: --paths: only with --pseudonymize" in res.stderr


def test_ingest_pseudonymize_keeps_or_drops_free_text_when_told(runner, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    table = tmp_path / "t.csv"
    notes = ["patient seen for follow up of a nodule in the right upper lobe, stable since last visit " + str(i) for i in range(30)]
    pd.DataFrame({"image_id": [f"i{i}" for i in range(30)], "patient_id": [f"p{i}" for i in range(30)], "Report": notes}).to_csv(table, index=False)
    res = runner.invoke(main, ["ingest", "table", str(table), "--pseudonymize", "-o", str(tmp_path / "m.parquet")])
    assert res.exit_code == 2 and "--keep-columns" in res.stderr and "nodule" not in res.stderr
    res = runner.invoke(main, ["ingest", "table", str(table), "--pseudonymize", "--drop-columns", "Report", "-o", str(tmp_path / "m.parquet"), "-q"])
    assert res.exit_code == 0, res.stderr
    assert "Report" not in read_manifest(tmp_path / "m.parquet").frame.columns


def test_a_root_or_input_named_after_a_patient_does_not_reach_the_metadata(runner, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from mdprep.synthetic import write_dicom_tree

    monkeypatch.setenv(KEY_ENV, KEY)
    scratch = tmp_path / "scratch"
    write_dicom_tree(scratch, patients=1, images_per_patient=3, shape=(8, 8))
    patient = read_dicom_patient(scratch)
    root = tmp_path / f"{patient}_Smith"  # one patient's export, named by the archive
    scratch.rename(root)
    out = tmp_path / "m.parquet"
    res = runner.invoke(main, ["ingest", "dicom", str(root), "--pseudonymize", "-o", str(out)])
    assert res.exit_code == 0, res.stderr
    assert "image root spells out an identifier" in res.stderr and patient not in res.stderr
    meta = pq.read_schema(out).metadata[b"mdprep"].decode()
    assert patient not in meta and patient not in out.read_bytes().decode("latin-1")
    m = read_manifest(out)
    assert m.root is None and m.history[0]["inputs"][0]["path"].startswith("pseudonymised:")
    assert "root" in m.history[-1]["options"]["metadata_hidden"]
    # hash finds the files again with --root.
    res = runner.invoke(main, ["hash", str(out), "--root", str(root), "-o", str(tmp_path / "h.parquet"), "-q"])
    assert res.exit_code == 0, res.stderr


def read_dicom_patient(root) -> str:
    import pydicom

    first = next(p for p in sorted(root.rglob("*")) if p.is_file())
    return str(pydicom.dcmread(first).PatientID)

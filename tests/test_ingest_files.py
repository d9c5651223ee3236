from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
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


# ----------------------------------------------------------------------------- odd values and odd trees


def _small_tree(root, patients=3):
    return write_dicom_tree(root, patients=patients, images_per_patient=1, shape=(4, 4), private_tags=0)


def _set_element(path, tag, vr, value):
    from pydicom import dcmread

    ds = dcmread(path)
    if tag in ds:
        del ds[tag]
    if vr is not None:
        ds.add_new(tag, vr, value)
    ds.save_as(path)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_values_with_foreign_vrs_never_abort_the_run(tmp_path):
    root = tmp_path / "t"
    write_dicom_tree(root, patients=6, images_per_patient=1, shape=(4, 4), private_tags=0)
    odd = {
        "PAT00000": (0x00280010, "LO", "abc"),  # Rows as text
        "PAT00001": (0x00280011, "DS", "1e30"),  # Columns beyond US
        "PAT00002": (0x00080020, "US", 1),  # StudyDate as a number
        "PAT00003": (0x00100040, "US", 5),  # PatientSex as a number
        "PAT00004": (0x00280030, "AT", [0x00100010, 0x00100020]),  # PixelSpacing as tags
        "PAT00005": (0x00100020, "US", 9),  # PatientID as a number: no patient, no row
    }
    for patient, (tag, vr, value) in odd.items():
        _set_element(root / patient / "study0" / "img000.dcm", tag, vr, value)
    result = ingest_dicom(root, workers=1)
    rep = result.report
    assert (rep.found, rep.ingested, rep.failed) == (6, 5, 1) and rep.reconciles
    assert dict(rep.invalid_values) == {"columns": 1, "pixel_spacing": 1, "rows": 1, "sex": 1, "study_date": 1}
    assert result.errors["error_type"].tolist() == ["InvalidPatientID"]
    frame = result.manifest.frame.set_index("patient_id")
    assert pd.isna(frame.loc["PAT00002", "study_date"]) and pd.isna(frame.loc["PAT00000", "rows"])
    assert frame.loc["PAT00001", "rows"] == 4
    write_manifest(result.manifest, tmp_path / "m.parquet")


def test_a_value_arrow_refuses_costs_its_file_only(tmp_path, monkeypatch):
    import mdprep.ingest.dicom as dicom_ingest
    from mdprep.dicom_header import read_headers

    root = tmp_path / "t"
    _small_tree(root)

    def corrupt(paths, columns, missing_patient="error"):
        out = read_headers(paths, columns, missing_patient)
        at = [c.column for c in columns].index("rows")
        # A reader bug: text where a number belongs.
        return [replace(r, values=r.values[:at] + ("many",) + r.values[at + 1 :]) if "PAT00001" in p else r for p, r in zip(paths, out)]

    monkeypatch.setattr(dicom_ingest, "read_headers", corrupt)
    result = ingest_dicom(root, workers=1)
    assert (result.report.ingested, result.report.failed) == (2, 1)
    row = result.errors.iloc[0]
    assert (row["path"], row["error_type"]) == ("PAT00001/study0/img000.dcm", "UnstorableValue")
    assert "'many' of column 'rows' cannot be stored as int64" in row["message"]


def _special_entries(root):
    """Plant every kind of entry a walk must account for; return what it should report (path -> outcome)."""
    import socket

    (root / "fifo.dcm").parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(root / "fifo.dcm")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "s.sock"))
    os.symlink("/dev/null", root / "null.dcm")
    os.symlink("nowhere.dcm", root / "dangling.dcm")
    os.symlink("loop_b", root / "loop_a")
    os.symlink("loop_a", root / "loop_b")
    os.symlink("..", root / "PAT00000" / "up")
    os.symlink("PAT00001", root / "alias")
    fd = os.open(os.fsencode(root) + b"/bad\xff.dcm", os.O_CREAT | os.O_WRONLY)
    os.write(fd, (root / "PAT00000" / "study0" / "img000.dcm").read_bytes())
    os.close(fd)
    expected = {
        "fifo.dcm": "skipped:Fifo",
        "s.sock": "skipped:Socket",
        "null.dcm": "skipped:OutsideRoot",  # /dev/null lies outside the root
        "dangling.dcm": "skipped:DanglingSymlink",
        "loop_a": "skipped:SymlinkLoop",
        "loop_b": "skipped:SymlinkLoop",
        "PAT00000/up": "skipped:SymlinkLoop",
        "alias": "skipped:DuplicateFolder",
        "bad\\xff.dcm": "failed:UndecodablePath",
    }
    return sock, expected


def test_the_walk_accounts_for_every_entry(tmp_path):
    root = tmp_path / "t"
    _small_tree(root)
    outside = tmp_path / "elsewhere"
    _small_tree(outside, patients=1)
    os.symlink(outside, root / "linked")  # a folder outside the root: skipped, unless allowed
    os.symlink("PAT00002/study0/img000.dcm", root / "file_link.dcm")  # a symlinked file inside the root is read
    sock, expected = _special_entries(root)
    try:
        result = ingest_dicom(root, workers=1)
        allowed = ingest_dicom(root, workers=1, allow_outside_root=True)
    finally:
        sock.close()
    got = _outcomes(result)
    assert got.pop("linked") == "skipped:OutsideRoot"
    for path, outcome in expected.items():
        assert got.pop(path) == outcome, path
    assert sorted(got) == ["PAT00000/study0/img000.dcm", "PAT00001/study0/img000.dcm", "PAT00002/study0/img000.dcm", "file_link.dcm"]
    rep = result.report
    assert rep.reconciles and (rep.found, rep.ingested, rep.skipped, rep.failed) == (14, 4, 9, 1)
    # --allow-outside-root follows links wherever they point, under the link's path.
    got = _outcomes(allowed)
    assert got["linked/PAT00000/study0/img000.dcm"] == "ok" and got["null.dcm"] == "skipped:Device"
    assert allowed.report.reconciles and allowed.report.ingested == 5
    assert allowed.manifest.history[-1]["options"]["allow_outside_root"] is True
    write_errors(result.errors, tmp_path / "errors.parquet")  # the escaped path is text
    write_manifest(result.manifest, tmp_path / "m.parquet")


def test_collect_files_accounts_for_the_same_entries(tmp_path):
    from mdprep.ingest.files import collect_files

    root = tmp_path / "t"
    _small_tree(root)
    sock, expected = _special_entries(root)
    sock.close()  # the socket file stays
    listing = collect_files(root)
    assert {p: f"{o}:{t}" for p, o, t, _ in listing.refused} == expected
    assert listing.relpaths == ["PAT00000/study0/img000.dcm", "PAT00001/study0/img000.dcm", "PAT00002/study0/img000.dcm"]


def test_an_unlistable_folder_is_an_error_row(tmp_path, monkeypatch):
    # Running as root ignores permissions, so the refusal comes from a patched os.scandir.
    root = tmp_path / "t"
    _small_tree(root)
    real_scandir = os.scandir

    def scandir(path):
        if os.path.basename(path) == "PAT00001":
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    result = ingest_dicom(root, workers=1)
    assert result.report.reconciles and (result.report.ingested, result.report.failed) == (2, 1)
    row = result.errors.iloc[0]
    assert (row["path"], row["error_type"]) == ("PAT00001/", "PermissionError") and "Permission denied" in row["message"]


def test_an_unlistable_root_is_bad_input(tmp_path, monkeypatch):
    root = tmp_path / "t"
    _small_tree(root)

    def scandir(path):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(InputError, match="cannot list .*Permission denied"):
        ingest_dicom(root, workers=1)


def _png_header(width, height):
    """A PNG that declares ``width`` x ``height`` pixels in 60-odd bytes (PIL reads only the header)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_images_decompression_bombs_fifos_and_bad_names_are_rows(tmp_path):
    from mdprep.synthetic import write_image_tree

    root = tmp_path / "imgs"
    write_image_tree(root, patients=2, studies=1, shape=(8, 8))
    study = root / "patient00000" / "study1"
    (study / "view3_frontal.png").write_bytes(_png_header(70000, 70000))  # over twice PIL's limit: an error
    (study / "view4_frontal.png").write_bytes(_png_header(10000, 10000))  # over the limit: PIL only warns
    os.mkfifo(study / "view5_frontal.png")
    fd = os.open(os.fsencode(study) + b"/view6_fr\xe9.png", os.O_CREAT | os.O_WRONLY)
    os.close(fd)
    result = ingest_images(root, patient_regex=REGEX, workers=1)
    got = _outcomes(result)
    assert got["patient00000/study1/view3_frontal.png"] == "failed:DecompressionBomb"
    assert got["patient00000/study1/view4_frontal.png"] == "failed:DecompressionBomb"
    assert got["patient00000/study1/view5_frontal.png"] == "skipped:Fifo"
    assert got["patient00000/study1/view6_fr\\xe9.png"] == "failed:UndecodablePath"
    rep = result.report
    assert rep.reconciles and (rep.found, rep.ingested, rep.skipped, rep.failed) == (7, 3, 1, 3)
    write_errors(result.errors, tmp_path / "e.parquet")


def test_a_patient_regex_that_matches_nothing_is_a_usage_error(image_tree, runner, tmp_path):
    from mdprep.cli import main

    with pytest.raises(UsageError, match=r"matches none of the \d+ image paths, for example 'patient00000/study1/view1_frontal.png'"):
        ingest_images(image_tree.root, patient_regex=r"(?P<patient>pat_\d+)/", workers=1)
    out = tmp_path / "m.parquet"
    res = runner.invoke(main, ["ingest", "images", image_tree.root, "--patient-regex", r"(?P<patient>PAT\d+)", "-o", str(out)])
    assert res.exit_code == 2 and not out.exists()
    assert res.stderr.startswith("Error: --patient-regex '(?P<patient>PAT\\\\d+)' matches none of the")
    assert len(res.stderr.strip().splitlines()) == 1


def test_a_tree_without_images_is_empty_input(dicom_tree):
    with pytest.raises(EmptyInputError, match=r"is an image \(\.png.*for example 'PAT00000/study0/img000.dcm'.*mdprep ingest dicom"):
        ingest_images(dicom_tree.root, patient_regex=r"(?P<patient>PAT\d+)/", workers=1)


def test_file_lists_refuse_undecodable_paths_and_do_not_hang_on_fifos(tmp_path, runner):
    from mdprep.cli import main

    root = tmp_path / "t"
    _small_tree(root)
    os.mkfifo(root / "fifo.dcm")
    listing = b"PAT00000/study0/img000.dcm\nbad\xff.dcm\nfifo.dcm\n"
    (tmp_path / "list.txt").write_bytes(listing)
    errors = tmp_path / "e.csv"
    res = runner.invoke(main, ["ingest", "dicom", str(root), "--files-from", str(tmp_path / "list.txt"), "-o", str(tmp_path / "m.parquet"), "--errors", str(errors)])
    assert res.exit_code == 0, res.output
    assert "3 found = 1 ingested + 1 skipped + 1 failed" in res.stderr
    rows = pd.read_csv(errors)
    assert dict(zip(rows["path"], rows["error_type"])) == {"bad\\xff.dcm": "UndecodablePath", "fifo.dcm": "Fifo"}
    res = runner.invoke(main, ["ingest", "dicom", str(root), "--files-from", "-", "-o", str(tmp_path / "n.parquet"), "-q"], input=listing)
    assert res.exit_code == 0 and "UndecodablePath 1" in res.stderr
    res = runner.invoke(main, ["ingest", "dicom", str(root), "--files-from", str(tmp_path / "nope.txt"), "-o", str(tmp_path / "n.parquet")])
    assert res.exit_code == 2 and res.stderr.startswith("Error: cannot read the --files-from list")


@pytest.mark.parametrize(
    "tags",
    [
        ["--tags", "0010,1030,Manufacturer"],
        ["--tags", "0010,1030", "--tags", "Manufacturer"],
        ["--tags", "(0010,1030)", "--tags", "Manufacturer"],
        ["--tags", "00101030,Manufacturer"],
    ],
)
def test_cli_tags_accept_every_tag_spelling(runner, tmp_path, tags):
    from mdprep.cli import main
    from mdprep.manifest import read_manifest

    root = tmp_path / "t"
    _small_tree(root, patients=1)
    _set_element(root / "PAT00000" / "study0" / "img000.dcm", 0x00101030, "DS", "71.5")
    out = tmp_path / "m.parquet"
    res = runner.invoke(main, ["ingest", "dicom", str(root), "-o", str(out), "-q", *tags])
    assert res.exit_code == 0, res.output
    frame = read_manifest(out).frame
    assert frame["patient_weight"].tolist() == [71.5] and frame["manufacturer"].tolist() == ["ACME Imaging"]


@pytest.mark.parametrize(
    "tags,message",
    [
        (
            "PatientWeigth",
            "unknown DICOM keyword 'PatientWeigth'; use a keyword from the DICOM dictionary (for example PatientWeight) "
            "or a tag as GGGG,EEEE (for example 0010,1030)",
        ),
        ("0010,103", "malformed tag '0010,103': expected GGGG,EEEE with 4 hex digits each (for example 0010,1030)"),
        ("0010,Weight", "malformed tag '0010': expected GGGG,EEEE with 4 hex digits each"),
        ("ImageID", "tag 'ImageID' would create column 'image_id', which the manifest reserves for its own values"),
    ],
)
def test_cli_bad_tags_are_one_error_line(runner, tmp_path, tags, message):
    from mdprep.cli import main

    res = runner.invoke(main, ["ingest", "dicom", str(tmp_path), "-o", str(tmp_path / "m.parquet"), "--tags", tags])
    assert res.exit_code == 2
    assert res.stderr.startswith("Error: " + message) and len(res.stderr.strip().splitlines()) == 1


def test_tags_may_not_name_the_manifest_s_own_columns(tmp_path):
    from mdprep.dicom_header import header_columns
    from mdprep.ingest.dicom import RESERVED_COLUMNS

    assert {"image_id", "path", "lenient_read", "has_pixels", "patient_id_source", "split", "fold"} <= set(RESERVED_COLUMNS)
    with pytest.raises(UsageError, match="tag 'ImageID' would create column 'image_id', which the manifest reserves"):
        ingest_dicom(tmp_path, tags=["ImageID"])
    with pytest.raises(UsageError, match="tag '0018,0060' would create column 'kvp', which the manifest reserves"):
        header_columns(["0018,0060"], reserved=["kvp"])
    assert header_columns(["Rows"], reserved=["rows"])[-1].column == "transfer_syntax"  # a preset tag: nothing added


def _anonymised_tree(root):
    """Three files: one with a patient, one without (but with study and series), one without patient or study."""
    _small_tree(root)
    _set_element(root / "PAT00001" / "study0" / "img000.dcm", 0x00100020, None, None)
    path = root / "PAT00002" / "study0" / "img000.dcm"
    _set_element(path, 0x00100020, None, None)
    _set_element(path, 0x0020000D, None, None)


def test_missing_patient_policies(tmp_path):
    from pydicom import dcmread

    root = tmp_path / "t"
    _anonymised_tree(root)
    default = ingest_dicom(root, workers=1)
    assert "patient_id_source" not in default.manifest.frame.columns
    assert default.errors["error_type"].tolist() == ["MissingPatientID", "MissingPatientID"]
    assert default.manifest.history[-1]["options"]["missing_patient"] == "error"
    study = ingest_dicom(root, missing_patient="study", workers=1)
    frame = study.manifest.frame
    uid = str(dcmread(root / "PAT00001" / "study0" / "img000.dcm").StudyInstanceUID)
    assert frame["patient_id"].tolist() == ["PAT00000", f"study:{uid}"]
    assert frame["patient_id_source"].tolist() == ["PatientID", "StudyInstanceUID"]
    assert study.errors["path"].tolist() == ["PAT00002/study0/img000.dcm"]  # no study to fall back on
    assert study.manifest.history[-1]["options"]["missing_patient"] == "study"
    series = ingest_dicom(root, missing_patient="series", workers=1)
    assert series.report.ingested == 3 and series.manifest.frame["patient_id"].str.startswith("series:").sum() == 2
    with pytest.raises(UsageError, match="missing_patient 'guess' is not one of error, study, series"):
        ingest_dicom(root, missing_patient="guess")


def test_cli_missing_patient(runner, tmp_path):
    from mdprep.cli import main
    from mdprep.manifest import read_manifest

    root = tmp_path / "t"
    _anonymised_tree(root)
    out = tmp_path / "m.parquet"
    res = runner.invoke(main, ["ingest", "dicom", str(root), "-o", str(out), "--missing-patient", "series", "-q"])
    assert res.exit_code == 0, res.output
    assert read_manifest(out).frame["patient_id_source"].tolist() == ["PatientID", "SeriesInstanceUID", "SeriesInstanceUID"]
    res = runner.invoke(main, ["ingest", "dicom", str(root), "-o", str(out), "--missing-patient", "guess"])
    assert res.exit_code == 2 and "'guess' is not one of 'error', 'study', 'series'" in res.stderr


# ----------------------------------------------------------------------------- stand-in patients, empty inputs


def _study_tree(root):
    """Study 1: one file with PatientID P1, two without. Study 2: files with P2 and P3, one without."""
    from pydicom import dcmread

    write_dicom_tree(root, patients=1, images_per_patient=6, shape=(4, 4), private_tags=0)
    files = sorted(root.rglob("*.dcm"))
    plan = [("1.2.1", "P1"), ("1.2.1", None), ("1.2.1", None), ("1.2.2", "P2"), ("1.2.2", "P3"), ("1.2.2", None)]
    for path, (study, patient) in zip(files, plan):
        ds = dcmread(path)
        ds.StudyInstanceUID = ds.SeriesInstanceUID = study
        if patient is None:
            del ds.PatientID
        else:
            ds.PatientID = patient
        ds.save_as(path)
    return [str(p.relative_to(root)) for p in files]


@pytest.mark.parametrize("policy", ["study", "series"])
def test_files_without_patient_borrow_the_patient_of_their_study(tmp_path, policy):
    rels = _study_tree(tmp_path / "t")
    result = ingest_dicom(tmp_path / "t", missing_patient=policy, workers=1)
    frame = result.manifest.frame.set_index("path")
    attribute = {"study": "StudyInstanceUID", "series": "SeriesInstanceUID"}[policy]
    assert frame.loc[rels, "patient_id"].tolist() == ["P1", "P1", "P1", "P2", "P3", f"{policy}:1.2.2"]
    borrowed = f"{attribute} (PatientID of the {policy})"
    assert frame.loc[rels, "patient_id_source"].tolist() == ["PatientID", borrowed, borrowed, "PatientID", "PatientID", attribute]
    assert result.report.notes == (
        f"2 file(s) without PatientID took the PatientID that the other files of their {policy} carry (patient_id_source '{borrowed}')",
        f"1 file(s) without PatientID belong to a {policy} whose other files carry several PatientIDs ({attribute} '1.2.2'); "
        f"they keep '{policy}:<{attribute}>' as their patient",
    )


def test_a_tree_or_list_without_dicom_files_is_empty_input(tmp_path, runner):
    from mdprep.cli import main

    root = tmp_path / "t"
    root.mkdir()
    (root / "notes.txt").write_text("hello")
    (root / "scan.dcm").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    os.symlink("nowhere.dcm", root / "dangling.dcm")
    with pytest.raises(EmptyInputError, match=r"no DICOM file among the 3 files found under .*\(NotDicom 2, DanglingSymlink 1\); check the path"):
        ingest_dicom(root, workers=1)
    (tmp_path / "list.txt").write_text("a.dcm\nb.dcm\n")
    out = tmp_path / "m.parquet"
    res = runner.invoke(main, ["ingest", "dicom", str(root), "--files-from", str(tmp_path / "list.txt"), "-o", str(out)])
    assert res.exit_code == 2 and not out.exists()
    assert res.stderr.startswith("Error: no DICOM file among the 2 files listed (FileNotFoundError 2); check the list")
    assert len(res.stderr.strip().splitlines()) == 1


def test_pydicom_warnings_are_counted_per_file_not_printed(tmp_path, runner):
    from pydicom import dcmread

    from mdprep.cli import main

    root = tmp_path / "t"
    _small_tree(root)
    for path in sorted(root.rglob("*.dcm"))[:2]:
        ds = dcmread(path)
        ds.SpecificCharacterSet = "ISO_IR 999"
        with pytest.warns(UserWarning):
            ds.save_as(path)
    result = ingest_dicom(root, workers=1)
    assert result.report.notes == ("2 file(s): unknown character set 'ISO_IR 999'; its text was decoded as ASCII/Latin-1",)
    res = runner.invoke(main, ["ingest", "dicom", str(root), "-o", str(tmp_path / "m.parquet")])
    assert res.exit_code == 0 and "Warning" not in res.stderr
    assert res.stderr.count("Note: 2 file(s): unknown character set 'ISO_IR 999'; its text was decoded as ASCII/Latin-1\n") == 1
    # Notes are information, which --quiet silences (docs/ingest.md).
    res = runner.invoke(main, ["ingest", "dicom", str(root), "-o", str(tmp_path / "m.parquet"), "-q"])
    assert res.exit_code == 0 and res.stderr == ""


# ----------------------------------------------------------------------------- file lists


def test_file_list_lines_keep_their_whitespace(tmp_path, runner):
    from mdprep.cli import main
    from mdprep.manifest import read_manifest

    root = tmp_path / "t"
    _small_tree(root, patients=1)
    data = (root / "PAT00000" / "study0" / "img000.dcm").read_bytes()
    names = ["form\x0cfeed.dcm", "nel\u0085x.dcm", " trailing space .dcm", "tab\tname.dcm"]
    for name in names:
        (root / name).write_bytes(data)
    listing = "".join(f"{n}\n" for n in names[:2]) + f"{names[2]}\r\n\n{names[3]}"  # CRLF, an empty line, no final newline
    (tmp_path / "list.txt").write_text(listing, encoding="utf-8")
    out = tmp_path / "m.parquet"
    res = runner.invoke(main, ["ingest", "dicom", str(root), "--files-from", str(tmp_path / "list.txt"), "-o", str(out), "-q"])
    assert res.exit_code == 0, res.output
    assert sorted(read_manifest(out).frame["path"]) == sorted(names)


def test_listed_entries_get_the_walk_s_outcomes(tmp_path):
    from mdprep.ingest.files import collect_files

    root = tmp_path / "t"
    _small_tree(root)
    sock, expected = _special_entries(root)
    sock.close()
    walked = {p: f"{o}:{t}" for p, o, t, _ in collect_files(root).refused}
    # Every refused entry but the folder links, listed (the undecodable one as a --files-from line gives it).
    listed_names = [p for p in expected if p not in ("PAT00000/up", "alias", "bad\\xff.dcm")] + ["./bad\udcff.dcm"]
    listing = collect_files(root, listed_names)
    listed = {p: f"{o}:{t}" for p, o, t, _ in listing.refused}
    assert len(listed) == len(listed_names) == 7 and listing.relpaths == []
    for rel in listed:
        assert listed[rel] == walked[rel], rel  # one classification for both, and the same normalised path
    # Folders are walked, not listed: a listed folder (or link to one) is skipped, with its path in the row.
    folder = collect_files(root, ["PAT00001", "alias", "PAT00000/study0/"]).refused
    assert [(p, o, t) for p, o, t, _ in folder] == [("PAT00001", "skipped", "Folder"), ("alias", "skipped", "Folder"), ("PAT00000/study0", "skipped", "Folder")]
    assert all("Errno" not in m for *_, m in folder)


# ----------------------------------------------------------------------------- images


def test_patient_regex_groups_may_not_overwrite_manifest_columns(image_tree, monkeypatch):
    import mdprep.ingest.images as images

    monkeypatch.setattr(images, "_read_image_headers", lambda *a, **k: pytest.fail("read images before refusing the regex"))
    for group in ("path", "patient_id", "image_id", "width", "height", "split", "sex", "age", "fold", "study_date", "color_mode", "format"):
        with pytest.raises(UsageError, match=rf"has the group\(s\) '{group}', named after column\(s\) the manifest fills itself; rename them \(reserved: image_id, path, "):
            ingest_images(image_tree.root, patient_regex=rf"(?P<patient>patient\d+)/(?P<{group}>study\d+)", workers=1)


def test_free_groups_become_columns(image_tree):
    result = ingest_images(image_tree.root, patient_regex=r"(?P<patient>patient\d+)/(?P<visit>study\d+)/view(?P<k>\d)", workers=1)
    frame = result.manifest.frame
    assert frame["visit"].str.match(r"study\d$").all() and set(frame["k"]) == {"1", "2"} and "study_id" not in frame


def test_a_patient_group_that_is_always_empty_is_a_usage_error(image_tree, tmp_path, runner):
    from mdprep.cli import main

    out = tmp_path / "m.parquet"
    res = runner.invoke(main, ["ingest", "images", image_tree.root, "--patient-regex", "(?P<patient>x*)", "-o", str(out)])
    assert res.exit_code == 2 and not out.exists()
    assert "its group 'patient' is empty in every one" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    # Empty for some paths only: those fail without being read, the others are rows.
    result = ingest_images(image_tree.root, patient_regex=r"(?P<patient>patient0000[01]|)/", workers=1)
    got = _outcomes(result)
    assert got["patient00002/study1/view1_frontal.png"] == "failed:PatternMismatch"
    assert set(result.manifest.frame["patient_id"]) == {"patient00000", "patient00001"}


def test_patient_regex_means_what_python_says(tmp_path):
    from PIL import Image

    root = tmp_path / "imgs"
    for name in ("patient7/a.png", "patient\u0663/b.png"):  # an Arabic-Indic digit 3: Python's \d takes it, RE2's does not
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (4, 4)).save(root / name)
    result = ingest_images(root, patient_regex=r"(?P<patient>patient\d)/", workers=1)
    assert sorted(result.manifest.frame["patient_id"]) == ["patient7", "patient\u0663"]
    with pytest.raises(UsageError, match=r"matches none of the 2 image paths.*Python's re warns: Possible nested set.*write \[0-9\]"):
        ingest_images(root, patient_regex=r"(?P<patient>patient[[:digit:]])/", workers=1)


def test_images_cut_short_are_truncated(tmp_path):
    import io

    from PIL import Image

    root = tmp_path / "imgs"
    (root / "p1").mkdir(parents=True)
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8), "L")
    encoded = {}
    for fmt, ext in (("PNG", "png"), ("JPEG", "jpg"), ("TIFF", "tif"), ("BMP", "bmp")):
        buf = io.BytesIO()
        im.save(buf, fmt)
        encoded[ext] = buf.getvalue()
        (root / "p1" / f"whole.{ext}").write_bytes(encoded[ext])
        (root / "p1" / f"cut.{ext}").write_bytes(encoded[ext][: len(encoded[ext]) * 2 // 3] if ext != "tif" else encoded[ext][:2000])
    (root / "p1" / "padded.jpg").write_bytes(encoded["jpg"] + bytes(100))  # padding after EOI
    (root / "p1" / "trailer.png").write_bytes(encoded["png"] + b"appended data")  # bytes after IEND
    (root / "p1" / "trailer.jpg").write_bytes(encoded["jpg"] + b"appended data")
    (root / "p1" / "empty.png").write_bytes(b"")
    (root / "p1" / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    result = ingest_images(root, patient_regex=r"(?P<patient>p\d)/", workers=1)
    got = _outcomes(result)
    for ext in ("png", "jpg", "tif", "bmp"):
        assert got[f"p1/whole.{ext}"] == "ok" and got[f"p1/cut.{ext}"] == "failed:TruncatedFile", ext
    assert got["p1/padded.jpg"] == got["p1/trailer.png"] == got["p1/trailer.jpg"] == "ok"
    messages = dict(zip(result.errors["path"], result.errors["message"]))
    assert messages["p1/cut.png"].startswith("the PNG ends at byte") and "FFD9" in messages["p1/cut.jpg"]
    assert messages["p1/empty.png"] == "an empty file"
    assert all("<_io." not in m and "name=" not in m for m in messages.values())


def test_ingest_images_skips_links_out_of_the_root_unless_allowed(tmp_path, runner):
    from mdprep.cli import main
    from mdprep.manifest import read_manifest
    from mdprep.synthetic import write_image_tree

    root, elsewhere = tmp_path / "images", tmp_path / "elsewhere"
    write_image_tree(root, patients=2, studies=1, shape=(8, 8))
    write_image_tree(elsewhere, patients=1, studies=1, shape=(8, 8))
    os.symlink(elsewhere / "patient00000", root / "patient00009")  # a folder of images elsewhere
    os.symlink(elsewhere / "patient00000" / "study1" / "view1_frontal.png", root / "patient00008.png")
    regex = r"(?P<patient>patient\d+)"
    res = runner.invoke(main, ["ingest", "images", str(root), "--patient-regex", regex, "-o", str(tmp_path / "m.parquet"), "--errors", str(tmp_path / "e.csv")])
    assert res.exit_code == 0, res.stderr
    errors = pd.read_csv(tmp_path / "e.csv")
    assert sorted(errors.loc[errors["error_type"] == "OutsideRoot", "path"]) == ["patient00008.png", "patient00009"]
    assert not read_manifest(tmp_path / "m.parquet").frame["path"].str.startswith(("patient00008", "patient00009")).any()
    # hash then agrees with ingest: every path of the manifest is under the root.
    res = runner.invoke(main, ["hash", str(tmp_path / "m.parquet"), "-o", str(tmp_path / "h.parquet"), "-q"])
    assert res.exit_code == 0, res.stderr
    res = runner.invoke(main, ["ingest", "images", str(root), "--patient-regex", regex, "--allow-outside-root", "-o", str(tmp_path / "all.parquet"), "-q"])
    assert res.exit_code == 0 and read_manifest(tmp_path / "all.parquet").frame["path"].str.startswith("patient00009/").any()

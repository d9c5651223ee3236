from __future__ import annotations

import hashlib
import json
import re
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdprep.audit import audit, near_duplicate_pairs, to_junit, to_markdown, value_overlap
from mdprep.cli import main
from mdprep.errors import MdprepWarning, UsageError
from mdprep.hashing import hash_manifest
from mdprep.manifest import Manifest, read_manifest, write_manifest
from mdprep.synthetic import write_dicom_tree, write_leaky_cohort


@pytest.fixture(scope="module")
def leaky(tmp_path_factory):
    root = tmp_path_factory.mktemp("leaky")
    frame, expected = write_leaky_cohort(root)
    hashed = hash_manifest(Manifest(frame, root=str(root)), workers=1)
    assert hashed.failed == 0
    return hashed.manifest, expected, root


def _keys(report, check, partition="split"):
    (r,) = [c for c in report.checks if c.check == check and c.partition == partition]
    return r


def test_every_planted_leak_is_found_exactly(leaky):
    manifest, expected, _ = leaky
    report = audit(manifest.frame)
    assert report.exit_code == 1
    assert _keys(report, "patient_overlap").findings["key"].tolist() == expected["patient_overlap"]
    assert _keys(report, "study_overlap").findings["key"].tolist() == expected["study_overlap"]
    dup = _keys(report, "duplicate_file").findings
    assert ["|".join(sorted(ids)) for ids in dup["image_ids"]] == expected["duplicate_file"]
    pix = _keys(report, "duplicate_pixels").findings
    assert sorted("|".join(sorted(ids)) for ids in pix["image_ids"]) == expected["duplicate_pixels"]
    near = _keys(report, "near_duplicate").findings
    assert expected["near_duplicate"]  # the generator found a copy 1 to 4 bits away
    assert set(near.loc[near["detail"] != "distance 0", "key"]) == set(expected["near_duplicate"])
    # Exact perceptual matches (the copy and the re-encoded image) are findings too.
    exact = near.loc[near["detail"] == "distance 0", "image_ids"].map(lambda ids: "|".join(sorted(ids))).tolist()
    assert sorted(exact) == expected["duplicate_pixels"]
    same = _keys(report, "same_person")
    assert same.status == "warning" and not same.gate
    assert ["|".join(sorted(x.split(": ")[1] for x in d.split(" by split: ")[1].split("; "))) for d in same.findings["detail"]] == expected["same_person"]
    # Pairs are counted per pair of splits.
    pairs = _keys(report, "patient_overlap").pairs
    assert pairs[["split_a", "split_b", "shared", "rows"]].values.tolist() == [["test", "train", 1, 2]]


def test_clean_split_passes_and_reports_unchecked_rows(leaky):
    manifest, _, _ = leaky
    frame = manifest.frame
    clean = frame[~frame["path"].str.startswith("leak/")].copy()
    clean.loc[clean.index[:2], "file_sha256"] = None
    report = audit(clean)
    assert report.exit_code == 0
    assert all(c.status in ("passed", "skipped") for c in report.checks)
    assert _keys(report, "duplicate_file").unchecked_rows == 2


def test_skipped_checks_say_why_and_never_pass_silently():
    f = pd.DataFrame({"image_id": ["a", "b"], "path": ["a", "b"], "patient_id": ["p", "q"], "split": ["train", "test"]})
    report = audit(f)
    assert report.exit_code == 0
    assert _keys(report, "near_duplicate").status == "skipped"
    assert "mdprep hash" in _keys(report, "near_duplicate").reason
    assert _keys(report, "duplicate_file").unchecked_rows == 2


def test_allow_list_and_fail_on(leaky):
    manifest, _, _ = leaky
    report = audit(manifest.frame, checks=["patient_overlap"], allow=[{"check": "patient_overlap", "key": "P000"}])
    assert report.exit_code == 0
    r = _keys(report, "patient_overlap")
    assert r.findings["allowed"].all() and r.status == "passed"
    report = audit(manifest.frame, fail_on=["same_person"], checks=["same_person", "image_overlap"])
    assert report.exit_code == 1 and [c.check for c in report.failed] == ["same_person"]


def test_folds_are_audited_too():
    f = pd.DataFrame(
        {"image_id": list("abcd"), "path": list("abcd"), "patient_id": ["p", "p", "q", "r"], "split": ["train"] * 4, "fold": [0, 1, 0, 1]}
    )
    report = audit(f, checks=["patient_overlap"])
    assert report.exit_code == 1
    r = _keys(report, "patient_overlap", "fold")
    assert r.findings["splits"].tolist() == [("fold 0", "fold 1")]


def test_temporal_check():
    f = pd.DataFrame(
        {
            "image_id": list("abcd"),
            "path": list("abcd"),
            "patient_id": list("pqrs"),
            "split": ["train", "train", "test", "test"],
            "study_date": ["2020-01-01", "2021-06-01", "2021-01-01", "2022-01-01"],
        }
    )
    report = audit(f, checks=["temporal"], time_col="study_date")
    r = _keys(report, "temporal")
    assert r.status == "failed" and r.findings["image_ids"].tolist() == [["c"]]
    with pytest.raises(UsageError, match="--time-col"):
        audit(f, checks=["temporal"])


def test_near_duplicate_index_finds_every_planted_pair_without_all_pairs():
    rng = np.random.default_rng(1)
    base = rng.integers(0, 2**63, 20000, dtype=np.uint64)
    flips = [np.uint64(0)] * 0
    planted = []
    hashes = list(base)
    for i in range(200):
        bits = rng.choice(64, size=int(rng.integers(1, 5)), replace=False)
        h = base[i]
        for b in bits:
            h ^= np.uint64(1) << np.uint64(int(b))
        hashes.append(h)
        planted.append((i, 20000 + i, len(bits)))
    del flips
    i, j, d = near_duplicate_pairs(np.array(hashes, dtype=np.uint64), 4)
    found = {(a, b): c for a, b, c in zip(i.tolist(), j.tolist(), d.tolist())}
    for a, b, n in planted:
        assert found[(a, b)] == n
    brute = np.bitwise_count(np.array(hashes[:300], dtype=np.uint64)[:, None] ^ np.array(hashes[:300], dtype=np.uint64)[None, :])
    small = {(a, b) for a, b in zip(*np.nonzero((brute <= 4) & (brute > 0))) if a < b}
    assert small <= set(found)


def test_value_overlap_matches_pandas_on_random_split():
    rng = np.random.default_rng(0)
    n = 5000
    f = pd.DataFrame({"image_id": [f"i{k}" for k in range(n)], "patient_id": [f"p{x}" for x in rng.integers(0, 1500, n)]})
    f["split"] = rng.choice(["train", "val", "test"], n)
    r = value_overlap(f, "patient_id", check="patient_overlap")
    per = f.groupby("patient_id")["split"].nunique()
    assert len(r.findings) == int((per > 1).sum())
    tr, te = set(f.loc[f.split == "train", "patient_id"]), set(f.loc[f.split == "test", "patient_id"])
    row = r.pairs[(r.pairs.split_a == "test") & (r.pairs.split_b == "train")].iloc[0]
    assert row["shared"] == len(tr & te)
    assert row["rows"] == int(f[f.patient_id.isin(tr & te) & f.split.isin(["train", "test"])].shape[0])


def test_hash_step_on_dicom_finds_a_rewrapped_copy(tmp_path):
    from pydicom import dcmread

    planted = write_dicom_tree(tmp_path, patients=2, images_per_patient=2, shape=(32, 32))
    src = tmp_path / "PAT00000/study0/img000.dcm"
    ds = dcmread(src)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    ds.PatientID = "OTHER"
    ds.save_as(tmp_path / "rewrapped.dcm")
    from mdprep.ingest import ingest_dicom

    m = ingest_dicom(tmp_path, workers=1).manifest
    hashed = hash_manifest(m, workers=1).manifest.frame
    a = hashed.set_index("path").loc["PAT00000/study0/img000.dcm"]
    b = hashed.set_index("path").loc["rewrapped.dcm"]
    assert a["file_sha256"] != b["file_sha256"] and a["pixel_sha256"] == b["pixel_sha256"] and a["phash"] == b["phash"]
    assert hashed["phash"].notna().all() and planted.ingested + 1 == len(hashed)


def test_reports_json_junit_markdown(leaky, tmp_path):
    manifest, _, _ = leaky
    report = audit(manifest.frame)
    doc = json.loads(report.to_json())
    assert doc["schema"] == "mdprep-audit-report" and doc["version"] == 1 and doc["exit_code"] == 1
    patient = next(c for c in doc["checks"] if c["check"] == "patient_overlap")
    assert patient["findings"][0]["key"] == "P000" and patient["findings"][0]["image_ids"]
    root = ET.fromstring(to_junit(report))
    suite = root.find("testsuite")
    failures = [tc for tc in suite.iter("testcase") if tc.find("failure") is not None]
    assert {tc.get("name") for tc in failures} >= {"patient_overlap", "duplicate_file", "near_duplicate"}
    assert int(suite.get("failures")) == len(failures) == len(report.failed)
    same = next(tc for tc in suite.iter("testcase") if tc.get("name") == "same_person")
    assert same.find("failure") is None and same.find("system-out") is not None
    md = to_markdown(report)
    assert md.startswith("### mdprep audit-leakage: FAILED") and len(md.splitlines()) < 60


def test_cli_exit_codes_and_outputs(runner, leaky, tmp_path):
    manifest, _, root = leaky
    path = tmp_path / "m.parquet"
    write_manifest(manifest, path)
    res = runner.invoke(main, ["audit-leakage", str(path), "--json", str(tmp_path / "a.json"), "--junit", str(tmp_path / "a.xml"), "--markdown", str(tmp_path / "a.md")])
    assert res.exit_code == 1, res.stderr
    verdict = res.stderr.strip().splitlines()[-1]
    assert res.stdout == "" and verdict.startswith("Leakage found by 5 of 10 checks (7 ran; 3 skipped: no column): ") and "patient_overlap (splits)" in verdict
    assert json.loads((tmp_path / "a.json").read_text())["result"] == "failed"
    ET.parse(tmp_path / "a.xml")
    # Several files, each one split; a clean pair passes.
    frame = manifest.frame
    clean = frame[~frame["path"].str.startswith("leak/")]
    for name in ("train", "test"):
        write_manifest(Manifest(clean[clean["split"] == name].drop(columns=["split"]), root=str(root)), tmp_path / f"{name}.parquet")
    res = runner.invoke(main, ["audit-leakage", str(tmp_path / "train.parquet"), str(tmp_path / "test.parquet"), "-q"])
    assert res.exit_code == 0 and res.stderr.strip().splitlines()[-1] == "No leakage found in 7 of 10 checks (3 skipped: no column)"
    allow = tmp_path / "allow.json"
    allow.write_text(json.dumps([{"check": "patient_overlap", "key": "P000", "reason": "reviewed"}]))
    res = runner.invoke(main, ["audit-leakage", str(path), "--checks", "patient_overlap", "--allow", str(allow), "-q"])
    assert res.exit_code == 0
    allow.write_text("[{}]")
    res = runner.invoke(main, ["audit-leakage", str(path), "--allow", str(allow)])
    assert res.exit_code == 2 and "lacks 'check' and 'key'" in res.stderr
    res = runner.invoke(main, ["audit-leakage", str(path), "--checks", "nonsense"])
    assert res.exit_code == 2 and "unknown checks ['nonsense']" in res.stderr
    res = runner.invoke(main, ["audit-leakage", str(tmp_path / "train.parquet")])
    assert res.exit_code == 2 and "column 'split' not found" in res.stderr
    res = runner.invoke(main, ["audit-leakage", str(path), "--temporal"])
    assert res.exit_code == 2


def test_cli_hash(runner, leaky, tmp_path):
    manifest, _, root = leaky
    src = tmp_path / "in.parquet"
    frame = manifest.frame.drop(columns=["file_sha256", "pixel_sha256", "phash"])
    write_manifest(Manifest(frame, root=str(root)), src)
    shutil.copy(root / "p000/a.png", tmp_path / "x.png")
    res = runner.invoke(main, ["hash", str(src), "-o", str(tmp_path / "h.parquet"), "--workers", "2"])
    assert res.exit_code == 0, res.stderr
    out = read_manifest(tmp_path / "h.parquet").frame
    assert out["phash"].notna().all() and str(out["phash"].dtype) == "UInt64"
    res = runner.invoke(main, ["hash", str(src), "-o", str(tmp_path / "h.parquet"), "--root", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "--root" in res.stderr


def test_hash_reads_only_regular_files_within_the_cap(tmp_path):
    import os

    from PIL import Image

    root = tmp_path / "root"
    root.mkdir()
    Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).save(root / "a.png")
    os.mkfifo(root / "pipe.png")  # opening it for reading would block forever
    (root / "folder.dcm").mkdir()
    with open(root / "big.dcm", "wb") as fh:
        fh.truncate(3 << 20)  # 3 MiB, over a 1 MiB cap
    paths = ["a.png", "pipe.png", "folder.dcm", "big.dcm", "/dev/zero", "missing.png"]
    frame = pd.DataFrame({"image_id": paths, "path": paths, "patient_id": "p"})
    with pytest.warns(MdprepWarning, match="1 row"):  # /dev/zero, read on purpose
        result = hash_manifest(Manifest(frame, root=str(root)), workers=1, max_bytes=1 << 20, allow_outside_root=True)
    assert (result.hashed, result.failed) == (1, 5)
    errors = result.errors.set_index("path")
    assert errors["error_type"].to_dict() == {
        "pipe.png": "NotRegularFile", "folder.dcm": "NotRegularFile", "big.dcm": "TooLarge",
        "/dev/zero": "NotRegularFile", "missing.png": "FileNotFoundError",
    }
    assert errors.loc["/dev/zero", "message"].startswith("a character device, not a regular file")
    assert errors.loc["big.dcm", "message"] == "3,145,728 bytes, over the limit of 1,048,576 bytes; raise --max-bytes to read it"
    assert result.manifest.history[-1]["options"]["max_bytes"] == 1 << 20
    # Within the default cap the same file is read and hashed; it only fails to decode.
    again = hash_manifest(Manifest(frame.iloc[[3]], root=str(root)), workers=1)
    assert again.manifest.frame["file_sha256"].tolist() == [hashlib.sha256(bytes(3 << 20)).hexdigest()]
    assert again.errors["error_type"].tolist() == ["AttributeError"]


def test_hash_error_files_are_byte_identical_across_runs(runner, tmp_path):
    from PIL import Image

    root = tmp_path / "root"
    root.mkdir()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(root / "ok.png")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (root / "junk.jpg").write_bytes(b"not an image")
    paths = ["ok.png", "corrupt.png", "junk.jpg", "gone.png"]
    src = tmp_path / "m.parquet"
    write_manifest(Manifest(pd.DataFrame({"image_id": paths, "path": paths, "patient_id": "p"}), root=str(root)), src)
    outputs = []
    for run in ("a", "b"):
        res = runner.invoke(main, ["hash", str(src), "-o", str(tmp_path / f"{run}.parquet"), "--errors", str(tmp_path / f"{run}.csv"), "--workers", "1"])
        assert res.exit_code == 0, res.stderr
        assert "4 images = 1 hashed + 3 failed" in res.stderr
        outputs.append((tmp_path / f"{run}.csv").read_bytes())
    assert outputs[0] == outputs[1]
    text = outputs[0].decode()
    assert " at 0x" not in text and "cannot identify image file <_io.BytesIO object>" in text
    assert "gone.png,FileNotFoundError,No such file or directory" in text
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def test_cli_hash_max_bytes_takes_units(runner, tmp_path):
    from PIL import Image

    root = tmp_path / "root"
    root.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(root / "a.png")
    src = tmp_path / "m.parquet"
    write_manifest(Manifest(pd.DataFrame({"image_id": ["a"], "path": ["a.png"], "patient_id": "p"}), root=str(root)), src)
    res = runner.invoke(main, ["hash", str(src), "-o", str(tmp_path / "h.parquet"), "--workers", "1", "--max-bytes", "1K", "--errors", str(tmp_path / "e.csv")])
    assert res.exit_code == 0 and "1 images = 0 hashed + 1 failed" in res.stderr
    assert "TooLarge" in (tmp_path / "e.csv").read_text()
    res = runner.invoke(main, ["hash", str(src), "-o", str(tmp_path / "h.parquet"), "--workers", "1", "--max-bytes", "64KiB", "-q"])
    assert res.exit_code == 0 and read_manifest(tmp_path / "h.parquet").history[-1]["options"]["max_bytes"] == 65536
    res = runner.invoke(main, ["hash", str(src), "-o", str(tmp_path / "h.parquet"), "--max-bytes", "lots"])
    assert res.exit_code == 2 and "'lots' is not a size" in res.stderr


# ----------------------------------------------------------------------------- no false green


def _plain(n_patients: int = 3, images: int = 2) -> pd.DataFrame:
    """A patient-clean split with ids and patients only: most checks have no column."""
    rows = [(f"P{p}/{i}.png", f"P{p}", "train" if p % 2 == 0 else "test") for p in range(n_patients) for i in range(images)]
    f = pd.DataFrame(rows, columns=["image_id", "patient_id", "split"])
    return f.assign(path=f["image_id"])


def test_verdict_counts_checks_that_ran_and_groups_skips_by_reason():
    f = _plain().assign(study_id=None)
    report = audit(f)
    assert report.verdict == "No leakage found in 2 of 10 checks (8 skipped: 7 no column, 1 empty column)"
    counts = report.counts()
    assert counts == {
        "checks": 10, "ran": 2, "skipped": 8, "failed": 0, "warnings": 0, "with_unchecked_rows": 0,
        "unmet_requirements": 0, "skipped_by_reason": {"no column": 7, "empty column": 1},
    }
    doc = json.loads(report.to_json())
    assert doc["verdict"] == report.verdict and doc["counts"] == counts and doc["degenerate_grouping"] is None
    assert next(c for c in doc["checks"] if c["check"] == "study_overlap")["skip_kind"] == "empty column"
    suite = ET.fromstring(to_junit(report)).find("testsuite")
    skips = {tc.get("name"): tc.find("skipped").get("message") for tc in suite.iter("testcase") if tc.find("skipped") is not None}
    assert len(skips) == int(suite.get("skipped")) == 8 and skips["study_overlap"] == "'study_id' is empty in every row"
    assert {p.get("name"): p.get("value") for p in suite.find("properties")}["verdict"] == report.verdict
    assert report.verdict in to_markdown(report)
    # A leak, a row without a patient id, and folds: every check counts once per partition.
    f = _plain().assign(fold=[0, 0, 1, 1, 0, 0])
    f.loc[0, "split"] = "test"
    f.loc[5, "patient_id"] = None
    report = audit(f)
    assert report.verdict == (
        "Leakage found by 1 of 20 checks (4 ran; 16 skipped: no column; 2 with unchecked rows): patient_overlap (splits)"
    )
    doc = json.loads(report.to_json())
    assert (doc["counts"]["ran"], doc["counts"]["skipped"], doc["counts"]["failed"]) == (4, 16, 1)
    suite = ET.fromstring(to_junit(report)).find("testsuite")
    assert suite.get("tests") == "20" and suite.get("failures") == "1" and suite.get("skipped") == "16"
    assert "Leakage found by 1 of 20 checks" in to_markdown(report)


def test_require_fails_the_gate_when_a_named_check_could_not_fully_run():
    f = _plain().assign(file_sha256=["h0", "h1", "h2", "h3", None, "h5"])
    assert audit(f).exit_code == 0  # unchecked rows alone do not fail the gate...
    report = audit(f, require=["duplicate_file", "near_duplicate"])
    assert report.exit_code == 1 and not report.failed  # ...but a required check must look at every row
    assert [r.check for r in report.unmet] == ["duplicate_file", "near_duplicate"]
    assert report.verdict.startswith(
        "Gate failed, 2 required check(s) did not fully run: duplicate_file (splits: 1 row(s) unchecked), "
        "near_duplicate (splits: skipped, no column); no leakage found in 3 of 10 checks"
    )
    doc = json.loads(report.to_json())
    assert doc["result"] == "failed" and doc["required"] == ["duplicate_file", "near_duplicate"] and doc["counts"]["unmet_requirements"] == 2
    dup = next(c for c in doc["checks"] if c["check"] == "duplicate_file")
    assert dup["verdict"] == "failed" and dup["required"] and not dup["complete"]
    suite = ET.fromstring(to_junit(report)).find("testsuite")
    failures = {tc.get("name"): tc.find("failure") for tc in suite.iter("testcase") if tc.find("failure") is not None}
    assert set(failures) == {"duplicate_file", "near_duplicate"} and suite.get("failures") == "2"
    assert failures["near_duplicate"].get("type") == "required-check-not-run" and "no 'phash' column" in failures["near_duplicate"].get("message")
    assert "required but did not fully run: 6 finding(s)" not in to_markdown(report) and "❌ `duplicate_file`" in to_markdown(report)
    # all: every check that runs; a complete audit passes.
    full = f.assign(file_sha256=[f"h{i}" for i in range(6)])
    assert audit(full, checks=["image_overlap", "patient_overlap", "duplicate_file"], require=["all"]).exit_code == 0
    assert len(audit(full, require=["all"]).unmet) == 7
    with pytest.raises(UsageError, match=r"unknown checks \['nope'\]; choose among image_overlap, .*temporal, or all") as err:
        audit(full, require=["nope", "temporal"])
    assert "temporal would not run" in str(err.value) and "--time-col" in str(err.value)
    with pytest.raises(UsageError, match="near_duplicate would not run: add it to --checks"):
        audit(full, checks=["image_overlap"], require=["near_duplicate"])


def test_degenerate_grouping_warns_and_the_verdict_says_so():
    from mdprep.audit import degenerate_grouping
    from mdprep.errors import MdprepWarning

    f = _plain(4, 1)
    f["patient_id"] = f["image_id"]
    with pytest.warns(MdprepWarning, match="patient_id equals image_id on every row"):
        report = audit(f)
    assert report.exit_code == 0 and report.degenerate_grouping["kind"] == "group_is_image"
    assert report.verdict.endswith("; note: degenerate grouping (patient_id equals image_id on every row), patient_overlap had nothing to compare")
    assert json.loads(report.to_json())["degenerate_grouping"]["kind"] == "group_is_image"
    assert "degenerate grouping" in _keys(report, "patient_overlap").to_dict()["caveat"]
    with pytest.warns(MdprepWarning):
        assert audit(f, require=["patient_overlap"]).exit_code == 1
    # One image per patient while a study holds two: the patient ids are per image.
    g = _plain(4, 1).assign(study_id=["S1", "S1", "S2", "S3"])
    found = degenerate_grouping(g)
    assert found["kind"] == "one_image_per_group" and found["column"] == "study_id" and "'S1' has 2 images" in found["message"]
    with pytest.warns(MdprepWarning, match="pass --group study_id"):
        assert "one image per patient_id while study_id groups images" in audit(g).verdict
    # Sound groupings, and one image per patient with nothing that would group them, are not flagged.
    assert degenerate_grouping(_plain()) is None
    assert degenerate_grouping(_plain(4, 1)) is None
    assert degenerate_grouping(_plain(4, 1).assign(study_id=["S1", "S2", "S3", None])) is None
    assert degenerate_grouping(f.iloc[:1]) is None
    assert degenerate_grouping(_plain(), "image_id")["summary"] == "the group is image_id itself"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", MdprepWarning)
        audit(_plain())
        audit(f, checks=["image_overlap"])  # no patient check, nothing to warn about


def test_cli_require_degenerate_and_verdict(runner, tmp_path):
    f = _plain(4, 1)
    f["patient_id"] = f["image_id"]
    path = tmp_path / "m.parquet"
    write_manifest(Manifest(f), path)
    res = runner.invoke(main, ["audit-leakage", str(path), "-q"])
    assert res.exit_code == 0, res.stderr
    lines = res.stderr.strip().splitlines()
    assert lines[0].startswith("Warning: degenerate grouping: patient_id equals image_id on every row (4 rows)")
    assert lines[-1] == (
        "No leakage found in 2 of 10 checks (8 skipped: no column); "
        "note: degenerate grouping (patient_id equals image_id on every row), patient_overlap had nothing to compare"
    )
    res = runner.invoke(main, ["audit-leakage", str(path), "--require", "patient_overlap", "-q"])
    assert res.exit_code == 1 and "Gate failed, 1 required check(s) did not fully run: patient_overlap (splits: degenerate grouping)" in res.stderr
    res = runner.invoke(main, ["audit-leakage", str(path), "--require", "image_overlap,near_dup", "--require", "all"])
    assert res.exit_code == 2 and res.stderr.startswith("Error: --require names unknown checks ['near_dup']; choose among image_overlap,")
    res = runner.invoke(main, ["audit-leakage", str(path), "--require", "all", "--json", str(tmp_path / "a.json"), "--junit", str(tmp_path / "a.xml")])
    assert res.exit_code == 1 and json.loads((tmp_path / "a.json").read_text())["counts"]["unmet_requirements"] == 9
    assert ET.parse(tmp_path / "a.xml").getroot().find("testsuite").get("failures") == "9"


# ----------------------------------------------------------------------------- escaping what the reports quote

HOSTILE = ["<img src=x onerror=alert(1)>", "a|b|c", "tick`code`", "**bold** [x](javascript:alert(1))", "1. list", "- item", "# head", "  indented"]


def _hostile_frame(ids) -> pd.DataFrame:
    """Every id in train and again (as a second image of the same patient) in test, so each is quoted as a finding."""
    n = len(ids)
    # object columns: a frame built in Python may hold lone surrogates, which Arrow strings refuse.
    return pd.DataFrame(
        {
            "image_id": pd.Series([*ids, *[f"{x}#2" for x in ids]], dtype=object),
            "path": [f"{i}.png" for i in range(2 * n)],
            "patient_id": pd.Series([*ids, *ids], dtype=object),
            "split": pd.Series(["train"] * n + ["test"] * n, dtype=object),
        }
    )


def test_markdown_escapes_html_pipes_and_backticks_in_ids():
    from markdown_it import MarkdownIt

    from mdprep.audit import markdown_text

    report = audit(_hostile_frame(HOSTILE), checks=["image_overlap", "patient_overlap"])
    md = to_markdown(report, examples=len(HOSTILE))
    assert "<img" not in md and "&lt;img src=x onerror=alert(1)&gt;" in md
    html = MarkdownIt("commonmark").enable("table").render(md)
    data = html.split("<tbody>")[1]  # what follows the header row: cells and findings quoting the ids
    assert "<img" not in data and "<a " not in data and "<h1>" not in data and "<ol" not in data and "<code>" in data
    assert data.count("<strong>") == 1  # the heading of the one check with findings, none from the ids
    rows = [r for r in html.split("<tr>")[2:]]
    assert len(rows) == 2 and all(r.count("<td>") == 3 for r in rows)
    items = html.split("<ul>")[1].split("</ul>")[0]
    assert items.count("<li>") == len(HOSTILE) and "<ul" not in items  # one flat item per finding
    text = MarkdownIt("commonmark").render(markdown_text("a <b>|`c`* \\ _d_ ~~e~~ $x$"))
    assert text == "<p>a &lt;b&gt;|`c`* \\ _d_ ~~e~~ $x$</p>\n"


CONTROLS = "".join(map(chr, [*range(0x20), 0x7F, 0x85, 0xFFFE, 0xFFFF, 0xD800, 0xDFFF, 0x202E]))


def test_junit_parses_with_every_control_character_in_the_ids():
    ids = [f"id{c}x" for c in CONTROLS] + ["all" + CONTROLS]
    report = audit(_hostile_frame(ids), checks=["image_overlap", "patient_overlap"])
    assert report.exit_code == 1
    xml = to_junit(report)
    root = ET.fromstring(xml.encode("utf-8"))
    failure = next(tc for tc in root.iter("testcase") if tc.get("name") == "patient_overlap").find("failure")
    assert "id\\x1bx" in failure.text and "id\\x00x" in failure.text and "id\\ud800x" in failure.text and "id\\ufffex" in failure.text
    md = to_markdown(report, examples=len(ids))
    md.encode("utf-8")
    assert not any(c in md for c in CONTROLS.replace("\n", ""))
    assert json.loads(report.to_json())["checks"][1]["findings"][0]["key"] in ids  # JSON keeps the raw id


#: Any character at all, with controls, surrogates and Markdown punctuation drawn often.
ANY_CHAR = st.one_of(st.characters(exclude_categories=()), st.characters(categories=["Cs", "Cc", "Cf"]), st.sampled_from(list("<>&|`*_[]#-1. \\")))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ids=st.lists(st.text(ANY_CHAR, min_size=1, max_size=12), min_size=1, max_size=4, unique=True),
    # Split names come from a manifest's Parquet column, which cannot hold lone surrogates (ids are
    # also tested in frames built in memory, where they can).
    split_name=st.text(st.one_of(st.characters(exclude_categories=["Cs"]), st.sampled_from(list("<>&|`*_[]#-1. \\"))), min_size=1, max_size=8),
)
def test_reports_stay_valid_for_arbitrary_ids(ids, split_name):
    f = _hostile_frame(ids)
    f["split"] = f["split"].where(f["split"] == "train", "train" + split_name)  # the split names come from data too
    report = audit(f, checks=["image_overlap", "patient_overlap"])
    root = ET.fromstring(to_junit(report).encode("utf-8"))
    assert int(root.find("testsuite").get("tests")) == 2
    md = to_markdown(report, examples=4)
    md.encode("utf-8")
    table = [line for line in md.splitlines() if line.startswith("| ")]
    # Every table row keeps its three cells: a pipe in the data is escaped.
    assert all(len(re.split(r"(?<!\\)\|", line)) == 5 for line in table)
    assert "<" not in "".join(md.split("\n", 1)[1:])


def test_cli_shows_data_with_markup_and_controls_literally(runner, tmp_path):
    f = _hostile_frame(["p[/]1\x1b[2J", "q[bold]2"])
    for name in ("train", "test"):
        write_manifest(Manifest(f[f["split"] == name].drop(columns=["split"])), tmp_path / f"{name}.parquet")
    res = runner.invoke(main, ["audit-leakage", str(tmp_path / "train.parquet"), str(tmp_path / "test.parquet"), "--names", "tr[/]ain,te[red]st"])
    assert res.exit_code == 1, res.stderr
    assert "\x1b" not in res.stderr and "  p[/]1\\x1b[2J: te[red]st / tr[/]ain, 2 row(s)" in res.stderr
    assert "2 finding(s) (te[red]st/tr[/]ain: 2" in res.stderr  # the table shows the names, not rich markup


def test_split_names_that_are_not_utf8_are_bad_usage(runner, tmp_path):
    # A command-line byte that is not UTF-8 reaches Python as a lone surrogate.
    f = _hostile_frame(["a", "b"])
    for name in ("train", "test"):
        write_manifest(Manifest(f[f["split"] == name].drop(columns=["split"])), tmp_path / f"{name}.parquet")
    res = runner.invoke(main, ["audit-leakage", str(tmp_path / "train.parquet"), str(tmp_path / "test.parquet"), "--names", "tr\udcffain,test"])
    assert res.exit_code == 2 and res.stderr.startswith("Error: --names 'tr\\udcffain' are not valid UTF-8 text")


def test_the_gate_never_passes_over_nothing(runner, leaky, tmp_path):
    """A misspelled column or an empty list is a usage error (exit 2), never "No leakage found in 0 of 0 checks"."""
    manifest, _, _ = leaky
    path = tmp_path / "m.parquet"
    write_manifest(manifest, path)
    cases = {
        ("--checks", "patient_overlap", "--group", "patientid"): "--group names 'patientid'",
        ("--fail-on", ""): "--fail-on is empty",
        ("--checks", ""): "--checks is empty",
        ("--require", ""): "--require is empty",
        ("--temporal", "--time-col", "nope"): "--time-col names 'nope'",
        ("--names", "a"): "--names names the splits of several manifests",
    }
    for args, message in cases.items():
        res = runner.invoke(main, ["audit-leakage", str(path), *args, "-q"])
        assert res.exit_code == 2 and message in res.stderr, (args, res.stderr)
    res = runner.invoke(main, ["audit-leakage", str(path), str(path), "--names", ""])
    assert res.exit_code == 2 and "--names is empty" in res.stderr
    # Findings outside --fail-on pass the gate, and the verdict says they are there.
    res = runner.invoke(main, ["audit-leakage", str(path), "--fail-on", "image_overlap", "-q"])
    assert res.exit_code == 0 and res.stderr.startswith("Gate passed with findings outside it: ") and "patient_overlap (splits)" in res.stderr
    report = audit(manifest.frame, fail_on=["image_overlap"])
    assert report.exit_code == 0 and not report.verdict.startswith("No leakage found")


def test_audit_leakage_stopped_by_bad_input_leaves_no_passing_report(runner, leaky, tmp_path):
    manifest, _, root = leaky
    frame = manifest.frame
    clean = tmp_path / "clean.parquet"
    write_manifest(Manifest(frame[~frame["path"].str.startswith("leak/")], root=str(root)), clean)
    reports = ["--json", str(tmp_path / "a.json"), "--junit", str(tmp_path / "a.xml"), "--markdown", str(tmp_path / "a.md")]
    assert runner.invoke(main, ["audit-leakage", str(clean), *reports, "-q"]).exit_code == 0
    assert json.loads((tmp_path / "a.json").read_text())["result"] == "passed"
    res = runner.invoke(main, ["audit-leakage", str(clean), *reports, "--allow", str(tmp_path / "absent.json"), "-q"])
    assert res.exit_code == 2
    doc = json.loads((tmp_path / "a.json").read_text())
    assert doc["result"] == "error" and doc["exit_code"] == 2 and "absent.json" in doc["verdict"]
    assert ET.parse(tmp_path / "a.xml").getroot().find(".//error") is not None and "passed" not in (tmp_path / "a.md").read_text()

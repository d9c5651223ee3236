from __future__ import annotations

import hashlib
import json
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest

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
    assert res.stdout == "" and "Leakage found: " in res.stderr and "patient_overlap (splits)" in res.stderr
    assert json.loads((tmp_path / "a.json").read_text())["result"] == "failed"
    ET.parse(tmp_path / "a.xml")
    # Several files, each one split; a clean pair passes.
    frame = manifest.frame
    clean = frame[~frame["path"].str.startswith("leak/")]
    for name in ("train", "test"):
        write_manifest(Manifest(clean[clean["split"] == name].drop(columns=["split"]), root=str(root)), tmp_path / f"{name}.parquet")
    res = runner.invoke(main, ["audit-leakage", str(tmp_path / "train.parquet"), str(tmp_path / "test.parquet"), "-q"])
    assert res.exit_code == 0 and res.stderr.strip().endswith("No leakage found")
    allow = tmp_path / "allow.json"
    allow.write_text(json.dumps([{"check": "patient_overlap", "key": "P000", "reason": "reviewed"}]))
    res = runner.invoke(main, ["audit-leakage", str(path), "--checks", "patient_overlap", "--allow", str(allow), "-q"])
    assert res.exit_code == 0
    allow.write_text("[{}]")
    res = runner.invoke(main, ["audit-leakage", str(path), "--allow", str(allow)])
    assert res.exit_code == 2 and "lack 'check' and 'key'" in res.stderr
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

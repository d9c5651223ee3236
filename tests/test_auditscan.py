"""The scan of large manifests (mdprep.auditscan) reports exactly what reading them reports, or leaves them to reading."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from mdprep import auditscan, textkeys
from mdprep import manifest as manifest_mod
from mdprep.cli import main
from mdprep.manifest import Manifest, write_manifest, write_table

CHECKS = "image_overlap,patient_overlap,study_overlap"
LEAN = ["image_id", "path", "patient_id", "split", "fold", "study_id", "series_uid"]


@pytest.fixture
def small(monkeypatch):
    """Scan however few rows, in batches of 50 rows and row groups of 400: every boundary is crossed."""
    monkeypatch.setattr(textkeys, "MIN_ROWS", 0)
    monkeypatch.setattr(auditscan, "BATCH_ROWS", 50)
    monkeypatch.setattr(manifest_mod, "ROW_GROUP_ROWS", 400)


def cohort(n: int = 1500, *, seed: int = 0, shuffled: bool = False, holes: bool = False, folds: bool = False) -> pd.DataFrame:
    """An NIH-like manifest: a few images per patient, a study per two images, a split by patient with planted leaks."""
    rng = np.random.default_rng(seed)
    patient = np.sort(rng.integers(0, n // 3, n))
    follow = np.arange(n) - np.searchsorted(patient, patient)
    split = np.array(["train", "val", "test"])[(patient * 7) % 10 // 4]
    moved = np.flatnonzero((follow == 1) & (patient % 9 == 0))
    split[moved] = np.where(split[moved] == "train", "test", "train")  # leaks
    frame = pd.DataFrame(
        {
            "image_id": [f"{p:08d}_{k:03d}.png" for p, k in zip(patient, follow)],
            "path": [f"images/{p:08d}_{k:03d}.png" for p, k in zip(patient, follow)],
            "patient_id": [f"{p:08d}" for p in patient],
            "study_id": [f"1.2.826.0.1.{p}.{k // 2}" for p, k in zip(patient, follow)],
            "split": split,
        }
    )
    if holes:
        frame.loc[rng.random(n) < 0.05, "study_id"] = None
        frame.loc[rng.random(n) < 0.03, "split"] = None
    if folds:
        frame["fold"] = pd.array(np.where(rng.random(n) < 0.1, None, rng.integers(0, 5, n)), dtype="Int16")
        frame["series_uid"] = frame["study_id"] + ".1"
    if shuffled:
        frame = frame.iloc[rng.permutation(n)].reset_index(drop=True)
    return frame


def audit_both(tmp_path, monkeypatch, paths, *args):
    """Run ``audit-leakage`` scanned and read; return both outcomes (exit code, output, reports) and whether it scanned."""
    outcomes, scanned = [], []
    real = auditscan.scan_for_audit
    for mode in ("scan", "read"):

        def spy(*a, **k):
            result = real(*a, **k) if mode == "scan" else None
            scanned.append(result is not None)
            return result

        monkeypatch.setattr(auditscan, "scan_for_audit", spy)
        out = tmp_path / mode
        out.mkdir()
        result = CliRunner().invoke(
            main, ["audit-leakage", *map(str, paths), *args, "--json", str(out / "r.json"), "--junit", str(out / "r.xml"), "--markdown", str(out / "r.md")]
        )
        files = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
        outcomes.append((result.exit_code, result.stdout, result.stderr, files))
    return outcomes, scanned


@pytest.mark.parametrize(
    "kind, args",
    [
        ("plain", ["--checks", CHECKS]),
        ("shuffled", ["--checks", CHECKS, "-q"]),
        ("holes", ["--checks", CHECKS, "--require", "study_overlap"]),
        ("folds", ["--checks", CHECKS + ",series_overlap"]),
        ("plain", ["--checks", "patient_overlap", "--group", "study_id", "--fail-on", "patient_overlap"]),
    ],
)
def test_scan_reports_what_reading_reports(small, tmp_path, monkeypatch, kind, args):
    frame = cohort(shuffled=kind == "shuffled", holes=kind == "holes", folds=kind == "folds")
    path = tmp_path / "m.parquet"
    write_manifest(Manifest(frame), path)
    assert pq.ParquetFile(path).num_row_groups > 1
    (scan, read), scanned = audit_both(tmp_path, monkeypatch, [path], *args)
    assert scanned == [True, False]
    assert scan == read
    assert scan[0] == 1 and json.loads(scan[3]["r.json"])["checks"]


def test_several_manifests_scanned_as_one_split_each(small, tmp_path, monkeypatch):
    frame = cohort(holes=True)
    paths = []
    for name in ("train", "val", "test"):
        part = frame[frame["split"] == name].drop(columns="split" if name == "val" else [])
        if name == "test":  # an image of train in test too
            part = part.assign(image_id=[*frame.loc[frame["split"] == "train", "image_id"][:3], *part["image_id"][3:]])
        paths.append(tmp_path / f"{name}.parquet")
        write_manifest(Manifest(part.reset_index(drop=True)), paths[-1])
    (scan, read), scanned = audit_both(tmp_path, monkeypatch, paths, "--checks", CHECKS, "--names", "a,b,c")
    assert scanned == [True, False] and scan == read
    image = [c for c in json.loads(scan[3]["r.json"])["checks"] if c["check"] == "image_overlap"][0]
    assert len(image["findings"]) == 3


def test_scan_exact_whatever_the_hash(small, tmp_path, monkeypatch):
    """A hash that puts every value of one length together: many candidates, the same report."""
    monkeypatch.setattr(textkeys, "_chunk_hash", lambda chunk: np.asarray(pa.compute.binary_length(chunk).fill_null(0), dtype=np.uint64) << np.uint64(40))
    path = tmp_path / "m.parquet"
    write_manifest(Manifest(cohort(holes=True)), path)  # ids in order: unique without their hashes
    (scan, read), scanned = audit_both(tmp_path, monkeypatch, [path], "--checks", CHECKS)
    assert scanned == [True, False] and scan == read
    # Ids out of order whose 64-bit hashes repeat may repeat: reading decides.
    write_manifest(Manifest(cohort(shuffled=True)), path)
    assert auditscan.scan_for_audit([str(path)], LEAN, split_col="split", checks=CHECKS.split(",")) is None


def _raw(path, frame: pd.DataFrame, **metadata) -> None:
    """Write ``frame`` as a manifest without the contract check (to plant what it refuses)."""
    meta = json.dumps(Manifest(frame).metadata | metadata, sort_keys=True, separators=(",", ":")).encode()
    write_table(pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata({b"mdprep": meta}), path)


@pytest.mark.parametrize(
    "plant",
    ["null_patient", "repeated_id", "repeated_id_shuffled", "degenerate", "number_study", "label_group", "no_metadata", "negative_fold"],
)
def test_what_the_scan_cannot_judge_is_left_to_reading(small, tmp_path, plant):
    frame = cohort(shuffled=plant.endswith("shuffled"))
    extra = {}
    if plant == "null_patient":
        frame.loc[7, "patient_id"] = None
    elif plant.startswith("repeated_id"):
        frame.loc[900, "image_id"] = frame.loc[5, "image_id"]
    elif plant == "degenerate":
        frame["patient_id"] = frame["image_id"]
    elif plant == "number_study":
        frame["study_id"] = np.arange(len(frame))
    elif plant == "label_group":  # a label column of text (against the contract) as the group
        frame["site"] = frame["patient_id"]
        extra = {"labels": ["site"]}
    elif plant == "negative_fold":
        frame["fold"] = pd.array([-1] + [0] * (len(frame) - 1), dtype="Int16")
    path = tmp_path / "m.parquet"
    if plant == "no_metadata":
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    else:
        _raw(path, frame, **extra)
    group = "site" if plant == "label_group" else "patient_id"
    assert auditscan.scan_for_audit([str(path)], [*LEAN, group], split_col="split", checks=CHECKS.split(","), group=group) is None
    # ...and reading says why, as it always did.
    result = CliRunner().invoke(main, ["audit-leakage", str(path), "--checks", CHECKS, "--group", group])
    assert result.exit_code == (1 if plant == "degenerate" else 2)
    assert ("degenerate grouping" if plant == "degenerate" else "Error:") in result.stderr


def test_scan_keeps_only_what_it_reports(small, tmp_path):
    path = tmp_path / "m.parquet"
    write_manifest(Manifest(cohort()), path)
    scan = auditscan.scan_for_audit([str(path)], LEAN, split_col="split", checks=CHECKS.split(","))
    patients = scan.text_columns["patient_id"]
    leaking = cohort().groupby("patient_id")["split"].nunique()
    assert set(patients.text.to_pylist()) == set(leaking[leaking > 1].index)  # no hash collision at this size
    assert scan.rows == [1500] and scan.manifests[0].frame.empty
    # Too few rows, standard input, other checks or dates: read as before.
    assert auditscan.scan_for_audit([str(path)], LEAN, split_col="split", checks=["patient_overlap"], min_rows=10**6) is None
    assert auditscan.scan_for_audit(["-"], LEAN, split_col="split", checks=["patient_overlap"]) is None
    assert auditscan.scan_for_audit([str(path)], LEAN, split_col="split", checks=["near_duplicate"]) is None
    assert not auditscan.scannable(None, None) and not auditscan.scannable(["patient_overlap"], "study_date")
    with pytest.raises(TypeError, match="value checks"):
        scan.audit_rows().partition("split", "split")


def test_grouping_sound_beyond_the_first_rows(small, tmp_path, monkeypatch):
    """No patient repeats in the first rows (rows in random order): the scan shows one that repeats, as reading does."""
    from mdprep import audit as audit_mod

    for module in (audit_mod, auditscan):
        monkeypatch.setattr(module, "HEAD_ROWS", 5)
    frame = cohort(shuffled=True, seed=3)
    assert not frame["patient_id"][:5].duplicated().any()
    path = tmp_path / "m.parquet"
    write_manifest(Manifest(frame), path)
    shown = []
    real = auditscan._Scanner._repeat_shown
    monkeypatch.setattr(auditscan._Scanner, "_repeat_shown", lambda self, *a: shown.append(real(self, *a)) or shown[-1])
    (scan, read), scanned = audit_both(tmp_path, monkeypatch, [path], "--checks", CHECKS)
    assert scanned == [True, False] and scan == read and shown == [True]
    # One image per patient while studies group them: degenerate, which reading reports.
    single = frame.assign(patient_id=frame["image_id"].str.slice(0, 12))
    write_manifest(Manifest(single), path)
    assert auditscan.scan_for_audit([str(path)], LEAN, split_col="split", checks=CHECKS.split(",")) is None
    result = CliRunner().invoke(main, ["audit-leakage", str(path), "--checks", CHECKS])
    assert "degenerate grouping" in result.stderr

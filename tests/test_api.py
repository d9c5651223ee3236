"""The Python API without surprises (issue 18): list labels, copy_index, result objects, top-level entry points."""

from __future__ import annotations

import doctest
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import mdprep
from mdprep.cli import main
from mdprep.errors import MdprepWarning
from mdprep.manifest import FORMAT_VERSION, Manifest, provenance_step, read_manifest, write_manifest

SRC = Path(__file__).resolve().parents[1] / "src"
ENTRY_POINTS = ("ingest_table", "ingest_dicom", "ingest_images", "split_manifest", "audit", "compute_weights", "resample_manifest", "pseudonymize")


def cohort(n: int = 40, seed: int = 0) -> Manifest:
    """Four images per patient, two labels (one common, one rare), no split yet."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "image_id": [f"img{k:03d}" for k in range(n)],
            "path": [f"p{k // 4:02d}/img{k:03d}.png" for k in range(n)],
            "patient_id": [f"p{k // 4:02d}" for k in range(n)],
            "Edema": pd.array((rng.random(n) < 0.4).astype(int), dtype="Int8"),
            "Mass": pd.array((np.arange(n) % 10 == 0).astype(int), dtype="Int8"),
        }
    )
    return Manifest(frame, labels=["Edema", "Mass"])


def skewed(n: int = 1000) -> Manifest:
    """One label on every row, one on 10: ML-ROS reaches MeanIR after 10 clones (1% of the rows)."""
    frame = pd.DataFrame(
        {
            "image_id": [f"i{k}" for k in range(n)],
            "path": [f"i{k}.png" for k in range(n)],
            "patient_id": [f"p{k // 2}" for k in range(n)],
            "split": "train",
            "A": pd.array(np.ones(n, dtype=int), dtype="Int8"),
            "B": pd.array((np.arange(n) < 10).astype(int), dtype="Int8"),
        }
    )
    return Manifest(frame, labels=["A", "B"])


# ----------------------------------------------------------------------------- labels are a list


def test_labels_are_a_list_that_selects_columns_and_is_never_shared(tmp_path):
    given = ["Edema", "Mass"]
    m = Manifest(cohort().frame, labels=given)
    assert m.labels == ["Edema", "Mass"] and isinstance(m.labels, list)
    assert list(m.frame[m.labels].columns) == ["Edema", "Mass"]
    given.append("Other")  # the caller's list is not the manifest's
    assert m.labels == ["Edema", "Mass"]
    assert Manifest(m.frame, labels=("Edema",)).labels == ["Edema"]  # a tuple becomes a list
    derived = m.with_step({"command": "x"})
    derived.labels.append("Mass2")  # one manifest's list is not another's
    assert m.labels == ["Edema", "Mass"] and m.with_frame(m.frame).labels is not m.labels
    write_manifest(m, tmp_path / "m.parquet")
    back = read_manifest(tmp_path / "m.parquet")
    assert back.labels == ["Edema", "Mass"] and back.frame[back.labels].shape == (40, 2)
    assert read_manifest(tmp_path / "m.parquet", columns=["image_id", "path", "patient_id", "Mass"]).labels == ["Mass"]


# ----------------------------------------------------------------------------- copy_index and the format version


def old_style(tmp_path, *, resampled: bool = True) -> Path:
    """A version 1 manifest as mdprep wrote it before copy_index: a ``copy`` column, format_version 1."""
    m = skewed(20)
    frame = m.frame.assign(source_image_id=m.frame["image_id"], copy=pd.array(np.zeros(20, dtype=np.int32), dtype="Int32"))
    step = provenance_step("resample", {"strategy": "ml-ros", "percent": 25.0}, seed=0)
    new = tmp_path / "new.parquet"
    write_manifest(Manifest(frame, labels=m.labels, history=(step,) if resampled else ()), new)
    table = pq.read_table(new)
    meta = json.loads(table.schema.metadata[b"mdprep"])
    assert meta["format_version"] == FORMAT_VERSION == 2
    meta["format_version"] = 1
    old = tmp_path / ("old.parquet" if resampled else "old-own-copy.parquet")
    pq.write_table(table.replace_schema_metadata({b"mdprep": json.dumps(meta).encode()}), old)
    return old


def test_an_old_manifest_with_copy_is_read_with_copy_index(tmp_path, runner):
    old = old_style(tmp_path)
    m = read_manifest(old)
    assert "copy_index" in m.frame.columns and "copy" not in m.frame.columns
    assert m.frame["copy_index"].tolist() == [0] * 20
    lean = read_manifest(old, columns=["image_id", "path", "patient_id", "copy_index"])
    assert list(lean.frame.columns) == ["image_id", "path", "patient_id", "copy_index"]
    # Written back, it is a version 2 file with the new name.
    write_manifest(m, tmp_path / "again.parquet")
    assert json.loads(pq.read_schema(tmp_path / "again.parquet").metadata[b"mdprep"])["format_version"] == 2
    assert "copy_index" in pq.read_schema(tmp_path / "again.parquet").names
    # The commands read it the same way: validate passes.
    res = runner.invoke(main, ["validate", str(old)])
    assert res.exit_code == 0, res.stderr
    # A copy column in a manifest never resampled is the user's own.
    own = read_manifest(old_style(tmp_path, resampled=False))
    assert "copy" in own.frame.columns and "copy_index" not in own.frame.columns


def test_a_new_manifest_with_its_own_copy_column_keeps_it(tmp_path):
    m = skewed(20)
    write_manifest(m.with_frame(m.frame.assign(copy=1)), tmp_path / "m.parquet")
    assert read_manifest(tmp_path / "m.parquet").frame["copy"].tolist() == [1] * 20
    # Asking for copy_index in a file that has none reads no other column instead.
    lean = read_manifest(tmp_path / "m.parquet", columns=["image_id", "path", "patient_id", "copy_index"])
    assert list(lean.frame.columns) == ["image_id", "path", "patient_id"]


def test_resample_writes_copy_index_and_train_leaves_clones_out_of_validation(tmp_path):
    r = mdprep.resample_manifest(skewed(100), strategy="over", target="B", seed=0)
    f = r.manifest.frame
    assert "copy" not in f.columns and f["copy_index"].max() > 0
    clones = f[f["copy_index"] > 0]
    assert (clones["image_id"] == clones["source_image_id"] + "#copy" + clones["copy_index"].astype(str)).all()
    assert f.copy_index.equals(f["copy_index"])  # reachable as an attribute, which `copy` never was
    from mdprep.crossval import plan_runs
    from mdprep.training.loop import _scored_rows

    frame = f.assign(split=np.where(np.arange(len(f)) % 5 == 0, "val", "train"))
    plan, unused = _scored_rows(frame, plan_runs(frame, split_col="split"), evaluate_test=False)
    assert not (plan.runs[0].val & (frame["copy_index"] > 0).to_numpy()).any()


# ----------------------------------------------------------------------------- result objects


def test_weights_result_pos_weight_is_the_list_bce_takes():
    m = cohort()
    result = mdprep.compute_weights(m, split="all", scheme="pos-weight")
    n_pos = (m.frame[m.labels] == 1).sum().to_numpy()
    n_neg = (m.frame[m.labels] == 0).sum().to_numpy()
    assert isinstance(result.pos_weight, list) and all(isinstance(p, float) for p in result.pos_weight)
    assert result.pos_weight == pytest.approx((n_neg / n_pos).tolist(), rel=1e-6)
    assert result.pos_weight == result.document()["pos_weight"]
    result.pos_weight.append(0.0)  # a new list each time
    assert len(result.pos_weight) == len(result.labels) == 2
    frame = result.to_frame()
    assert list(frame.index) == ["Edema", "Mass"] and frame["pos_weight"].tolist() == result.pos_weight
    assert frame["n_pos"].tolist() == n_pos.tolist()


def test_split_result_quality_is_the_quality_computed():
    split = mdprep.split_manifest(cohort(), ratios=(0.5, 0.5), seed=0)
    assert split.quality is split.split_quality and split.quality.kind == "split" and split.quality.group_overlap == 0
    folds = mdprep.split_manifest(cohort(), folds=2, seed=0)
    assert folds.quality is folds.fold_quality and folds.quality.kind == "fold"


def test_audit_exit_code_is_the_cli_exit_code_and_findings_are_a_frame(tmp_path, runner):
    leaky = cohort().frame.assign(split=np.where(np.arange(40) % 3 == 0, "test", "train"))
    report = mdprep.audit(leaky, checks=["patient_overlap", "image_overlap"])
    assert report.exit_code == 1
    findings = report.findings_frame()
    assert list(findings.columns) == ["check", "partition", "verdict", "key", "splits", "rows", "image_ids", "detail", "allowed"]
    assert len(findings) == sum(len(c.findings) for c in report.checks) > 0
    assert set(findings["check"]) == {"patient_overlap"} and set(findings["verdict"]) == {"failed"}
    allowed = mdprep.audit(leaky, checks=["patient_overlap"], allow=[{"check": "patient_overlap", "key": findings["key"][0]}])
    assert len(allowed.findings_frame(blocking_only=True)) == len(findings) - 1
    clean = mdprep.audit(mdprep.split_manifest(cohort(), ratios=(0.5, 0.5), seed=0).manifest, checks=["patient_overlap"])
    assert clean.exit_code == 0 and clean.findings_frame().empty
    assert list(clean.findings_frame().columns) == list(findings.columns)
    for frame, code in ((leaky, 1), (mdprep.split_manifest(cohort(), ratios=(0.5, 0.5), seed=0).manifest.frame, 0)):
        path = tmp_path / f"m{code}.parquet"
        write_manifest(Manifest(frame, labels=["Edema", "Mass"]), path)
        res = runner.invoke(main, ["audit-leakage", str(path), "--checks", "patient_overlap,image_overlap", "-q"])
        assert res.exit_code == code == mdprep.audit(read_manifest(path), checks=["patient_overlap", "image_overlap"]).exit_code, res.stderr


# ----------------------------------------------------------------------------- ml-ros stopping short


def test_ml_ros_that_stops_short_says_so_and_records_it(tmp_path, runner):
    with pytest.warns(MdprepWarning, match=r"ml-ros stopped short: 10 of the 50 rows asked cloned .*1% reached; no label is left above"):
        r = mdprep.resample_manifest(skewed(), strategy="ml-ros", percent=5, seed=0)
    assert r.stopped_short and r.percent_reached == 1.0 and r.stop_reason == "no label is left above the mean imbalance ratio (MeanIR 50.50)"
    assert r.manifest.history[-1]["stopped_short"] == {"percent_reached": 1.0, "reason": r.stop_reason}
    path = tmp_path / "m.parquet"
    write_manifest(skewed(), path)
    res = runner.invoke(main, ["resample", str(path), "--strategy", "ml-ros", "--percent", "5", "-o", str(tmp_path / "o.parquet"), "-q"])
    assert res.exit_code == 0, res.stderr
    assert "Warning: ml-ros stopped short" in res.stderr and "1% reached" in res.stderr and "mean imbalance ratio" in res.stderr
    assert read_manifest(tmp_path / "o.parquet").history[-1]["stopped_short"]["percent_reached"] == 1.0


def test_ml_ros_that_reaches_percent_is_silent_and_keeps_its_bytes(tmp_path, runner, recwarn):
    m = skewed()
    r = mdprep.resample_manifest(m, strategy="ml-ros", percent=0.5, seed=0)
    assert not r.stopped_short and r.stop_reason is None and r.percent_reached == 0.5
    assert set(r.manifest.history[-1]) == set(provenance_step("resample", {}))
    assert not [w for w in recwarn if issubclass(w.category, MdprepWarning)]
    path = tmp_path / "m.parquet"
    write_manifest(m, path)
    outs = []
    for name in ("a", "b"):
        res = runner.invoke(main, ["resample", str(path), "--strategy", "ml-ros", "--percent", "0.5", "-o", str(tmp_path / f"{name}.parquet"), "-q"])
        assert res.exit_code == 0 and "stopped short" not in res.stderr, res.stderr
        outs.append((tmp_path / f"{name}.parquet").read_bytes())
    assert outs[0] == outs[1]
    assert "stopped_short" not in json.loads(pq.read_schema(tmp_path / "a.parquet").metadata[b"mdprep"])["history"][-1]
    assert mdprep.resample_manifest(m, strategy="patient-cap", cap=1).percent_reached is None


# ----------------------------------------------------------------------------- import mdprep


def test_entry_points_are_the_library_functions_and_import_stays_light():
    from mdprep import audit as audit_module
    from mdprep.ingest import dicom, tables
    from mdprep import pseudonyms, resample, splitting, weights

    assert mdprep.ingest_table is tables.ingest_table and mdprep.ingest_dicom is dicom.ingest_dicom
    assert mdprep.split_manifest is splitting.split_manifest and mdprep.compute_weights is weights.compute_weights
    assert mdprep.resample_manifest is resample.resample_manifest and mdprep.pseudonymize is pseudonyms.pseudonymize
    # mdprep.audit is the module, and calling it is calling its audit function.
    frame = cohort().frame.assign(split="train")
    assert mdprep.audit is audit_module and mdprep.audit(frame).to_dict() == audit_module.audit(frame).to_dict()
    assert set(ENTRY_POINTS) <= set(mdprep.__all__) and set(ENTRY_POINTS) <= set(dir(mdprep))
    probe = "import sys, mdprep; mdprep.__all__; dir(mdprep); print(sorted({'pandas', 'numpy', 'pyarrow'} & set(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_entry_point_docstrings_are_numpydoc_with_examples_that_run(name, tmp_path, monkeypatch):
    fn = mdprep.audit.audit if name == "audit" else getattr(mdprep, name)
    doc = fn.__doc__
    for section in ("Parameters\n", "Returns\n", "Raises\n", "Examples\n"):
        assert f"    {section}" in doc, (name, section)
    monkeypatch.chdir(tmp_path)
    tests = doctest.DocTestFinder(recurse=False).find(fn, name, globs=dict(vars(sys.modules[fn.__module__])))
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted >= 2 and result.failed == 0

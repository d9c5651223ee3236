"""The manifest level: what one row is (image, series, volume), kept in the metadata and refused by the 2D trainer."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from mdprep.cli import main
from mdprep.errors import InputError
from mdprep.manifest import Manifest, inspect_manifest, read_manifest, write_manifest
from mdprep.synthetic import write_nifti_tree


def _frame() -> pd.DataFrame:
    return pd.DataFrame({"image_id": ["a", "b"], "path": ["a", "b"], "patient_id": ["p1", "p2"]})


def _meta(path) -> dict:
    return json.loads(pq.read_schema(path).metadata[b"mdprep"])


def test_image_level_writes_no_key_and_series_round_trips(tmp_path):
    write_manifest(Manifest(_frame()), tmp_path / "i.parquet")
    assert "level" not in _meta(tmp_path / "i.parquet")  # image manifests keep their bytes
    assert read_manifest(tmp_path / "i.parquet").level == "image"
    write_manifest(Manifest(_frame(), level="series"), tmp_path / "s.parquet")
    assert _meta(tmp_path / "s.parquet")["level"] == "series"
    assert read_manifest(tmp_path / "s.parquet").level == "series"


def test_unknown_level_is_a_metadata_violation(tmp_path):
    path = tmp_path / "m.parquet"
    write_manifest(Manifest(_frame(), level="series"), path)
    table = pq.read_table(path)
    meta = _meta(path) | {"level": "slab"}
    pq.write_table(table.replace_schema_metadata({b"mdprep": json.dumps(meta).encode()}), path)
    with pytest.raises(InputError, match="metadata 'level' must be one of 'image', 'series', 'volume', found 'slab'"):
        read_manifest(path)
    assert [v.check for v in inspect_manifest(path)[1]] == ["metadata"]


def test_split_keeps_the_level_and_train_refuses_volumes(tmp_path):
    tree = write_nifti_tree(tmp_path / "vol", patients=4)
    runner = CliRunner()
    m, s = tmp_path / "m.parquet", tmp_path / "s.parquet"
    res = runner.invoke(main, ["ingest", "images", tree.root, "--patient-regex", r"(?P<patient>P\d+)/(?P<study>study\d+)/", "-o", str(m), "-q"])
    assert res.exit_code == 0, res.output
    assert read_manifest(m).level == "volume"
    res = runner.invoke(main, ["split", str(m), "--ratios", "0.5,0.5", "--names", "train,val", "-o", str(s), "-q"])
    assert res.exit_code == 0, res.output
    assert read_manifest(s).level == "volume"
    res = runner.invoke(main, ["train", str(s), "-o", str(tmp_path / "run"), "--epochs", "1", "-q"])
    assert res.exit_code == 2, res.output
    assert "Error: mdprep train is 2D and this manifest is volume-level" in res.output
    assert "mdprep export monai" in res.output
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_series_level_ingest_is_series_and_train_refuses_it(tmp_path):
    from mdprep.synthetic import write_ct_tree

    tree = write_ct_tree(tmp_path / "ct", patients=4, slices=6, shape=(8, 8), plant_problems=False)
    runner = CliRunner()
    m, s = tmp_path / "m.parquet", tmp_path / "s.parquet"
    res = runner.invoke(main, ["ingest", "dicom", tree.root, "--level", "series", "-o", str(m), "-q"])
    assert res.exit_code == 0, res.output
    manifest = read_manifest(m)
    assert manifest.level == "series" and len(manifest.frame) == 4
    res = runner.invoke(main, ["ingest", "dicom", tree.root, "-o", str(tmp_path / "i.parquet"), "-q"])
    assert read_manifest(tmp_path / "i.parquet").level == "image"
    res = runner.invoke(main, ["split", str(m), "--ratios", "0.5,0.5", "--names", "train,val", "-o", str(s), "-q"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["train", str(s), "-o", str(tmp_path / "run"), "--epochs", "1", "-q"])
    assert res.exit_code == 2 and "this manifest is series-level (one row per DICOM series)" in res.output

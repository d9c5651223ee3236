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

"""Incremental updates (mdprep.incremental): --update re-reads only new and changed files, and gives a full run's bytes."""

from __future__ import annotations

import os
import shutil
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mdprep.cli import main
from mdprep.incremental import RACY_NS, racy_stamps, read_signatures, signatures_path
from mdprep.ingest import ingest_dicom
from mdprep.pseudonyms import write_key_file
from mdprep.synthetic import write_dicom_tree, write_image_tree

REGEX = r"(?P<patient>patient\d+)/(?P<study>study\d+)/"
DAY_AGO = time.time() - 86400


def _age(root: Path) -> None:
    """Set every file's modification time a day back: files that have been there a while."""
    for folder, _, names in os.walk(root):
        for name in names:
            os.utime(os.path.join(folder, name), (DAY_AGO, DAY_AGO))


def _ok(res):
    assert res.exit_code == 0, res.stderr
    return res


def _counting(monkeypatch, module, name: str) -> list:
    """Record every path the reader ``module.name`` is given (the commands run with --workers 1, in this process)."""
    seen: list = []
    real = getattr(module, name)

    def wrapper(paths, *args, **kwargs):
        if isinstance(paths, (list, tuple)):
            seen.extend(paths)
        else:
            seen.append(paths)
        return real(paths, *args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return seen


def _rewrite_dicom(path: Path, **attributes) -> None:
    import pydicom

    ds = pydicom.dcmread(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pydicom warns of the unparsable age planted on purpose
        for key, value in attributes.items():
            if value is None:
                delattr(ds, key)
            else:
                setattr(ds, key, value)
        ds.save_as(path, enforce_file_format=True)


@pytest.fixture
def dicom_root(tmp_path):
    root = tmp_path / "dicom"
    write_dicom_tree(root, patients=4, images_per_patient=3, shape=(8, 8), plant_bad_files=True)
    _rewrite_dicom(root / "PAT00003/study0/img000.dcm", PatientAge="XYZ")  # a value that does not parse: counted
    _age(root)
    return root


def test_dicom_update_reads_only_what_changed_and_writes_a_full_runs_bytes(runner, dicom_root, tmp_path, monkeypatch):
    import mdprep.ingest.dicom as dicom

    old, new, full = tmp_path / "old.parquet", tmp_path / "new.parquet", tmp_path / "full.parquet"
    plain = tmp_path / "plain.parquet"
    _ok(runner.invoke(main, ["ingest", "dicom", str(dicom_root), "-o", str(old), "--record-signatures", "--workers", "1", "-q"]))
    _ok(runner.invoke(main, ["ingest", "dicom", str(dicom_root), "-o", str(plain), "--workers", "1", "-q"]))
    assert old.read_bytes() == plain.read_bytes()  # the signatures live beside the manifest, never in it
    assert os.path.exists(signatures_path(old)) and not os.path.exists(signatures_path(plain))

    shutil.copy(dicom_root / "PAT00000/study0/img000.dcm", dicom_root / "PAT00000/study0/img009.dcm")  # new
    _rewrite_dicom(dicom_root / "PAT00001/study0/img001.dcm", ViewPosition="LATERAL")  # changed: content and time
    os.remove(dicom_root / "PAT00002/study0/img000.dcm")  # removed
    read = _counting(monkeypatch, dicom, "read_headers")
    res = _ok(runner.invoke(main, ["ingest", "dicom", str(dicom_root), "--update", str(old), "-o", str(new), "--errors", str(tmp_path / "e.csv"), "--workers", "1"]))
    assert sorted(os.path.relpath(p, dicom_root) for p in read) == ["PAT00000/study0/img009.dcm", "PAT00001/study0/img001.dcm"]
    assert "Update: 1 new, 1 changed, 1 removed, 20 unchanged (reused); 2 file(s) read" in res.stderr
    full_res = _ok(runner.invoke(main, ["ingest", "dicom", str(dicom_root), "-o", str(full), "--errors", str(tmp_path / "f.csv"), "--workers", "1"]))
    assert new.read_bytes() == full.read_bytes()
    assert (tmp_path / "e.csv").read_bytes() == (tmp_path / "f.csv").read_bytes()  # error rows of unread files kept
    # The summary reconciles as a full run's does, warnings on unparsed values included.
    found_line = next(line for line in full_res.stderr.splitlines() if " found = " in line)
    assert found_line in res.stderr and "1 value(s) of 'age' did not parse" in res.stderr
    meta, files = read_signatures(new)
    assert meta["update"] == {"new": 1, "changed": 1, "removed": 1, "unchanged": 20, "reread": 0}
    assert len(files) == 22 and "PAT00002/study0/img000.dcm" not in files.column("path").to_pylist()

    # Nothing changed since: the next update reads only the files touched just now (too recent to trust their times).
    read.clear()
    res = _ok(runner.invoke(main, ["ingest", "dicom", str(dicom_root), "--update", str(new), "-o", str(tmp_path / "again.parquet"), "--workers", "1"]))
    assert "0 new, 0 changed, 0 removed, 20 unchanged (reused); 2 with the same signature read again" in res.stderr
    assert len(read) == 2 and (tmp_path / "again.parquet").read_bytes() == full.read_bytes()


def test_update_borrows_patient_ids_again_over_the_whole_tree(dicom_root, tmp_path):
    """--missing-patient study: a reused file that borrowed its study's PatientID must not keep it once the study changed."""
    from mdprep.incremental import write_signatures
    from mdprep.manifest import write_manifest

    shutil.copy(dicom_root / "PAT00000/study0/img000.dcm", dicom_root / "PAT00000/study0/anon.dcm")
    _rewrite_dicom(dicom_root / "PAT00000/study0/anon.dcm", PatientID=None, SOPInstanceUID="2.25.1234")
    _age(dicom_root)
    first = ingest_dicom(dicom_root, missing_patient="study", workers=1, record_signatures=True)
    frame = first.manifest.frame.set_index("path")
    assert frame.loc["PAT00000/study0/anon.dcm", "patient_id"] == "PAT00000"
    write_manifest(first.manifest, tmp_path / "old.parquet")
    write_signatures(first.signatures, tmp_path / "old.parquet")
    # Another file of the study now names another patient: the study has two PatientIDs, borrowing stops.
    _rewrite_dicom(dicom_root / "PAT00000/study0/img001.dcm", PatientID="PATOTHER")
    update = ingest_dicom(dicom_root, missing_patient="study", workers=1, update=tmp_path / "old.parquet")
    full = ingest_dicom(dicom_root, missing_patient="study", workers=1)
    assert update.report.update.changed == 1 and update.report.update.read == 1
    assert update.manifest.frame.set_index("path").loc["PAT00000/study0/anon.dcm", "patient_id"].startswith("study:")
    write_manifest(update.manifest, tmp_path / "u.parquet")
    write_manifest(full.manifest, tmp_path / "f.parquet")
    assert (tmp_path / "u.parquet").read_bytes() == (tmp_path / "f.parquet").read_bytes()
    assert update.report.notes == full.report.notes


def test_images_and_hash_updates_read_only_changed_files(runner, tmp_path, monkeypatch):
    import mdprep.hashing as hashing
    import mdprep.ingest.images as images

    root = tmp_path / "images"
    write_image_tree(root, patients=4, studies=2, shape=(12, 10), plant_bad_files=True)
    _age(root)
    v1, v2, full = (tmp_path / f"{n}.parquet" for n in ("v1", "v2", "full"))
    h1, h2, hfull = (tmp_path / f"{n}.parquet" for n in ("h1", "h2", "hfull"))
    base = ["ingest", "images", str(root), "--patient-regex", REGEX, "--workers", "1", "-q"]
    _ok(runner.invoke(main, [*base, "-o", str(v1), "--record-signatures"]))
    _ok(runner.invoke(main, ["hash", str(v1), "-o", str(h1), "--record-signatures", "--workers", "1", "-q"]))

    (root / "patient00004/study1").mkdir(parents=True)
    Image.fromarray(np.full((10, 12), 7, np.uint8), mode="L").save(root / "patient00004/study1/view1_frontal.png")  # new
    Image.fromarray(np.full((14, 10), 200, np.uint8), mode="L").save(root / "patient00001/study1/view1_frontal.png")  # changed
    os.remove(root / "patient00002/study2/view1_frontal.png")  # removed
    read = _counting(monkeypatch, images, "_read_image_headers")
    res = _ok(runner.invoke(main, [*base[:-1], "-o", str(v2), "--update", str(v1)]))
    assert sorted(read) == ["patient00001/study1/view1_frontal.png", "patient00004/study1/view1_frontal.png"]
    # 13 images were read the first time: 12 rows and the corrupt PNG, whose error row is reused too.
    assert "Update: 1 new, 1 changed, 1 removed, 11 unchanged (reused); 2 file(s) read" in res.stderr
    _ok(runner.invoke(main, [*base, "-o", str(full)]))
    assert v2.read_bytes() == full.read_bytes()

    hashed = _counting(monkeypatch, hashing, "hash_image")
    res = _ok(runner.invoke(main, ["hash", str(v2), "-o", str(h2), "--update", str(h1), "--workers", "1"]))
    assert sorted(os.path.relpath(p, root) for p in hashed) == ["patient00001/study1/view1_frontal.png", "patient00004/study1/view1_frontal.png"]
    assert "Update: 1 new, 1 changed, 1 removed, 10 unchanged (reused); 2 file(s) read" in res.stderr
    _ok(runner.invoke(main, ["hash", str(v2), "-o", str(hfull), "--workers", "1", "-q"]))
    assert h2.read_bytes() == hfull.read_bytes()
    assert read_signatures(h2)[0]["command"] == "hash"


def test_hash_update_hashes_again_the_files_that_failed(runner, tmp_path):
    root = tmp_path / "images"
    write_image_tree(root, patients=2, studies=1, shape=(8, 8))
    _age(root)
    m = tmp_path / "m.parquet"
    _ok(runner.invoke(main, ["ingest", "images", str(root), "--patient-regex", REGEX, "-o", str(m), "-q", "--workers", "1"]))
    bad = root / "patient00000/study1/view1_frontal.png"
    good = bad.read_bytes()
    bad.write_bytes(good[:40] + bytes(len(good) - 40))  # the same size, pixel data zeroed: the hash fails
    os.utime(bad, (DAY_AGO, DAY_AGO))
    _ok(runner.invoke(main, ["hash", str(m), "-o", str(tmp_path / "h1.parquet"), "--record-signatures", "--workers", "1", "-q"]))
    bad.write_bytes(good)  # repaired, and given back its old time: only a retry can see it
    os.utime(bad, (DAY_AGO, DAY_AGO))
    res = _ok(runner.invoke(main, ["hash", str(m), "-o", str(tmp_path / "h2.parquet"), "--update", str(tmp_path / "h1.parquet"), "--workers", "1"]))
    assert "1 with the same signature read again" in res.stderr and "3 images = 3 hashed + 0 failed" in res.stderr


def test_a_file_modified_close_to_the_listing_is_read_again():
    now = time.time_ns()
    stamps = [str(now - 10 * RACY_NS), str(now - RACY_NS // 2), str(now + RACY_NS), "", "etag-1"]
    assert racy_stamps(stamps, now).tolist() == [False, True, True, False, False]


def test_update_refuses_what_it_cannot_update(runner, dicom_root, tmp_path):
    old = tmp_path / "old.parquet"
    out = str(tmp_path / "out.parquet")
    _ok(runner.invoke(main, ["ingest", "dicom", str(dicom_root), "-o", str(old), "--record-signatures", "-q", "--workers", "1"]))

    def refused(*args, input=None):
        res = runner.invoke(main, list(args), input=input)
        assert res.exit_code == 2, res.stderr
        assert res.stderr.startswith("Error: ") and "Traceback" not in res.stderr
        return res.stderr

    update = ["ingest", "dicom", str(dicom_root), "--update", str(old), "-q"]
    err = refused(*update, "-o", out, "--tags", "KVP", "--missing-patient", "study")
    assert "other options than this run: --missing-patient 'error' (this run: 'study'); --tags none (this run: KVP)" in err
    assert "other root" not in err and "leave out --update for a full run" in err
    err = refused("ingest", "dicom", str(dicom_root / "PAT00000"), "--update", str(old), "-o", out)
    assert f"was made from the root '{dicom_root}', not '{dicom_root / 'PAT00000'}'" in err
    err = refused("ingest", "images", str(dicom_root), "--patient-regex", "(?P<patient>PAT\\d+)/", "--update", str(old), "-o", out)
    assert "was made by `mdprep ingest dicom`, not `mdprep ingest images`" in err
    err = refused(*update, "-o", "-")
    assert "give -o a file, not '-'" in err
    err = refused(*update, "-o", out, "--pseudonymize")
    assert "update the raw manifest, then pseudonymise the result" in err
    err = refused(*update, "-o", str(old))
    assert "mdprep never writes over its inputs" in err

    plain = tmp_path / "plain.parquet"
    _ok(runner.invoke(main, ["ingest", "dicom", str(dicom_root), "-o", str(plain), "-q", "--workers", "1"]))
    err = refused("ingest", "dicom", str(dicom_root), "--update", str(plain), "-o", out)
    assert "has no signatures file" in err and f"mdprep ingest dicom ROOT -o {plain} --record-signatures" in err
    # Signatures are paired with the manifest's bytes: those of a manifest with the same bytes fit, others never do.
    shutil.copy(signatures_path(old), signatures_path(plain))
    _ok(runner.invoke(main, ["ingest", "dicom", str(dicom_root), "--update", str(plain), "-o", out, "-q"]))
    _ok(runner.invoke(main, ["ingest", "dicom", str(dicom_root), "-o", str(plain), "--tags", "KVP", "-q", "--workers", "1"]))
    err = refused("ingest", "dicom", str(dicom_root), "--update", str(plain), "-o", out)
    assert "was recorded for another version of" in err
    # Pseudonymised paths name no file, and signatures would date the acquisitions.
    key = tmp_path / "site.key"
    write_key_file(key)
    pseudo = tmp_path / "pseudo.parquet"
    _ok(runner.invoke(main, ["pseudonymize", str(old), "-o", str(pseudo), "--key-file", str(key), "-q"]))
    shutil.copy(signatures_path(old), signatures_path(pseudo))
    err = refused("ingest", "dicom", str(dicom_root), "--update", str(pseudo), "-o", out)
    assert "was pseudonymised" in err
    err = refused("hash", str(pseudo), "-o", out, "--record-signatures", "--root", str(dicom_root))
    assert "must not carry" in err
    err = refused("hash", str(old), "-o", out, "--update", str(old))
    assert "was made by `mdprep ingest dicom`, not `mdprep hash`" in err


def test_hash_update_refuses_other_options(runner, tmp_path):
    root = tmp_path / "images"
    write_image_tree(root, patients=1, studies=1, shape=(8, 8))
    m, h = tmp_path / "m.parquet", tmp_path / "h.parquet"
    _ok(runner.invoke(main, ["ingest", "images", str(root), "--patient-regex", REGEX, "-o", str(m), "-q", "--workers", "1"]))
    _ok(runner.invoke(main, ["hash", str(m), "-o", str(h), "--record-signatures", "-q", "--workers", "1"]))
    res = runner.invoke(main, ["hash", str(m), "-o", str(tmp_path / "h2.parquet"), "--update", str(h), "--max-bytes", "1M"])
    assert res.exit_code == 2 and "--max-bytes 2147483648 (this run: 1048576)" in res.stderr


def test_images_update_with_another_pattern_is_refused(runner, tmp_path):
    root = tmp_path / "images"
    write_image_tree(root, patients=1, studies=1, shape=(8, 8))
    old = tmp_path / "old.parquet"
    _ok(runner.invoke(main, ["ingest", "images", str(root), "--patient-regex", REGEX, "-o", str(old), "-q", "--record-signatures"]))
    res = runner.invoke(main, ["ingest", "images", str(root), "--patient-regex", r"(?P<patient>patient\d+)/", "-o", str(tmp_path / "n.parquet"), "--update", str(old)])
    assert res.exit_code == 2 and "--patient-regex" in res.stderr and "(this run: '(?P<patient>patient\\\\d+)/')" in res.stderr
    assert not (tmp_path / "n.parquet").exists() and not os.path.exists(signatures_path(tmp_path / "n.parquet"))


def test_update_of_a_file_list_reads_the_files_added_to_the_list(dicom_root, tmp_path):
    from mdprep.incremental import write_signatures
    from mdprep.manifest import write_manifest

    listed = ["PAT00000/study0/img000.dcm", "zz_bad/README.txt"]
    first = ingest_dicom(dicom_root, files=listed, workers=1, record_signatures=True)
    write_manifest(first.manifest, tmp_path / "old.parquet")
    write_signatures(first.signatures, tmp_path / "old.parquet")
    more = [*listed[:1], "PAT00001/study0/img000.dcm", "zz_bad/README.txt"]
    update = ingest_dicom(dicom_root, files=more, workers=1, update=tmp_path / "old.parquet")
    full = ingest_dicom(dicom_root, files=more, workers=1)
    assert update.report.update.as_dict() == {"new": 1, "changed": 0, "removed": 0, "unchanged": 2, "reread": 0}
    assert update.report == replace(full.report, update=update.report.update)  # the skipped README still counted
    write_manifest(update.manifest, tmp_path / "u.parquet")
    write_manifest(full.manifest, tmp_path / "f.parquet")
    assert (tmp_path / "u.parquet").read_bytes() == (tmp_path / "f.parquet").read_bytes()

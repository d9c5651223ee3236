"""NIfTI volumes: ``ingest images`` reads their headers, ``hash`` their voxels, the audit finds their copies.

Every volume is written here (:func:`mdprep.synthetic.write_nifti_tree`): CT-like
int16 volumes stored LPS or RAS, a 4-D file, copies of one volume re-oriented,
re-saved as float32 (not compressed) and re-scaled with scl_slope, and damaged files.
"""

from __future__ import annotations

import gzip
import os
import shutil
import sys
import time

import nibabel as nib
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mdprep import nifti
from mdprep.cli import main
from mdprep.errors import UsageError
from mdprep.hashing import hash_manifest, pixel_digest
from mdprep.incremental import read_signatures
from mdprep.ingest import ingest_images
from mdprep.manifest import read_manifest, write_manifest
from mdprep.synthetic import write_image_tree, write_nifti_tree

REGEX = r"(?P<patient>[PCD]\d+)/(?P<study>study\d+)/"
SOURCE = "P0000/study0/ct.nii.gz"
COPIES = ["C0000/study0/reoriented.nii.gz", "C0001/study0/float32.nii", "C0002/study0/scaled.nii.gz"]


def _ok(res):
    assert res.exit_code == 0, res.stderr
    return res


def _bits(a: int, b: int) -> int:
    return bin(int(a) ^ int(b)).count("1")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("volumes")
    planted = write_nifti_tree(root, patients=4, copies=True, damaged=True, frames=2)
    (root / "README.txt").write_text("CT volumes\n")
    return planted


@pytest.fixture(scope="module")
def hashed(tree):
    """The volumes' manifest, hashed with one worker."""
    manifest = ingest_images(tree.root, patient_regex=REGEX, workers=1).manifest
    result = hash_manifest(manifest, workers=1)
    assert result.failed == 0
    return result.manifest.frame.set_index("path")


def test_one_row_per_volume_with_its_header_columns(tree, tmp_path):
    r = ingest_images(tree.root, patient_regex=REGEX, workers=1)
    good = tree.of_kind("volume") + tree.of_kind("copy")
    assert (r.report.found, r.report.ingested, r.report.skipped, r.report.failed) == (13, 8, 1, 4) and r.report.reconciles
    assert sorted(r.manifest.frame["path"]) == sorted(good)
    f = r.manifest.frame.set_index("path")
    cols = ["width", "height", "depth", "frames", "orientation", "axis_codes", "datatype", "format"]
    assert f.loc[SOURCE, cols].tolist() == [20, 24, 16, 1, "axial", "LPS", "int16", "NIfTI-1"]
    assert f.loc["P0001/study0/ct.nii.gz", cols].tolist() == [20, 24, 16, 1, "axial", "RAS", "int16", "NIfTI-1"]
    assert f.loc["P0000/study1/perfusion.nii", cols].tolist() == [20, 24, 16, 2, "axial", "LPS", "int16", "NIfTI-1"]
    assert f.loc[COPIES[0], cols].tolist() == [16, 20, 24, 1, "coronal", "SLA", "int16", "NIfTI-1"]  # stored on S, L, A
    assert f.loc[COPIES[1], "datatype"] == "float32"
    assert list(f.loc[SOURCE, "voxel_spacing"]) == [0.8, 0.8, 2.5] and list(f.loc[COPIES[0], "voxel_spacing"]) == [2.5, 0.8, 0.8]
    assert f.loc[SOURCE, "study_id"] == "P0000/study0"
    write_manifest(r.manifest, tmp_path / "m.parquet")
    schema = pq.read_schema(tmp_path / "m.parquet")
    assert schema.field("voxel_spacing").type == pa.list_(pa.float64()) and schema.field("depth").type == pa.int32()
    errors = r.errors.set_index("path")
    for path in tree.of_kind("damaged"):
        assert errors.loc[path, "error_type"] == tree.volumes[path]["error"], path
    assert errors.loc["D0000/study0/cut.nii", "message"] == "the NIfTI-1 voxel data run to byte 15,712 but the file ends at 9,427"
    assert "the gzip stream ends after" in errors.loc["D0001/study0/cut.nii.gz", "message"]
    assert "before the end of the voxel data at byte 15,712" in errors.loc["D0001/study0/cut.nii.gz", "message"]
    assert "(sizeof_hdr) give 544501614, not 348 (NIfTI-1) or 540 (NIfTI-2)" in errors.loc["D0002/study0/notes.nii", "message"]
    assert "a .hdr/.img pair" in errors.loc["D0003/study0/pair.nii", "message"]
    assert errors.loc["README.txt", ["outcome", "error_type", "message"]].tolist() == ["skipped", "NotImage", "not one of .nii, .nii.gz"]


def test_ingest_and_hash_are_byte_identical_across_runs_and_workers(tree, runner, tmp_path):
    out = {}
    for name, workers in (("a", "1"), ("b", "1"), ("c", "2")):
        m, h = tmp_path / f"{name}.parquet", tmp_path / f"{name}-h.parquet"
        _ok(runner.invoke(main, ["ingest", "images", tree.root, "--patient-regex", REGEX, "-o", str(m), "--workers", workers, "-q"]))
        _ok(runner.invoke(main, ["hash", str(m), "-o", str(h), "--workers", workers, "-q"]))
        out[name] = (m.read_bytes(), h.read_bytes())
    assert out["a"] == out["b"] == out["c"]


def test_a_small_volume_cut_short_or_gzip_and_not_is_told_by_its_bytes(tmp_path):
    root = tmp_path / "v"
    planted = write_nifti_tree(root, patients=1)
    src = root / SOURCE
    # A .nii.gz that is not compressed, a .nii that is, and a file of two gzip members: all read.
    (root / "P0001/study0").mkdir(parents=True)
    (root / "P0001/study0/plain.nii.gz").write_bytes(gzip.decompress(src.read_bytes()))
    shutil.copy(src, root / "P0001/study0/packed.nii")
    raw = gzip.decompress(src.read_bytes())
    (root / "P0001/study0/members.nii.gz").write_bytes(gzip.compress(raw[:1000], mtime=0) + gzip.compress(raw[1000:], mtime=0))
    (root / "P0001/study0/empty.nii").write_bytes(b"")
    (root / "P0001/study0/header.nii").write_bytes(raw[:200])
    r = ingest_images(root, patient_regex=REGEX, workers=1)
    assert sorted(r.manifest.frame["path"]) == sorted([SOURCE, "P0001/study0/plain.nii.gz", "P0001/study0/packed.nii", "P0001/study0/members.nii.gz"])
    assert r.errors.set_index("path")["message"].to_dict() == {
        "P0001/study0/empty.nii": "an empty file",
        "P0001/study0/header.nii": "the file ends at byte 200, inside its 348-byte NIfTI-1 header",
    }
    h = hash_manifest(r.manifest, workers=1).manifest.frame
    assert h["pixel_sha256"].nunique() == 1 and h["phash"].nunique() == 1 and h["file_sha256"].nunique() == 3  # packed.nii is a copy of the source
    assert planted.files == 1


def test_mixed_tree_is_refused_and_a_file_list_ingests_each_kind(tmp_path, runner):
    root = tmp_path / "mixed"
    write_image_tree(root, patients=2, studies=1, shape=(8, 8))
    write_nifti_tree(root / "patient00009", patients=1)
    out = str(tmp_path / "m.parquet")
    regex = r"(?P<patient>patient\d+)/"
    res = runner.invoke(main, ["ingest", "images", str(root), "--patient-regex", regex, "-o", out])
    assert res.exit_code == 2 and not os.path.exists(out)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "holds 2D images (" in lines[0] and "NIfTI volumes ('patient00009/P0000/study0/ct.nii.gz')" in lines[0]
    assert "--files-from" in lines[0] and "find . -iname '*.nii' -o -iname '*.nii.gz'" in lines[0]
    # What the message says to do works: one manifest of volumes, one of images.
    (tmp_path / "volumes.txt").write_text("./patient00009/P0000/study0/ct.nii.gz\n")
    images = sorted(os.path.relpath(os.path.join(d, n), root) for d, _, names in os.walk(root) for n in names if not n.endswith(".nii.gz"))
    (tmp_path / "images.txt").write_text("".join(f"./{p}\n" for p in images))
    for kind, rows in (("volumes", 1), ("images", len(images))):
        _ok(runner.invoke(main, ["ingest", "images", str(root), "--patient-regex", regex, "-o", out, "--files-from", str(tmp_path / f"{kind}.txt"), "-q"]))
        assert len(read_manifest(out).frame) == rows


def test_without_nibabel_volumes_are_refused_with_the_install_hint(tree, runner, tmp_path, monkeypatch):
    m = tmp_path / "m.parquet"
    _ok(runner.invoke(main, ["ingest", "images", tree.root, "--patient-regex", REGEX, "-o", str(m), "-q", "--workers", "1"]))
    monkeypatch.setitem(sys.modules, "nibabel", None)
    for args in (["ingest", "images", tree.root, "--patient-regex", REGEX, "-o", str(tmp_path / "x.parquet")], ["hash", str(m), "-o", str(tmp_path / "h.parquet")]):
        res = runner.invoke(main, args)
        assert res.exit_code == 2 and "pip install 'mdprep[nifti]'" in res.stderr and res.stderr.startswith("Error: "), res.stderr
        assert not os.path.exists(tmp_path / "x.parquet") and not os.path.exists(tmp_path / "h.parquet")


def test_pixel_hash_is_the_canonical_array_and_phash_its_projections(tree, hashed, monkeypatch):
    """The streamed hashes equal the plain computation: nibabel's canonical array, numpy's maxima."""
    for path in [SOURCE, "P0001/study0/ct.nii.gz", "P0000/study1/perfusion.nii", *COPIES]:
        img = nib.load(os.path.join(tree.root, path))
        raw = nib.orientations.apply_orientation(np.asarray(img.dataobj.get_unscaled()), nib.io_orientation(img.affine))  # as_closest_canonical, unscaled
        slope, inter = float(img.dataobj.slope), float(img.dataobj.inter)  # a loaded image keeps them in its proxy
        values = raw if (slope, inter) == (1.0, 0.0) else raw.astype(np.float64) * slope + inter
        assert hashed.loc[path, "pixel_sha256"] == pixel_digest(values.astype(values.dtype.newbyteorder("<")).T), path
        grey = values.astype(np.float64)
        mips = [grey.max(axis=tuple(a for a in range(grey.ndim) if a not in keep)) for keep in ((0, 1), (0, 2), (1, 2))]
        assert hashed.loc[path, "phash"] == nifti.projections_phash(mips[0].T, mips[1].T, mips[2].T), path
    # One slice per slab: the same hashes.
    monkeypatch.setattr(nifti, "SLAB_BYTES", 1)
    for path in (SOURCE, COPIES[0], "P0000/study1/perfusion.nii"):
        with open(os.path.join(tree.root, path), "rb") as fh:
            assert nifti.volume_hashes([fh.read()], max_bytes=1 << 30) == (hashed.loc[path, "pixel_sha256"], hashed.loc[path, "phash"])


def test_copies_match_and_distinct_volumes_do_not(hashed):
    # Re-oriented (axes permuted and flipped, the affine adjusted): the same canonical array, the same hashes.
    assert hashed.loc[COPIES[0], ["pixel_sha256", "phash"]].tolist() == hashed.loc[SOURCE, ["pixel_sha256", "phash"]].tolist()
    # Re-saved as float32 and with scl_slope: other arrays, near-identical projections.
    for path in COPIES[1:]:
        assert hashed.loc[path, "pixel_sha256"] != hashed.loc[SOURCE, "pixel_sha256"]
        assert _bits(hashed.loc[path, "phash"], hashed.loc[SOURCE, "phash"]) <= 4, path
    distinct = ["P0000/study0/ct.nii.gz", "P0001/study0/ct.nii.gz", "P0002/study0/ct.nii.gz", "P0003/study0/ct.nii.gz", "P0000/study1/perfusion.nii"]
    for i, a in enumerate(distinct):
        for b in distinct[i + 1 :]:
            assert _bits(hashed.loc[a, "phash"], hashed.loc[b, "phash"]) > 4, (a, b)
    assert hashed["file_sha256"].nunique() == len(hashed)


def test_big_endian_and_nifti2_copies_have_the_same_pixel_hash(tree, hashed, tmp_path):
    img = nib.load(os.path.join(tree.root, SOURCE))
    data = np.asarray(img.dataobj.get_unscaled())
    big = nib.Nifti1Image(data, img.affine, header=nib.Nifti1Header(endianness=">"))
    big.set_data_dtype(np.int16)
    root = tmp_path / "v"
    (root / "P0008").mkdir(parents=True)
    nib.save(big, root / "P0008/big.nii")
    nib.save(nib.Nifti2Image(data, img.affine), root / "P0008/two.nii.gz")
    r = ingest_images(root, patient_regex=r"(?P<patient>P\d+)/", workers=1)
    assert r.manifest.frame["format"].tolist() == ["NIfTI-1", "NIfTI-2"] and r.manifest.frame["axis_codes"].tolist() == ["LPS", "LPS"]
    with open(root / "P0008/big.nii", "rb") as fh:
        assert fh.read(4) == (348).to_bytes(4, "big")
    h = hash_manifest(r.manifest, workers=1).manifest.frame
    assert h["pixel_sha256"].tolist() == [hashed.loc[SOURCE, "pixel_sha256"]] * 2
    assert h["phash"].tolist() == [hashed.loc[SOURCE, "phash"]] * 2


def test_audit_finds_the_copies_across_splits_and_nothing_else(tree, runner, tmp_path):
    m, h, s = (tmp_path / f"{n}.parquet" for n in ("m", "h", "s"))
    _ok(runner.invoke(main, ["ingest", "images", tree.root, "--patient-regex", REGEX, "-o", str(m), "-q", "--workers", "1"]))
    _ok(runner.invoke(main, ["hash", str(m), "-o", str(h), "-q", "--workers", "1"]))
    hm = read_manifest(h)
    split = {SOURCE: "train", COPIES[0]: "test", COPIES[1]: "val", COPIES[2]: "test"}
    write_manifest(hm.with_frame(hm.frame.assign(split=hm.frame["path"].map(split).fillna("train"))), s)
    json_path = tmp_path / "audit.json"
    res = runner.invoke(main, ["audit-leakage", str(s), "--checks", "duplicate_pixels,near_duplicate", "--json", str(json_path)])
    assert res.exit_code == 1, res.stderr
    import json

    checks = {c["check"]: c for c in json.loads(json_path.read_text())["checks"]}
    near = checks["near_duplicate"]["findings"]
    assert len(near) == 1 and sorted(near[0]["image_ids"]) == sorted([SOURCE, *COPIES]) and near[0]["splits"] == ["test", "train", "val"]
    pixels = checks["duplicate_pixels"]["findings"]
    assert len(pixels) == 1 and sorted(pixels[0]["image_ids"]) == sorted([SOURCE, COPIES[0]]) and pixels[0]["splits"] == ["test", "train"]


def test_max_bytes_caps_the_file_and_the_uncompressed_voxels(tree):
    manifest = ingest_images(tree.root, patient_regex=REGEX, workers=1).manifest
    sizes = {p: os.path.getsize(os.path.join(tree.root, p)) for p in manifest.frame["path"]}
    cap = max(sizes[SOURCE], sizes[COPIES[2]]) + 1  # the .nii.gz files fit, their 15,712 bytes of voxels do not
    assert cap < 15_712
    r = hash_manifest(manifest, workers=1, max_bytes=cap)
    errors = r.errors.set_index("path")
    f = r.manifest.frame.set_index("path")
    message = f"the volume's voxel data end at byte 15,712 of its uncompressed stream (from its header), over the limit of {cap:,} bytes; raise --max-bytes to read it"
    assert errors.loc[SOURCE, "error_type"] == "TooLarge" and errors.loc[SOURCE, "message"] == message
    assert pd.notna(f.loc[SOURCE, "file_sha256"]) and pd.isna(f.loc[SOURCE, "pixel_sha256"])  # the file was read: its bytes are hashed
    big = COPIES[1]  # float32, not compressed: over the cap as a file, never read
    assert sizes[big] > cap and errors.loc[big, "error_type"] == "TooLarge" and pd.isna(f.loc[big, "file_sha256"])
    assert errors.loc[big, "message"] == f"{sizes[big]:,} bytes, over the limit of {cap:,} bytes; raise --max-bytes to read it"


def test_damaged_volumes_in_a_manifest_are_hash_error_rows(tree):
    from mdprep.manifest import Manifest

    paths = [*tree.of_kind("damaged"), "P0000/gone.nii.gz", "P0000"]
    r = hash_manifest(Manifest(pd.DataFrame({"image_id": paths, "path": paths, "patient_id": "p"}), root=tree.root), workers=1)
    errors = r.errors.set_index("path")["error_type"].to_dict()
    assert errors == {**{p: tree.volumes[p]["error"] for p in tree.of_kind("damaged")}, "P0000/gone.nii.gz": "FileNotFoundError", "P0000": "NotRegularFile"}
    f = r.manifest.frame.set_index("path")
    assert f["phash"].isna().all() and f["file_sha256"].notna().tolist() == [True] * 4 + [False, False]  # read, but not decoded


def test_update_reads_only_new_volumes_and_equals_a_full_run(tree, runner, tmp_path):
    root = tmp_path / "v"
    shutil.copytree(tree.root, root)
    day_ago = time.time() - 86400
    for folder, _, names in os.walk(root):
        for name in names:
            os.utime(os.path.join(folder, name), (day_ago, day_ago))
    base = ["ingest", "images", str(root), "--patient-regex", REGEX, "--workers", "1", "-q"]
    v1, v2, full = (str(tmp_path / f"{n}.parquet") for n in ("v1", "v2", "full"))
    _ok(runner.invoke(main, [*base, "-o", v1, "--record-signatures"]))
    write_nifti_tree(root / "new", patients=1, seed=5)
    shutil.move(root / "new/P0000", root / "P0009")
    res = _ok(runner.invoke(main, [*base[:-1], "-o", v2, "--update", v1]))
    assert "Update: 1 new, 0 changed, 0 removed, 12 unchanged (reused); 1 file(s) read" in res.stderr
    shutil.rmtree(root / "new")
    _ok(runner.invoke(main, [*base, "-o", full]))
    assert open(v2, "rb").read() == open(full, "rb").read() and read_signatures(v2)[0]["command"] == "ingest images"


def test_slice_plane_and_axis_codes():
    def rotated(degrees: float) -> np.ndarray:
        t = np.radians(degrees)
        out = np.eye(4)
        out[1:3, 1:3] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
        return out

    assert nifti.slice_plane(rotated(5)) == "axial" and nifti.slice_plane(rotated(30)) == "oblique"
    assert nifti.slice_plane(rotated(90)) == "coronal" and nifti.slice_plane(np.eye(4)[:, [1, 2, 0, 3]]) == "sagittal"
    assert nifti.slice_plane(np.zeros((4, 4))) is None and nifti.axis_codes(np.zeros((4, 4))) is None


def test_regex_groups_may_not_take_a_volume_column_name(tree):
    with pytest.raises(UsageError, match="'depth', named after column"):
        ingest_images(tree.root, patient_regex=r"(?P<patient>[PCD]\d+)/(?P<depth>study\d+)/")


def test_what_nibabel_fixes_in_a_header_is_a_note(tmp_path):
    img = nib.Nifti1Image(np.arange(120, dtype=np.uint8).reshape(4, 5, 6), np.eye(4))
    (tmp_path / "P0001").mkdir()
    nib.save(img, tmp_path / "P0001/zero.nii")
    raw = bytearray((tmp_path / "P0001/zero.nii").read_bytes())
    raw[80:92] = bytes(12)  # pixdim[1:4] = 0
    (tmp_path / "P0001/zero.nii").write_bytes(bytes(raw))
    r = ingest_images(tmp_path, patient_regex=r"(?P<patient>P\d+)/", workers=1)
    assert r.report.notes == ("1 file(s): nibabel: pixdim[1,2,3] should be non-zero (setting 0 dims to 1)",)
    assert list(r.manifest.frame["voxel_spacing"][0]) == [1.0, 1.0, 1.0] and r.manifest.frame["axis_codes"][0] == "RAS"

"""Image trees on object storage: a real S3 API (moto's server) read through s3fs.

The manifest of ``s3://bucket/tree`` must equal the manifest of the same tree on
disk byte for byte once the recorded root is normalised; DICOM headers cost a few
kilobytes per file (counted by the server); ``hash`` and ``train`` read through the
URL; the root rule holds for URLs; credentials never reach an output.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mdprep import storage
from mdprep.cli import main
from mdprep.errors import EmptyInputError, InputError, UsageError
from mdprep.fileio import paths_outside_root
from mdprep.hashing import hash_manifest
from mdprep.ingest import ingest_dicom, ingest_images
from mdprep.manifest import Manifest, read_manifest, write_manifest
from mdprep.synthetic import SHAPE_LABELS, LocalS3, write_dicom_tree, write_image_tree, write_shapes_dataset

#: Recognisable credentials: no output byte may contain them.
KEY_ID = "AKIAMDPREPLEAKCHECK7"
SECRET = "mdprep/leak+check/Secret0123456789abcdefXYZ"
REGEX = r"(?P<patient>patient\d+)/(?P<study>study\d+)/"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server with a DICOM tree of ~0.5 MB files (bad files planted) and an image tree, on disk and uploaded."""
    import s3fs

    with pytest.MonkeyPatch.context() as mp, LocalS3() as server:
        mp.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
        mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_ENDPOINT_URL", server.endpoint)
        s3fs.S3FileSystem.clear_instance_cache()
        dicom = tmp_path_factory.mktemp("dicom")
        planted = write_dicom_tree(dicom, patients=3, images_per_patient=2, shape=(512, 512), plant_bad_files=True)
        images = tmp_path_factory.mktemp("images")
        write_image_tree(images, patients=4, studies=2, shape=(40, 48), plant_bad_files=True)
        server.dicom, server.dicom_url, server.planted = dicom, server.upload(dicom, "scans", "dicom"), planted
        server.images, server.images_url = images, server.upload(images, "scans", "images")
        yield server
        s3fs.S3FileSystem.clear_instance_cache()


def normalised(manifest: Manifest | str | Path) -> bytes:
    """The manifest's Parquet bytes with its root (recorded root, listing input, hash root option) replaced by ``ROOT``."""
    m = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    history = []
    for step in m.history:
        inputs = [dict(i, path="ROOT") if i.get("kind") == "tree" else i for i in step["inputs"]]
        options = dict(step["options"], root="ROOT") if "root" in step["options"] else step["options"]
        history.append(dict(step, inputs=inputs, options=options))
    buf = io.BytesIO()
    write_manifest(dataclasses.replace(m, root="ROOT", history=tuple(history)), buf)
    return buf.getvalue()


def test_dicom_manifest_from_s3_equals_local_and_reads_only_headers(s3):
    local = ingest_dicom(s3.dicom, workers=1)
    s3.requests.clear()
    remote = ingest_dicom(s3.dicom_url, workers=1)
    assert remote.manifest.root == "s3://scans/dicom" and remote.manifest.history[0]["inputs"][0]["path"] == "s3://scans/dicom"
    assert normalised(remote.manifest) == normalised(local.manifest)
    assert normalised(remote.manifest) != normalised(dataclasses.replace(local.manifest, frame=local.manifest.frame.iloc[1:]))
    pd.testing.assert_frame_equal(remote.errors, local.errors)
    assert remote.report == local.report and remote.report.reconciles
    assert remote.report.found == s3.planted.found and remote.report.ingested == s3.planted.ingested
    # What the server sent: one ranged GET per non-empty file, never more than the head, for files of ~0.5 MB.
    reads = s3.object_reads("/scans/dicom/")
    sizes = {f"/scans/dicom/{p.relative_to(s3.dicom).as_posix()}": p.stat().st_size for p in s3.dicom.rglob("*") if p.is_file()}
    assert set(reads) == {k for k, size in sizes.items() if size}
    assert all(n == 1 for n, _ in reads.values())
    assert max(sent for _, sent in reads.values()) == storage.DICOM_HEAD
    images = [k for k in reads if "/PAT" in k]
    assert len(images) == 6 and all(sizes[k] > 500_000 for k in images)
    assert sum(sent for _, sent in reads.values()) < 0.02 * sum(sizes.values())



def test_cli_with_two_workers_in_a_fresh_process(s3, tmp_path):
    """Workers forked after the listing read the same rows (a fresh process: workers see its environment)."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = tmp_path / "m.parquet"
    res = subprocess.run([sys.executable, "-m", "mdprep", "ingest", "dicom", s3.dicom_url, "-o", str(out), "--workers", "2", "-q"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    write_manifest(ingest_dicom(s3.dicom, workers=1).manifest, tmp_path / "local.parquet")
    assert normalised(out) == normalised(tmp_path / "local.parquet")  # file against file (lists read back from Parquet name their items "element")
    assert KEY_ID not in res.stderr + res.stdout and SECRET not in res.stderr + res.stdout


def test_listed_files_from_s3(s3):
    files = ["PAT00000/study0/img000.dcm", "s3://scans/dicom/PAT00001/study0/img001.dcm", "missing.dcm", "PAT00000", "../images/x.png",
             "s3://other/x.dcm", "/etc/passwd", "PAT00000/./study0/img000.dcm"]
    r = ingest_dicom(s3.dicom_url, files=files, workers=1)
    assert r.manifest.frame["path"].tolist() == ["PAT00000/study0/img000.dcm", "PAT00001/study0/img001.dcm"]
    rows = {p: (o, t, m) for p, o, t, m in r.errors.itertuples(index=False)}
    assert rows["missing.dcm"] == ("failed", "FileNotFoundError", "listed, but there is no such file")
    assert rows["PAT00000"][:2] == ("skipped", "Folder")
    assert {p for p, (o, t, m) in rows.items() if t == "OutsideRoot"} == {"../images/x.png", "s3://other/x.dcm", "/etc/passwd"}
    assert rows["PAT00000/study0/img000.dcm"][1] == "DuplicatePath"
    assert r.report.found == len(files) and r.report.reconciles


def test_image_manifest_from_s3_equals_local(s3):
    local = ingest_images(s3.images, patient_regex=REGEX, workers=1)
    s3.requests.clear()
    remote = ingest_images(s3.images_url, patient_regex=REGEX, workers=1)
    assert remote.manifest.root == s3.images_url
    assert normalised(remote.manifest) == normalised(local.manifest)
    pd.testing.assert_frame_equal(remote.errors, local.errors)
    assert remote.report == local.report and remote.report.failed == 2  # the broken PNG, the stray path
    reads = s3.object_reads("/scans/images/")
    assert "/scans/images/README.md" not in reads  # not an image: never fetched
    assert all(n == 1 and sent <= storage.IMAGE_HEAD for n, sent in reads.values())  # small files: head and tail in one GET


def test_large_image_headers_cost_the_head_and_the_tail(s3, tmp_path):
    from PIL import Image

    noise = np.random.default_rng(0).integers(0, 256, (300, 300), dtype=np.uint8)
    for fmt in ("png", "jpg"):
        path = tmp_path / f"big/patient00001/study1/view1_frontal.{fmt}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(noise).save(path)
    url = s3.upload(tmp_path / "big", "scans", "big")
    s3.requests.clear()
    r = ingest_images(url, patient_regex=REGEX, workers=1)
    assert r.report.ingested == 2 and r.manifest.frame["width"].tolist() == [300, 300]
    reads = s3.object_reads("/scans/big/")
    sizes = [p.stat().st_size for p in sorted((tmp_path / "big").rglob("*.*"))]
    assert min(sizes) > 40_000  # files of 40 KB and more: two GETs, the first 16 KiB and the last 64 bytes
    assert sorted(reads.values()) == [(2, storage.IMAGE_HEAD + 64)] * 2


def test_hash_over_s3_equals_hash_over_local(s3, tmp_path, runner):
    local = ingest_dicom(s3.dicom, workers=1).manifest
    remote = ingest_dicom(s3.dicom_url, workers=1).manifest
    write_manifest(local, tmp_path / "local.parquet")
    write_manifest(remote, tmp_path / "remote.parquet")
    for name in ("local", "remote"):
        res = runner.invoke(main, ["hash", str(tmp_path / f"{name}.parquet"), "-o", str(tmp_path / f"{name}-h.parquet"), "--workers", "1", "-q"])
        assert res.exit_code == 0, res.stderr
    assert normalised(tmp_path / "remote-h.parquet") == normalised(tmp_path / "local-h.parquet")
    hashed = read_manifest(tmp_path / "remote-h.parquet")
    assert hashed.frame["file_sha256"].notna().all() and hashed.history[-1]["options"]["root"] == s3.dicom_url
    # --root gives the URL explicitly; an object too large is refused before any byte is fetched.
    s3.requests.clear()
    result = hash_manifest(local, root=s3.dicom_url, workers=1, max_bytes=300_000)
    assert set(result.errors["error_type"]) == {"TooLarge"} and result.hashed == 0
    assert s3.object_reads("/scans/dicom/") == {}


def test_nifti_volumes_from_s3_equal_local_and_cost_the_head_and_the_tail(s3, tmp_path):
    from mdprep.synthetic import write_nifti_tree

    root = tmp_path / "volumes"
    write_nifti_tree(root, patients=2, shape=(40, 48, 32), copies=True, damaged=True)
    url = s3.upload(root, "scans", "volumes")
    regex = r"(?P<patient>[PCD]\d+)/"
    local = ingest_images(root, patient_regex=regex, workers=1)
    s3.requests.clear()
    remote = ingest_images(url, patient_regex=regex, workers=1)
    assert normalised(remote.manifest) == normalised(local.manifest) and len(remote.manifest.frame) == 5
    pd.testing.assert_frame_equal(remote.errors, local.errors)
    assert remote.report == local.report and remote.report.failed == 4
    reads = s3.object_reads("/scans/volumes/")
    sizes = {f"/scans/volumes/{p.relative_to(root).as_posix()}": p.stat().st_size for p in root.rglob("*.nii*")}
    assert min(sizes[k] for k in reads if "/P0" in k or "/C0" in k) > storage.IMAGE_HEAD + 64
    for key, (n, sent) in reads.items():
        if key.endswith("D0001/study0/cut.nii.gz"):  # its gzip trailer disagrees with the header: inflated to its end
            assert sent >= sizes[key]
        else:  # the header and the gzip trailer: the first 16 KiB and the last 64 bytes
            assert sent <= storage.IMAGE_HEAD + 64, key
    hashed_local = hash_manifest(local.manifest, workers=1)
    hashed_remote = hash_manifest(remote.manifest, root=url, workers=1)
    assert hashed_remote.failed == 0 and normalised(hashed_remote.manifest) == normalised(hashed_local.manifest)


def test_train_reads_images_through_the_url(s3, tmp_path, runner):
    from mdprep.training.data import ManifestDataset, unreadable_images

    root = tmp_path / "shapes"
    frame = write_shapes_dataset(root, images=16, size=24, seed=3, dicom_every=4)
    frame["split"] = np.where(frame["patient_id"] <= "S00004", "train", "val")
    url = s3.upload(root, "scans", "shapes")
    frame.loc[1, "path"] = "img99999.png"  # missing
    local_ds, remote_ds = (ManifestDataset(frame, r, SHAPE_LABELS, size=16) for r in (str(root), url))
    assert remote_ds.paths[0] == f"{url}/img00000.dcm"
    assert all(bool((local_ds[i][0] == remote_ds[i][0]).all()) for i in (0, 2, 3))
    bad = unreadable_images(frame, url, workers=1)
    assert bad[["path", "error_type", "message"]].values.tolist() == [["img99999.png", "FileNotFoundError", storage.storage_error(FileNotFoundError()).strerror]]
    path = tmp_path / "m.parquet"
    write_manifest(Manifest(frame.drop(index=1), labels=SHAPE_LABELS, root=url), path)
    res = runner.invoke(main, ["train", str(path), "-o", str(tmp_path / "run"), "--arch", "small", "--epochs", "1", "--batch-size", "4",
                               "--image-size", "16", "--device", "cpu", "--workers", "0", "-q"])
    assert res.exit_code == 0, res.stderr
    assert (tmp_path / "run" / "metrics.json").exists()


def test_root_rule_for_url_roots(s3, tmp_path, runner):
    root = "s3://scans/images"
    paths = ["a.png", "p/../a.png", "../dicom/x.dcm", "p/../../x.png", "/etc/passwd", "s3://other/a.png", f"{root}/a.png", "s3://scans/imagesX/a.png"]
    assert paths_outside_root(root, paths, allow_outside_root=True).tolist() == [False, False, True, True, True, True, False, True]
    # A local root: a URL is never under it.
    assert paths_outside_root(tmp_path, ["a.png", "s3://scans/images/a.png"], allow_outside_root=True).tolist() == [False, True]
    client = s3.client()
    client.put_object(Bucket="scans", Key="escaped.png", Body=(s3.images / "patient00000/study1/view1_frontal.png").read_bytes())
    frame = pd.DataFrame({"image_id": ["a", "b", "c"], "path": ["patient00000/study1/view1_frontal.png", "../escaped.png", "s3://scans/escaped.png"], "patient_id": "p"})
    src = tmp_path / "m.parquet"
    write_manifest(Manifest(frame, root=s3.images_url), src)
    args = ["hash", str(src), "-o", str(tmp_path / "h.parquet"), "--workers", "1"]
    res = runner.invoke(main, args)
    assert res.exit_code == 2 and "Traceback" not in res.stderr
    assert res.stderr.startswith("Error: 2 manifest path(s) lead outside the image root 's3://scans/images'") and "'../escaped.png'" in res.stderr
    res = runner.invoke(main, [*args, "--allow-outside-root", "-q"])
    assert res.exit_code == 0, res.stderr
    hashes = read_manifest(tmp_path / "h.parquet").frame["file_sha256"]
    assert hashes.notna().all() and hashes.nunique() == 1  # the same bytes, read through the prefix and outside it


def test_listing_accounts_for_every_object(s3):
    client = s3.client()
    body = (s3.dicom / "PAT00000/study0/img000.dcm").read_bytes()
    for key, data in {"odd/a.dcm": body, "odd/folder/": b"", "odd/full/": b"data", "odd/b//c.dcm": body, "odd/../up.dcm": body,
                      "odd/./d.dcm": body}.items():
        client.put_object(Bucket="scans", Key=key, Body=data)
    r = ingest_dicom("s3://scans/odd/", workers=1)  # a trailing slash names the same prefix
    assert r.manifest.root == "s3://scans/odd" and r.manifest.frame["path"].tolist() == ["a.dcm"]
    assert r.errors[["path", "outcome", "error_type"]].values.tolist() == [
        ["../up.dcm", "failed", "UnsafePath"], ["./d.dcm", "failed", "UnsafePath"], ["b//c.dcm", "failed", "UnsafePath"], ["full/", "skipped", "Folder"],
    ]
    assert r.report.found == 5 and r.report.reconciles  # the empty folder marker is not an entry, as a local folder is not
    with pytest.raises(EmptyInputError, match=r"no objects found under s3://scans/nothing; check the URL"):
        ingest_dicom("s3://scans/nothing", workers=1)
    with pytest.raises(InputError, match=r"cannot list s3://no-such-bucket/x: no such bucket"):
        ingest_dicom("s3://no-such-bucket/x", workers=1)
    with pytest.raises(InputError, match=r"'s3://scans/odd/a.dcm' names an object, not a folder"):
        ingest_dicom("s3://scans/odd/a.dcm", workers=1)


def test_tree_order_matches_the_local_walk(tmp_path):
    """The order a URL root's files are read in (and so the DICOM manifest's rows) is the local walker's."""
    from mdprep.ingest.files import iter_tree, tree_order

    rels = ["a", "a-b/x", "a.b", "ab/c/d", "ab/c.e", "ab/c-d/e", "b/a/z", "b/a.z", "b/B", "b/a0/y", "é/x", "z y/0", "A/q"]
    for rel in rels:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    walked = list(iter_tree(str(tmp_path), []))
    assert sorted(walked) == sorted(rels) and tree_order(sorted(rels)) == walked and tree_order(rels[::-1]) == walked


def test_unknown_protocol_and_missing_backend(runner, tmp_path, monkeypatch):
    import importlib

    registry = importlib.import_module("fsspec.registry")  # the module (fsspec.registry is also the name of its mapping)
    res = runner.invoke(main, ["ingest", "dicom", "nosuch://bucket/x", "-o", str(tmp_path / "m.parquet")])
    assert res.exit_code == 2 and res.stderr.startswith("Error: 'nosuch://bucket/x': unknown protocol 'nosuch'")
    # gs:// whose back-end (gcsfs) is not importable: the message names the package.
    monkeypatch.setitem(registry.known_implementations, "gs", {"class": "mdprep_no_such_module.GCSFileSystem", "err": "Please install gcsfs"})
    monkeypatch.delitem(registry._registry, "gs", raising=False)
    res = runner.invoke(main, ["ingest", "images", "gs://bucket/x", "--patient-regex", REGEX, "-o", str(tmp_path / "m.parquet")])
    assert res.exit_code == 2 and "Error: 'gs://bucket/x': the gs:// back-end is not installed; install gcsfs (pip install gcsfs)" in res.stderr
    with pytest.raises(UsageError, match="back-end is not installed"):
        hash_manifest(Manifest(pd.DataFrame({"image_id": ["a"], "path": ["a.png"], "patient_id": ["p"]}), root="gs://bucket/x"), workers=1)


def test_endpoint_from_fsspec_configuration(s3, monkeypatch):
    """Without AWS_ENDPOINT_URL, fsspec's configuration (FSSPEC_S3_ENDPOINT_URL, ~/.config/fsspec) points s3fs at the store."""
    import fsspec.config
    import s3fs

    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": s3.endpoint})
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        listing = storage.list_tree(s3.images_url)
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    assert "patient00000/study1/view1_frontal.png" in listing.relpaths


def test_signatures(s3, tmp_path):
    import hashlib

    rels = ["patient00000/study1/view1_frontal.png", "README.md", "gone.png"]
    sizes, stamps = storage.signatures(s3.images_url, rels)
    data = (s3.images / rels[0]).read_bytes()
    assert sizes.dtype == np.int64 and sizes.tolist() == [len(data), len("# images\n"), -1]
    assert stamps[0] == hashlib.md5(data).hexdigest() and stamps[2] == ""  # the ETag of a single-part upload
    sizes, stamps = storage.signatures(s3.images, rels)
    st = os.stat(s3.images / rels[0])
    assert sizes.tolist()[0] == st.st_size and stamps[0] == str(st.st_mtime_ns) and (sizes[2], stamps[2]) == (-1, "")
    assert storage.signatures(f"file://{s3.images}", rels)[1] == stamps
    assert storage.signatures("s3://scans/nothing-here", rels)[0].tolist() == [-1, -1, -1]


def test_access_denied_and_bad_credentials_give_clean_rows_and_errors(s3, tmp_path, runner, monkeypatch):
    import boto3
    import s3fs
    from moto.core.authorization import enable_iam_authentication

    iam = boto3.client("iam", endpoint_url=s3.endpoint, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
    iam.create_user(UserName="reader")
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    denied = "dicom/PAT00001/study0/img000.dcm"
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
        {"Effect": "Deny", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::scans/{denied}"},
        {"Effect": "Deny", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::private"},
    ]}
    iam.put_user_policy(UserName="reader", PolicyName="read", PolicyDocument=json.dumps(policy))
    s3.client().create_bucket(Bucket="private")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    secrets = [key["AccessKeyId"], key["SecretAccessKey"], "urlPassw0rd"]
    s3fs.S3FileSystem.clear_instance_cache()
    written = []
    try:
        with enable_iam_authentication():
            out, errors = tmp_path / "m.parquet", tmp_path / "errors.csv"
            res = runner.invoke(main, ["ingest", "dicom", "s3://reader:urlPassw0rd@scans/dicom?x-id=1", "-o", str(out), "--errors", str(errors), "--workers", "1"])
            written.append(res.output + res.stderr)
            assert res.exit_code == 0, res.stderr
            assert "Warning: the URL 's3://scans/dicom' was given with a user name and password and a query string" in res.stderr
            rows = pd.read_csv(errors, dtype=str).set_index("path")
            assert rows.loc["PAT00001/study0/img000.dcm"].tolist() == [
                "failed", "PermissionError",
                "cannot read the file: access denied by the object store (Access Denied); check the credentials and the bucket's policy",
            ]
            assert read_manifest(out).root == "s3://scans/dicom"
            res = runner.invoke(main, ["ingest", "dicom", "s3://private/x", "-o", str(tmp_path / "p.parquet")])
            written.append(res.output + res.stderr)
            assert res.exit_code == 2 and res.stderr.startswith("Error: cannot list s3://private/x: access denied (Access Denied); check the credentials")
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"][::-1])  # a wrong secret
            secrets.append(key["SecretAccessKey"][::-1])
            s3fs.S3FileSystem.clear_instance_cache()
            res = runner.invoke(main, ["ingest", "dicom", "s3://scans/dicom", "-o", str(tmp_path / "w.parquet")])
            written.append(res.output + res.stderr)
            assert res.exit_code == 2 and res.stderr.startswith("Error: cannot list s3://scans/dicom: access denied (The request signature we calculated")
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    blob = "\n".join(written).encode() + b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert not [s for s in secrets if s.encode() in blob]


def test_credentials_never_reach_an_output(s3, tmp_path, runner):
    out = tmp_path / "out"
    out.mkdir()
    runs = [
        ["ingest", "dicom", s3.dicom_url, "-o", str(out / "d.parquet"), "--errors", str(out / "d-errors.csv"), "--workers", "1"],
        ["ingest", "images", s3.images_url, "--patient-regex", REGEX, "-o", str(out / "i.parquet"), "--errors", str(out / "i-errors.parquet"), "--workers", "1"],
        ["hash", str(out / "d.parquet"), "-o", str(out / "h.parquet"), "--errors", str(out / "h-errors.csv"), "--workers", "1"],
        ["ingest", "dicom", "s3://no-such-bucket/x", "-o", str(out / "x.parquet")],
    ]
    streams = []
    for args in runs:
        res = runner.invoke(main, args)
        streams.append(res.output + res.stderr)
        assert res.exit_code == (2 if "no-such-bucket" in args[2] else 0), res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["d-errors.csv", "d.parquet", "h-errors.csv", "h.parquet", "i-errors.parquet", "i.parquet"]
    blob = "\n".join(streams).encode() + b"".join(p.read_bytes() for p in out.iterdir())
    assert b"s3://scans/dicom" in blob  # the recorded root is there ...
    assert KEY_ID.encode() not in blob and SECRET.encode() not in blob  # ... the credentials are not
    assert storage.scrub(f"signed with {SECRET} by {KEY_ID}") == "signed with *** by ***"


def test_update_over_s3_reads_only_changed_objects_and_equals_a_full_run(s3, tmp_path, runner):
    from mdprep.cli import main

    url = s3.upload(s3.images, "scans", "images-upd")  # a prefix of its own: this test changes it
    v1, v2, full = (str(tmp_path / n) for n in ("v1.parquet", "v2.parquet", "full.parquet"))
    regex = ["--patient-regex", r"(?P<patient>[^/]+)/"]
    r = runner.invoke(main, ["ingest", "images", url, *regex, "-o", v1, "--record-signatures", "-q"])
    assert r.exit_code == 0, r.output
    key = next(k for k in s3.keys("scans") if k.startswith("images-upd/") and k.endswith(".png"))
    other = next(k for k in s3.keys("scans") if k.startswith("images-upd/") and k.endswith(".png") and k != key)
    client = s3.client()
    client.put_object(Bucket="scans", Key=key, Body=client.get_object(Bucket="scans", Key=other)["Body"].read())  # new ETag
    r = runner.invoke(main, ["ingest", "images", url, *regex, "--update", v1, "-o", v2])
    assert r.exit_code == 0, r.output
    assert "Update: 0 new, 1 changed, 0 removed" in r.output
    assert runner.invoke(main, ["ingest", "images", url, *regex, "-o", full, "-q"]).exit_code == 0
    assert Path(v2).read_bytes() == Path(full).read_bytes()

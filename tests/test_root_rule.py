"""The root rule: image files are read only under the manifest's root (hash, train)."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mdprep.cli import main
from mdprep.errors import InputError
from mdprep.fileio import paths_outside_root
from mdprep.hashing import hash_manifest
from mdprep.manifest import Manifest, read_manifest, write_manifest


@pytest.fixture
def tree(tmp_path):
    """A root with images, a secret file beside it, and links into and out of the root."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    for rel in ("a.png", "sub/b.png"):
        Image.fromarray(pixels).save(root / rel)
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "passwd").write_text("root:x:0:0\n")
    Image.fromarray(pixels.T.copy()).save(outside / "c.png")
    os.symlink(outside / "passwd", root / "passwd.png")  # a file link out of the root
    os.symlink(outside, root / "linked")  # a folder link out of the root
    os.symlink(root / "sub", root / "alias")  # a folder link that stays inside
    os.symlink(root / "a.png", root / "sub" / "same.png")  # a file link that stays inside
    return root, outside


def test_lexical_absolute_and_linked_paths_are_outside(tree):
    root, outside = tree
    paths = [
        "a.png", "sub/b.png", "sub/../a.png", "./a.png", "alias/b.png", "sub/same.png", "missing/x.png",  # inside
        "../secret/passwd", "sub/../../secret/passwd", str(outside / "c.png"), "passwd.png", "linked/c.png",  # outside
        "a.png",  # repeated: the mask stays aligned with the rows
    ]
    mask = paths_outside_root(root, paths, allow_outside_root=True)
    assert mask.tolist() == [False] * 7 + [True] * 5 + [False]
    # An absolute path under the root is inside; the root reached through a link is the same root.
    os.symlink(root, root.parent / "root-link")
    assert not paths_outside_root(root.parent / "root-link", [str(root / "a.png"), "a.png"]).any()


def test_refusal_counts_and_quotes_the_paths(tree):
    root, outside = tree
    paths = ["a.png", "../secret/passwd", "passwd.png", "linked/c.png", "../secret/passwd"]
    with pytest.raises(InputError) as info:
        paths_outside_root(root, paths)
    err = info.value
    assert err.fields["count"] == 3 and err.fields["examples"] == ["../secret/passwd", "passwd.png", "linked/c.png"]
    assert "3 manifest path(s) lead outside the image root" in err.message and "(2 through symbolic links)" in err.message
    assert "'../secret/passwd', 'passwd.png', 'linked/c.png'" in err.message and "--allow-outside-root" in err.message


def _manifest(root, paths) -> Manifest:
    frame = pd.DataFrame({"image_id": [f"i{k}" for k in range(len(paths))], "path": paths, "patient_id": "p"})
    return Manifest(frame, root=str(root))


def test_hash_refuses_system_files_unless_allowed(tree, tmp_path, runner):
    root, outside = tree
    m = _manifest(root, ["a.png", "../../../../../../etc/passwd", "/etc/passwd", "passwd.png"])
    src = tmp_path / "m.parquet"
    write_manifest(m, src)
    res = runner.invoke(main, ["hash", str(src), "-o", str(tmp_path / "h.parquet"), "--workers", "1"])
    assert res.exit_code == 2
    assert res.stderr.startswith("Error: 3 manifest path(s) lead outside the image root") and "'/etc/passwd'" in res.stderr
    assert not (tmp_path / "h.parquet").exists()
    res = runner.invoke(main, ["hash", str(src), "-o", str(tmp_path / "h.parquet"), "--workers", "1", "--allow-outside-root", "-q"])
    assert res.exit_code == 0, res.stderr
    assert "Warning: 3 row(s) read from outside the image root" in res.stderr
    out = read_manifest(tmp_path / "h.parquet")
    assert out.frame["file_sha256"].notna().all()  # read on purpose; the non-images fail to decode
    assert out.history[-1]["options"]["allow_outside_root"] is True
    # The library refuses the same way by default.
    with pytest.raises(InputError, match="--allow-outside-root"):
        hash_manifest(m, workers=1)


def test_train_refuses_images_outside_the_root_before_training(tree, tmp_path, runner):
    root, outside = tree
    m = _manifest(root, ["a.png", "sub/b.png", "linked/c.png"])
    frame = m.frame.assign(patient_id=["p0", "p1", "p2"], split=["train", "train", "val"], label=pd.array([1, 0, 1], dtype="Int8"))
    path = tmp_path / "m.parquet"
    write_manifest(Manifest(frame, labels=("label",), root=str(root)), path)
    args = ["train", str(path), "-o", str(tmp_path / "run"), "--arch", "small", "--epochs", "1", "--image-size", "16", "--device", "cpu", "-q"]
    res = runner.invoke(main, args)
    assert res.exit_code == 2 and "Error: 1 manifest path(s) lead outside the image root" in res.stderr and "'linked/c.png'" in res.stderr
    assert not (tmp_path / "run").exists()
    res = runner.invoke(main, [*args, "--allow-outside-root"])
    assert res.exit_code == 0, res.stderr
    assert "Warning: 1 row(s) read from outside the image root" in res.stderr

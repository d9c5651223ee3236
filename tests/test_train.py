from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import torch

from mdprep.cli import main
from mdprep.fileio import file_fingerprint
from mdprep.manifest import Manifest, write_manifest
from mdprep.splitting import split_manifest
from mdprep.synthetic import SHAPE_LABELS, write_shapes_dataset
from mdprep.training import LeakageError, build_model, masked_weighted_bce, train
from mdprep.training.data import ManifestDataset, cxr_safe
from mdprep.training.models import freeze_backbone, load_pretrained
from mdprep.weights import compute_weights, weighted_bce


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    frame = write_shapes_dataset(root, images=500, size=64, seed=0, dicom_every=9)
    m = split_manifest(Manifest(frame, labels=SHAPE_LABELS, root=str(root)), ratios=(0.7, 0.15, 0.15), seed=0).manifest
    return m, root


def test_small_model_learns_the_shapes(shapes, tmp_path):
    m, root = shapes
    weights = tmp_path / "w.json"
    weights.write_text(json.dumps(compute_weights(m).document()))
    r = train(m, root=str(root), out_dir=str(tmp_path / "run"), weights_path=str(weights), arch="small", epochs=5,
              batch_size=32, image_size=64, lr=3e-3, device="cpu", evaluate_test=True, seed=0)
    run = r.metrics["runs"][0]
    assert run["best_val_mean_auc"] >= 0.9
    assert run["test"]["mean_auc"] >= 0.9
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["runs"][0]["best_epoch"] == r.best_epoch and len(saved["runs"][0]["epochs"]) == 5
    assert set(saved["runs"][0]["epochs"][0]["val_auc"]) == set(SHAPE_LABELS)
    ckpt = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert ckpt["labels"] == list(SHAPE_LABELS) and ckpt["epoch"] == r.best_epoch


def test_overfits_a_handful_of_images(shapes, tmp_path):
    m, root = shapes
    f = m.frame.copy()
    f["split"] = np.where(np.arange(len(f)) < 8, "train", "other")
    tiny = m.with_frame(f[np.arange(len(f)) < 8])
    r = train(tiny, root=str(root), out_dir=str(tmp_path / "run"), arch="small", epochs=60, batch_size=8, image_size=32,
              lr=1e-2, augment="none", device="cpu", seed=0, no_val=True)
    losses = [e["train_loss"] for e in r.metrics["runs"][0]["epochs"]]
    assert losses[-1] < 0.1 * losses[0]


def test_same_seed_same_run(shapes, tmp_path):
    m, root = shapes
    kw = dict(root=str(root), arch="small", epochs=1, batch_size=32, image_size=32, device="cpu", seed=3)
    a = train(m, out_dir=str(tmp_path / "a"), **kw).metrics["runs"][0]["epochs"][0]
    b = train(m, out_dir=str(tmp_path / "b"), **kw).metrics["runs"][0]["epochs"][0]
    assert a["train_loss"] == b["train_loss"] and a["val_auc"] == b["val_auc"]


def test_loss_equals_numpy_reference():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(16, 3))
    targets = rng.choice([1.0, 0.0, -1.0, np.nan], size=(16, 3))
    w_pos, w_neg = np.array([2.0, 5.0, 0.7]), np.array([0.6, 0.5, 1.0])
    ref = weighted_bce(logits, targets, w_pos, w_neg)
    t = torch.tensor(np.where(targets == 1, 1.0, 0.0), dtype=torch.float64)
    mask = torch.tensor(((targets == 1) | (targets == 0)).astype(float))
    got = masked_weighted_bce(torch.tensor(logits), t, mask, torch.tensor(w_pos), torch.tensor(w_neg))
    assert float(got) == pytest.approx(ref, rel=1e-9)


def test_dataset_reads_dicom_and_masks_uncertain(shapes, tmp_path):
    m, root = shapes
    f = m.frame.head(18).copy()
    f.loc[f.index[0], "square"] = -1
    f.loc[f.index[1], "circle"] = pd.NA
    ds = ManifestDataset(f, str(root), SHAPE_LABELS, size=40, channels=3)
    assert f["path"].str.endswith(".dcm").any()
    for i in range(len(ds)):
        img, y, mask = ds[i]
        assert img.shape == (3, 40, 40) and float(img.min()) >= 0 and float(img.max()) <= 1
    assert ds[0][2].tolist()[0] == 0.0 and ds[1][2].tolist()[1] == 0.0 and ds[2][2].tolist() == [1.0, 1.0, 1.0]
    # A DICOM image and the PNG of the same pixels give the same input.
    dcm = next(i for i, p in enumerate(f["path"]) if p.endswith(".dcm"))
    assert float(ds[dcm][0].std()) > 0.05


def test_monochrome1_is_inverted(tmp_path):
    from mdprep.imaging import load_pixels, unit_grey
    from mdprep.synthetic import _write_dicom_pixels
    from pydicom import dcmread

    px = np.tile(np.arange(16, dtype=np.uint16) * 100, (16, 1))
    _write_dicom_pixels(tmp_path / "a.dcm", px, "P")
    ds = dcmread(tmp_path / "a.dcm")
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "b.dcm")
    a = unit_grey(*load_pixels(str(tmp_path / "a.dcm")))
    b = unit_grey(*load_pixels(str(tmp_path / "b.dcm")))
    assert np.allclose(a, 1 - b) and a[0, 0] == 0.0 and a[0, -1] == 1.0


def test_augmentation_is_bounded_and_seeded():
    images = torch.rand(4, 1, 32, 32)
    a = cxr_safe(images, torch.Generator().manual_seed(0))
    b = cxr_safe(images, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == images.shape
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert 0.01 < float((a - images).abs().mean()) < 0.4


def test_leakage_gate(shapes, tmp_path, runner):
    m, root = shapes
    f = m.frame.copy()
    pid = f.loc[f["split"] == "test", "patient_id"].iloc[0]
    f.loc[f.index[f["split"] == "train"][0], "patient_id"] = pid
    leaky = m.with_frame(f)
    with pytest.raises(LeakageError, match="appear in more than one split"):
        train(leaky, root=str(root), out_dir=str(tmp_path / "run"), arch="small", epochs=1, image_size=32, device="cpu")
    path = tmp_path / "leaky.parquet"
    write_manifest(leaky, path)
    res = runner.invoke(main, ["train", str(path), "-o", str(tmp_path / "run"), "--arch", "small", "--epochs", "1", "--image-size", "32", "--device", "cpu"])
    assert res.exit_code == 2 and "--allow-leakage" in res.stderr
    res = runner.invoke(main, ["train", str(path), "-o", str(tmp_path / "run"), "--arch", "small", "--epochs", "1", "--image-size", "32", "--device", "cpu", "--allow-leakage", "-q"])
    assert res.exit_code == 0, res.stderr
    assert "Warning:" in res.stderr


def test_pretrained_and_freeze(tmp_path):
    donor = build_model("resnet18", 1000)
    torch.save(donor.state_dict(), tmp_path / "imagenet.pt")
    model = build_model("resnet18", 3)
    report = load_pretrained(model, str(tmp_path / "imagenet.pt"))
    assert report["skipped"] == ["fc.bias", "fc.weight"] and report["loaded"] == len(model.state_dict()) - 2
    assert torch.equal(model.conv1.weight, donor.conv1.weight)
    frozen = freeze_backbone(model)
    assert frozen > 0 and [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]


def test_architectures_match_torchvision_layouts():
    dn = build_model("densenet121", 14)
    names = set(dn.state_dict())
    assert {"features.denseblock4.denselayer16.conv2.weight", "features.transition3.conv.weight", "features.norm5.running_var", "classifier.weight"} <= names
    assert sum(p.numel() for p in dn.parameters()) == 7978856 - 1025000 + 1024 * 14 + 14
    rn = build_model("resnet18", 14)
    assert sum(p.numel() for p in rn.parameters()) == 11689512 - 513000 + 512 * 14 + 14
    assert "layer2.0.downsample.1.running_mean" in rn.state_dict()


def test_undefined_auc_does_not_crash(shapes, tmp_path):
    m, root = shapes
    f = m.frame.copy()
    f.loc[f["split"] == "val", "stripes"] = 0
    r = train(m.with_frame(f), root=str(root), out_dir=str(tmp_path / "run"), arch="small", epochs=1, image_size=32, device="cpu")
    assert r.metrics["runs"][0]["epochs"][0]["val_auc"]["stripes"] is None


@pytest.fixture
def broken_set(tmp_path):
    """Twelve tiny images, six patients split by patient; one missing, one corrupt, one a FIFO."""
    import os

    root = tmp_path / "img"
    frame = write_shapes_dataset(root, images=12, size=24, seed=1, dicom_every=5)
    frame["split"] = np.where(frame["patient_id"] <= "S00002", "train", np.where(frame["patient_id"] == "S00005", "test", "val"))
    (root / "img00001.png").unlink()  # train
    (root / "img00006.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")  # val
    (root / "img00011.png").unlink()
    os.mkfifo(root / "img00011.png")  # test: reading it would block forever
    return Manifest(frame, labels=SHAPE_LABELS, root=str(root)), root


def test_unreadable_images_stop_training_before_the_first_epoch(broken_set, tmp_path, runner):
    from mdprep.errors import InputError

    m, root = broken_set
    kw = dict(root=str(root), arch="small", epochs=1, batch_size=4, image_size=16, device="cpu")
    with pytest.raises(InputError) as info:
        train(m, out_dir=str(tmp_path / "run"), **kw)
    msg = info.value.message
    assert msg.startswith("2 image(s) that training would read are missing or do not decode: ")
    assert "'img00001.png' at 'img00001.png' (FileNotFoundError: No such file or directory)" in msg
    assert "'img00006.png' at 'img00006.png' (UnidentifiedImageError: cannot identify image file <_io.BytesIO object>)" in msg
    assert "--skip-missing" in msg and not (tmp_path / "run").exists()
    # Test rows are read only with --evaluate-test: then the FIFO is found too, without blocking.
    with pytest.raises(InputError, match=r"^3 image\(s\).*'img00011.png' \(NotRegularFile: a FIFO"):
        train(m, out_dir=str(tmp_path / "run"), evaluate_test=True, **kw)
    path = tmp_path / "m.parquet"
    write_manifest(m, path)
    args = ["train", str(path), "-o", str(tmp_path / "run"), "--arch", "small", "--epochs", "1", "--batch-size", "4", "--image-size", "16", "--device", "cpu", "-q"]
    res = runner.invoke(main, args)
    assert res.exit_code == 2 and res.stderr.startswith("Error: 2 image(s) that training would read") and "Traceback" not in res.stderr
    res = runner.invoke(main, [*args, "--skip-missing", "--evaluate-test"])
    assert res.exit_code == 0, res.stderr
    assert "Warning: 3 image(s) that training would read are missing or do not decode" in res.stderr and "skipped (--skip-missing)" in res.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["skipped_images"]["count"] == 3
    assert [r["image_id"] for r in metrics["skipped_images"]["rows"]] == ["img00001.png", "img00006.png", "img00011.png"]
    assert metrics["runs"][0]["rows"] == {"train": 5, "val": 3, "test": 1} and metrics["options"]["skip_missing"] is True


def test_path_map_trains_on_a_pseudonymised_manifest_without_naming_real_paths(broken_set, tmp_path, runner):
    import hashlib

    from mdprep.errors import InputError, MdprepWarning
    from mdprep.pseudonyms import pseudonymize, write_path_map

    m, root = broken_set
    done = pseudonymize(m, bytes.fromhex(hashlib.sha256(b"train path map").hexdigest()), paths="pseudonymize")
    pseudo, path_map = done.manifest, dict(zip(done.path_map["path"], done.path_map["original_path"]))
    kw = dict(root=str(root), arch="small", epochs=1, batch_size=4, image_size=16, device="cpu")
    with pytest.raises(InputError) as info:  # without the map no file is found
        train(pseudo, out_dir=str(tmp_path / "none"), **kw)
    assert info.value.fields["count"] == len(pseudo.frame[pseudo.frame["split"] != "test"])
    with pytest.warns(MdprepWarning, match="2 image") as caught:
        r = train(pseudo, out_dir=str(tmp_path / "run"), path_map=path_map, skip_missing=True, **kw)
    assert not any("img0000" in str(w.message) for w in caught)  # the warning names pseudonyms only
    skipped = r.metrics["skipped_images"]["rows"]
    assert r.metrics["skipped_images"]["count"] == 2 and r.metrics["options"]["path_map"] is True
    assert {s["path"] for s in skipped} <= set(pseudo.frame["path"])
    saved = (tmp_path / "run" / "metrics.json").read_text()
    assert "img0000" not in saved  # neither a real path nor a real image id
    # The same through the command line, with the map file pseudonymize writes.
    write_manifest(pseudo, tmp_path / "p.parquet")
    write_path_map(done.path_map, tmp_path / "paths.csv")
    res = runner.invoke(main, ["train", str(tmp_path / "p.parquet"), "--path-map", str(tmp_path / "paths.csv"), "--root", str(root), "-o", str(tmp_path / "cli"),
                               "--arch", "small", "--epochs", "1", "--batch-size", "4", "--image-size", "16", "--device", "cpu", "-q"])
    assert res.exit_code == 2 and "--skip-missing" in res.stderr and "img0000" not in res.stderr


@pytest.fixture(scope="module")
def folded(tmp_path_factory):
    root = tmp_path_factory.mktemp("folded")
    frame = write_shapes_dataset(root, images=150, size=32, seed=1)
    m = split_manifest(Manifest(frame, labels=SHAPE_LABELS, root=str(root)), ratios=(0.8, 0.2), folds=3, seed=0).manifest
    path = root / "folds.parquet"
    write_manifest(m, path)
    return m, root, path


def test_every_fold_gives_out_of_fold_predictions(folded, tmp_path, runner):
    import pyarrow.parquet as pq

    m, root, path = folded
    weights = []
    for k in range(3):
        w = tmp_path / f"w{k}.json"
        r = runner.invoke(main, ["weights", str(path), "--fold", str(k), "-o", str(w), "-q"])
        assert r.exit_code == 0, r.output
        weights += ["--weights", str(w)]
    out = tmp_path / "cv"
    args = ["train", str(path), "--fold", "all", "--arch", "small", "--epochs", "1", "--image-size", "32", "--device", "cpu",
            "--evaluate-test", "--bootstrap", "200", *weights]
    r = runner.invoke(main, [*args, "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "3-fold cross-validation" in r.output and "out-of-fold AUC" in r.output and "AUC per fold" in r.output
    assert all((out / f"fold-{k}" / "best.pt").is_file() for k in range(3))
    pred = pq.read_table(out / "predictions.parquet").to_pandas()
    frame = m.frame
    non_test = frame[frame["split"] != "test"]
    oof = pred[pred["part"] == "val"]
    assert sorted(oof["image_id"]) == sorted(non_test["image_id"])  # every training image exactly once
    assert (oof.set_index("image_id")["fold"] == non_test.set_index("image_id")["fold"].reindex(oof["image_id"])).all()
    test = pred[pred["part"] == "test"]
    assert len(test) == 3 * int((frame["split"] == "test").sum()) and set(test["fold"]) == {0, 1, 2}
    assert pred[list(SHAPE_LABELS)].apply(lambda c: c.between(0, 1)).all().all()
    metrics = json.loads((out / "metrics.json").read_text())
    assert [run["fold"] for run in metrics["runs"]] == [0, 1, 2]
    assert metrics["out_of_fold"]["rows"] == len(non_test) and metrics["out_of_fold"]["bootstrap"]["unit"] == "patient"
    assert metrics["out_of_fold"]["patients"] == non_test["patient_id"].nunique()
    assert set(metrics["test_mean_of_folds"]["auc"]) == set(SHAPE_LABELS)
    prov = metrics["provenance"]
    assert prov["manifest"]["sha256"] and "path" not in prov["manifest"]  # by content: no path, which could name a patient
    assert [w["sha256"] for w in prov["weights"]] == [file_fingerprint(tmp_path / f"w{k}.json")["sha256"] for k in range(3)]
    assert prov["seed"] == 0 and prov["versions"]["torch"] and prov["versions"]["numpy"]
    for run in metrics["runs"]:
        assert run["rows"]["train"] + run["rows"]["val"] == len(non_test)
    # A fold's checkpoint is an input like any other: the next run may not write over it.
    r = runner.invoke(main, [*args, "--pretrained", str(out / "fold-1" / "best.pt"), "-o", str(out)])
    assert r.exit_code == 2 and "Error: -o/--output (fold-1/best.pt)" in r.output and "never writes over its inputs" in r.output
    # Same seed, same bytes.
    r = runner.invoke(main, [*args, "-o", str(tmp_path / "cv2")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "cv2" / "predictions.parquet").read_bytes() == (out / "predictions.parquet").read_bytes()


def test_one_fold_validates_and_weights_must_match_the_fold(folded, tmp_path, runner):
    m, root, path = folded
    w = tmp_path / "w2.json"
    assert runner.invoke(main, ["weights", str(path), "--fold", "2", "-o", str(w), "-q"]).exit_code == 0
    base = ["train", str(path), "--arch", "small", "--epochs", "1", "--image-size", "32", "--device", "cpu", "-q"]
    r = runner.invoke(main, [*base, "--fold", "1", "--weights", str(w), "-o", str(tmp_path / "a")])
    assert r.exit_code == 2 and "Error: no --weights file for fold 1 (the files are for fold 2); compute it with `mdprep weights --fold 1`" in r.output
    r = runner.invoke(main, [*base, "--fold", "2", "--weights", str(w), "-o", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    run = metrics["runs"][0]
    assert run["fold"] == 2 and run["rows"]["val"] == int((m.frame["fold"] == 2).sum()) and metrics["plan"]["mode"] == "fold"
    assert (tmp_path / "b" / "best.pt").is_file()


def test_validation_split_names_and_no_val(shapes, tmp_path, runner):
    m, root = shapes
    f = m.frame.copy()
    f["split"] = f["split"].replace({"val": "valid"})
    path = tmp_path / "valid.parquet"
    write_manifest(m.with_frame(f), path)
    base = ["train", str(path), "--arch", "small", "--epochs", "1", "--image-size", "32", "--device", "cpu", "-q"]
    r = runner.invoke(main, [*base, "-o", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics["plan"]["val_split"] == "valid" and metrics["runs"][0]["rows"]["val"] == int((f["split"] == "valid").sum())
    f["split"] = f["split"].replace({"valid": "train"})
    write_manifest(m.with_frame(f), path)
    r = runner.invoke(main, [*base, "-o", str(tmp_path / "b")])
    assert r.exit_code == 2 and "Error: the manifest has no validation rows" in r.output and "--no-val" in r.output
    r = runner.invoke(main, [*base, "--no-val", "-o", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    pred = pd.read_parquet(tmp_path / "c" / "predictions.parquet")
    assert len(pred) == 0 and list(pred.columns) == ["image_id", "split", "fold", "part", *SHAPE_LABELS]


def test_normalisation_is_recorded_and_a_best_pt_keeps_its_own(shapes, tmp_path):
    m, root = shapes
    kw = dict(root=str(root), arch="small", epochs=1, batch_size=32, image_size=16, device="cpu", bootstrap=10)
    a = train(m, out_dir=str(tmp_path / "a"), normalize="imagenet", **kw)
    assert a.metrics["runs"][0]["normalize"] == "imagenet" and a.metrics["options"]["normalize"] == "imagenet"
    assert torch.load(tmp_path / "a" / "best.pt", weights_only=True)["normalize"] == "imagenet"
    # Fine-tuning that checkpoint with --normalize auto feeds it inputs normalised as it was trained.
    b = train(m, out_dir=str(tmp_path / "b"), pretrained=str(tmp_path / "a" / "best.pt"), **kw)
    assert b.metrics["runs"][0]["normalize"] == "imagenet"
    # A fresh 1-channel model has nothing to match: no normalisation.
    assert train(m, out_dir=str(tmp_path / "c"), **kw).metrics["runs"][0]["normalize"] is None


TINY = ["--arch", "small", "--epochs", "1", "--image-size", "16", "--device", "cpu", "--bootstrap", "20", "-q"]


def test_cross_validation_refuses_before_training_what_would_break_it_after(folded, tmp_path, runner):
    import shutil

    m, root, path = folded
    # A fold whose validation images are all unreadable: exit 2 before any training (it was an internal error at the end).
    copy = tmp_path / "img"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("*.parquet"))
    for rel in m.frame.loc[m.frame["fold"] == 1, "path"]:
        (copy / rel).unlink()
    r = runner.invoke(main, ["train", str(path), "--root", str(copy), "--fold", "all", "--skip-missing", *TINY, "-o", str(tmp_path / "a")])
    assert r.exit_code == 2 and "Error: fold-1: no validation rows are left after skipping" in r.output
    assert not (tmp_path / "a").exists()
    # A label named like a predictions column: refused before the first epoch, not after the last.
    f = m.frame.rename(columns={"circle": "part"})
    write_manifest(Manifest(f, labels=("square", "part", "stripes"), root=m.root), tmp_path / "part.parquet")
    r = runner.invoke(main, ["train", str(tmp_path / "part.parquet"), "--fold", "0", *TINY, "-o", str(tmp_path / "b")])
    assert r.exit_code == 2 and "Error: label column(s) 'part' have the name of a predictions column" in r.output
    assert not (tmp_path / "b").exists()


def test_resampled_copies_never_validate_and_every_row_is_counted(folded, tmp_path, runner):
    m, root, path = folded
    ros = tmp_path / "ros.parquet"
    assert runner.invoke(main, ["resample", str(path), "--strategy", "ml-ros", "--percent", "50", "-o", str(ros), "-q"]).exit_code == 0
    r = runner.invoke(main, ["train", str(ros), "--fold", "all", *TINY, "-o", str(tmp_path / "cv")])
    assert r.exit_code == 0, r.output
    assert "copies made by mdprep resample (never validated or tested)" in r.output
    pred = pd.read_parquet(tmp_path / "cv" / "predictions.parquet")
    assert not pred["image_id"].str.contains("#copy").any()
    originals = m.frame[m.frame["split"] != "test"]
    assert sorted(pred.loc[pred["part"] == "val", "image_id"]) == sorted(originals["image_id"])
    metrics = json.loads((tmp_path / "cv" / "metrics.json").read_text())
    unused = metrics["plan"]["unused_rows"]
    clones = int((pd.read_parquet(ros)["copy_index"] > 0).sum())
    assert unused["copies made by mdprep resample (never validated or tested)"] == clones
    assert unused["test (test; scored only with --evaluate-test)"] == int((m.frame["split"] == "test").sum())


def test_weights_files_must_fit_the_rows_they_train(shapes, folded, tmp_path, runner):
    m, root = shapes
    path = tmp_path / "split.parquet"
    write_manifest(m, path)
    for split in ("val", "all", "train"):
        assert runner.invoke(main, ["weights", str(path), "--split", split, "-o", str(tmp_path / f"{split}.json"), "-q"]).exit_code == 0
    base = ["train", str(path), *TINY]
    r = runner.invoke(main, [*base, "--weights", str(tmp_path / "val.json"), "-o", str(tmp_path / "a")])
    assert r.exit_code == 2 and "Error: " in r.output and "was counted on the 'val' rows, which validate or test this run" in r.output
    r = runner.invoke(main, [*base, "--weights", str(tmp_path / "all.json"), "-o", str(tmp_path / "b")])
    assert r.exit_code == 0 and "was counted on every row" in r.output
    fm, _, fpath = folded
    assert runner.invoke(main, ["weights", str(fpath), "--fold", "0", "-o", str(tmp_path / "f0.json"), "-q"]).exit_code == 0
    r = runner.invoke(main, [*base, "--weights", str(tmp_path / "f0.json"), "-o", str(tmp_path / "c")])
    assert r.exit_code == 2 and "was counted on the training part of fold 0, but this run trains on the 'train' split" in r.output
    # Counted on another manifest file: a warning naming both.
    r = runner.invoke(main, ["train", str(fpath), "--fold", "0", *TINY, "--weights", str(tmp_path / "train.json"), "-o", str(tmp_path / "d")])
    assert "was counted on another manifest file" in r.output


def test_leakage_allowed_is_recorded_and_intervals_need_enough_patients(shapes, tmp_path, runner):
    m, root = shapes
    f = m.frame.copy()
    f.loc[f.index[0], "patient_id"] = f.loc[f["split"] == "val", "patient_id"].iloc[0]  # one patient in train and val
    path = tmp_path / "leak.parquet"
    write_manifest(m.with_frame(f), path)
    r = runner.invoke(main, ["train", str(path), *TINY, "--allow-leakage", "-o", str(tmp_path / "a")])
    assert r.exit_code == 0 and "training anyway (--allow-leakage)" in r.output and "or pass --allow-leakage" not in r.output
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics["leakage"] == {"patients_shared": 1, "allowed": True} and metrics["options"]["allow_leakage"] is True
    assert metrics["runs"][0]["val"]["ci"]["square"] is not None  # 75 validation patients
    # Three validation patients: an AUC, but no interval worth the name.
    few = m.frame[(m.frame["split"] != "val") | m.frame["patient_id"].isin(m.frame.loc[m.frame["split"] == "val", "patient_id"].unique()[:3])]
    write_manifest(m.with_frame(few), tmp_path / "few.parquet")
    r = runner.invoke(main, ["train", str(tmp_path / "few.parquet"), *TINY, "-o", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    val = json.loads((tmp_path / "b" / "metrics.json").read_text())["runs"][0]["val"]
    assert val["patients"] == 3 and all(v is None for v in val["ci"].values()) and val["mean_auc_ci"] is None


def test_test_split_option_and_evaluate_test_without_test_rows(shapes, tmp_path, runner):
    m, root = shapes
    f = m.frame.copy()
    f["split"] = f["split"].replace({"test": "Holdout"})
    path = tmp_path / "holdout.parquet"
    write_manifest(m.with_frame(f), path)
    r = runner.invoke(main, ["train", str(path), *TINY, "--evaluate-test", "-o", str(tmp_path / "a")])
    assert r.exit_code == 0 and "--evaluate-test: no rows have split 'test', so nothing is tested; pass --test-split NAME" in r.output
    assert f"({int((f['split'] == 'Holdout').sum())} Holdout)" in r.output  # and the Holdout rows, used by no run, are counted
    r = runner.invoke(main, ["train", str(path), *TINY, "--evaluate-test", "--test-split", "Holdout", "--bootstrap", "0", "-o", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics["runs"][0]["rows"]["test"] == int((f["split"] == "Holdout").sum()) and metrics["plan"]["test_split"] == "Holdout"
    assert metrics["runs"][0]["test"]["ci"]["square"] is None and metrics["runs"][0]["test"]["auc"]["square"] is not None

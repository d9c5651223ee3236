"""The Keras path of the trainer (mdprep.keras): Keras 3 on the torch backend."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import mdprep.keras as mk
from mdprep.crossval import FitOptions
from mdprep.errors import InputError, UsageError
from mdprep.manifest import Manifest
from mdprep.splitting import split_manifest
from mdprep.synthetic import SHAPE_LABELS, write_shapes_dataset
from mdprep.training import masked_weighted_bce as torch_masked_weighted_bce
from mdprep.training.data import ManifestDataset
from mdprep.training.loop import DivergedError, roc_auc_per_label
from mdprep.weights import compute_weights, weighted_bce, weights_from_document

keras = mk.keras
# Keras' torch backend calls np.array on torch tensors, which numpy 2 warns about on every prediction.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
LABELS = list(SHAPE_LABELS)
HISTORY_KEYS = {"epoch", "train_loss", "seconds", "images_per_second", "data_wait_share", "val_loss", "val_auc", "val_mean_auc"}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("kshapes")
    frame = write_shapes_dataset(root, images=240, size=32, seed=0, dicom_every=9)
    m = split_manifest(Manifest(frame, labels=SHAPE_LABELS, root=str(root)), ratios=(0.7, 0.15, 0.15), seed=0).manifest
    parts = {k: m.frame[m.frame["split"] == k] for k in ("train", "val", "test")}
    return m, parts, str(root)


def _fit(parts, root, out, w_pos=None, w_neg=None, **options):
    ones = np.ones(len(LABELS), dtype=np.float32)
    kw = dict(arch="small", epochs=1, batch_size=32, image_size=32, lr=3e-3, device="cpu", seed=0)
    kw.update(options)
    return mk.fit(parts, root=root, labels=LABELS, w_pos=ones if w_pos is None else w_pos, w_neg=ones if w_neg is None else w_neg,
                  options=FitOptions(**kw), out_dir=str(out))


def test_small_keras_model_learns_the_shapes(shapes, tmp_path):
    m, parts, root = shapes
    _, w_pos, w_neg = weights_from_document(compute_weights(m).document(), LABELS, source="weights.json")
    batches, epochs = [], []
    r = mk.fit(parts, root=root, labels=LABELS, w_pos=w_pos, w_neg=w_neg, out_dir=str(tmp_path / "run"),
               options=FitOptions(arch="small", epochs=3, batch_size=32, image_size=32, lr=3e-3, device="cpu", seed=0),
               on_batch=lambda step, steps: batches.append((step, steps)), on_epoch=epochs.append)
    assert r.device == "cpu" and r.details["backend"] == "torch" and r.details["framework"] == "keras"
    assert len(r.history) == 3 and r.history == epochs and all(set(e) == HISTORY_KEYS for e in r.history)
    steps = len(parts["train"]) // 32  # the last partial batch is dropped, as in the PyTorch path
    assert batches[:steps] == [(i, steps) for i in range(1, steps + 1)] and len(batches) == 3 * steps
    best = max(r.history, key=lambda e: e["val_mean_auc"])
    assert r.best_epoch == best["epoch"] and best["val_mean_auc"] >= 0.85  # the acceptance criterion
    assert set(best["val_auc"]) == set(LABELS) and best["images_per_second"] > 0
    # Probabilities of the kept weights, in frame order, for val and test.
    assert set(r.probabilities) == {"val", "test"}
    for part in ("val", "test"):
        p = r.probabilities[part]
        assert p.dtype == np.float32 and p.shape == (len(parts[part]), len(LABELS)) and ((p >= 0) & (p <= 1)).all()
    val = mk.ManifestPyDataset(parts["val"], root, LABELS, batch_size=64, size=32, channels=1)
    aucs = roc_auc_per_label(r.probabilities["val"], val.targets, val.masks, LABELS)
    assert np.mean([aucs[k] for k in LABELS]) == pytest.approx(best["val_mean_auc"], abs=1e-9)
    # The checkpoint is a plain Keras model (no mdprep needed to read it) that reproduces them.
    assert r.checkpoint == str(tmp_path / "run" / "best.keras") and os.listdir(tmp_path / "run") == ["best.keras"]
    net = keras.saving.load_model(r.checkpoint)
    assert net.input_shape == (None, 32, 32, 1) and net.output_shape == (None, len(LABELS))
    logits = np.asarray(net.predict(val, verbose=0), dtype=np.float64)
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), r.probabilities["val"], atol=1e-6)


def test_same_seed_same_run_whatever_the_loader_threads(shapes, tmp_path):
    _, parts, root = shapes
    small = {k: v.head(72) for k, v in parts.items()}
    a = _fit(small, root, tmp_path / "a", seed=5, image_size=16)
    b = _fit(small, root, tmp_path / "b", seed=5, image_size=16, workers=3)  # batches fetched by 3 threads, in any order
    assert a.details["loader_threads"] == 0 and b.details["loader_threads"] == 3
    ea, eb = a.history[0], b.history[0]
    assert ea["train_loss"] == eb["train_loss"] and ea["val_auc"] == eb["val_auc"] and ea["val_loss"] == eb["val_loss"]
    np.testing.assert_array_equal(a.probabilities["test"], b.probabilities["test"])


def test_dataset_batches_hold_the_pytorch_pixels_and_the_masks(shapes):
    _, parts, root = shapes
    f = parts["train"].head(10).copy()
    f.loc[f.index[0], "square"] = -1
    f.loc[f.index[1], "circle"] = pd.NA
    ds = mk.ManifestPyDataset(f, root, LABELS, batch_size=4, size=24, channels=3)
    assert len(ds) == 3 and isinstance(ds, keras.utils.PyDataset)
    x, y = ds[0]
    assert x.dtype == np.float32 and x.shape == (4, 24, 24, 3) and y.dtype == np.float32 and y.shape == (4, 6)
    assert ds[2][0].shape == (2, 24, 24, 3)
    # y = targets, then masks: uncertain (-1) and missing labels are masked out, and count as 0 targets.
    values = f[LABELS].to_numpy(dtype="float64", na_value=np.nan)[:4]
    np.testing.assert_array_equal(y[:, :3], (values == 1).astype(np.float32))
    np.testing.assert_array_equal(y[:, 3:], ((values == 1) | (values == 0)).astype(np.float32))
    assert y[0, 3] == 0 and y[1, 4] == 0 and y[0, 0] == 0
    # Identical pixels to the PyTorch dataset's (CHW there, HWC here), DICOM rows included.
    torch_ds = ManifestDataset(f, root, LABELS, size=24, channels=3)
    assert f["path"].str.endswith(".dcm").any()
    for i in range(10):
        np.testing.assert_array_equal(ds[i // 4][0][i % 4], torch_ds[i][0].permute(1, 2, 0).numpy())
    # Shuffled epochs: a new order each epoch, the same for the same seed; drop_last leaves out the partial batch.
    sh = mk.ManifestPyDataset(f, root, LABELS, batch_size=4, size=24, shuffle=True, seed=1, drop_last=True)
    assert len(sh) == 2 and sh.rows_per_epoch == 8
    first = sh.order.copy()
    sh.set_epoch(1)
    assert sorted(sh.order) == list(range(10)) and list(sh.order) != list(first)
    sh.set_epoch(0)
    assert list(sh.order) == list(first)


def test_augmentation_is_bounded_and_seeded_by_epoch_and_batch(shapes):
    _, parts, root = shapes
    f = parts["train"].head(8)
    kw = dict(batch_size=4, size=32, augment="cxr-safe", seed=3)
    plain = mk.ManifestPyDataset(f, root, LABELS, batch_size=4, size=32)[1][0]
    a = mk.ManifestPyDataset(f, root, LABELS, **kw)
    first = a[1][0]
    assert float(first.min()) >= 0 and float(first.max()) <= 1 and 0.01 < float(np.abs(first - plain).mean()) < 0.4
    a[0]  # fetching another batch first (as a loader thread may) changes nothing
    np.testing.assert_array_equal(a[1][0], first)
    a.set_epoch(1)
    assert not np.array_equal(a[1][0], first)
    with pytest.raises(UsageError, match="unknown --augment 'flip'; choose one of cxr-safe, none"):
        mk.ManifestPyDataset(f, root, LABELS, augment="flip")


def test_loss_equals_the_torch_loss_and_the_numpy_reference():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3, size=(32, 3))
    coded = rng.choice([1.0, 0.0, -1.0, np.nan], size=(32, 3))
    coded[:, 2] = np.where(np.isin(coded[:, 2], [0.0, 1.0]), -1.0, coded[:, 2])  # a label with no usable row
    w_pos, w_neg = np.array([2.0, 5.0, 0.7]), np.array([0.6, 0.5, 1.0])
    targets = (coded == 1).astype(np.float32)
    masks = ((coded == 1) | (coded == 0)).astype(np.float32)
    got = float(keras.ops.convert_to_numpy(mk.masked_weighted_bce(w_pos, w_neg)(np.concatenate([targets, masks], 1), logits.astype(np.float32))))
    ref = weighted_bce(logits, coded, w_pos, w_neg)
    t = torch_masked_weighted_bce(torch.tensor(logits), torch.tensor(targets, dtype=torch.float64), torch.tensor(masks, dtype=torch.float64),
                                  torch.tensor(w_pos), torch.tensor(w_neg))
    assert ref > 0 and got == pytest.approx(ref, rel=1e-5) and got == pytest.approx(float(t), rel=1e-5)
    loss = mk.MaskedWeightedBCE.from_config(mk.masked_weighted_bce(w_pos, w_neg).get_config())
    assert loss.w_pos == [2.0, 5.0, 0.7] and loss.w_neg == [0.6, 0.5, 1.0]


def test_keras_on_another_backend_is_refused(shapes, tmp_path, monkeypatch):
    _, parts, root = shapes
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(UsageError, match=r"already imported with the 'jax' backend; set KERAS_BACKEND=torch before Keras is first imported"):
        _fit(parts, root, tmp_path / "run")
    monkeypatch.undo()
    # KERAS_BACKEND naming another backend is refused before Keras is imported.
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": os.pathsep.join(sys.path)}
    res = subprocess.run([sys.executable, "-c", "import sys, mdprep.keras; print('keras' in sys.modules)"], env=env, capture_output=True, text=True)
    assert res.returncode == 1 and "mdprep.errors.UsageError: mdprep.keras runs Keras 3 on its torch backend, but KERAS_BACKEND is 'jax'" in res.stderr


def test_bad_options_are_refused(shapes, tmp_path):
    _, parts, root = shapes
    with pytest.raises(UsageError, match=r"unknown --arch 'vgg16' for --framework keras; choose one of densenet121, resnet50, small"):
        _fit(parts, root, tmp_path / "run", arch="vgg16")
    with pytest.raises(UsageError, match=r"--image-size 16: the Keras densenet121 takes images of 32 pixels or more"):
        _fit(parts, root, tmp_path / "run", arch="densenet121", image_size=16)
    with pytest.raises(UsageError, match="unknown --augment 'mixup'"):
        _fit(parts, root, tmp_path / "run", augment="mixup")
    with pytest.raises(UsageError, match="--device 'tpu': choose auto, cpu or cuda"):
        _fit(parts, root, tmp_path / "run", device="tpu")
    with pytest.raises(UsageError, match="no train rows to fit on"):
        _fit({**parts, "train": parts["train"].head(0)}, root, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_imagenet_preprocessing_matches_keras_applications():
    grey = np.random.default_rng(0).random((2, 8, 8, 1)).astype(np.float32)
    rgb = np.repeat(grey, 3, axis=-1)
    for arch, module in (("densenet121", keras.applications.densenet), ("resnet50", keras.applications.resnet)):
        got = keras.ops.convert_to_numpy(mk.imagenet_preprocess(arch)(rgb))
        np.testing.assert_allclose(got, module.preprocess_input(rgb * 255.0), rtol=1e-5, atol=1e-4)


def test_pretrained_weights_load_by_format_and_freeze(tmp_path):
    donor = mk.build_model("small", 5, image_size=32)
    backbone = donor.get_layer("backbone")
    backbone.save_weights(tmp_path / "bb.weights.h5")
    backbone.save(tmp_path / "legacy.h5")  # the legacy HDF5 format of the ImageNet files
    donor.save(tmp_path / "best.keras")
    expected = [np.asarray(w) for w in backbone.get_weights()]
    for name, fmt in (("bb.weights.h5", "weights.h5"), ("legacy.h5", "h5 by layer name"), ("best.keras", "keras")):
        model = mk.build_model("small", 3, image_size=32)
        report = mk.load_pretrained(model, str(tmp_path / name), "small")
        assert report == {"file": str(tmp_path / name), "format": fmt, "loaded": len(expected)}
        for got, want in zip(model.get_layer("backbone").get_weights(), expected):
            np.testing.assert_array_equal(got, want)
    model = mk.build_model("small", 3, image_size=32)
    assert mk.freeze_backbone(model) == 12 and [w.path for w in model.trainable_weights] == ["head/kernel", "head/bias"]
    # Files that cannot be used name themselves and what was expected.
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    other.save_weights(tmp_path / "other.weights.h5")
    with pytest.raises(InputError, match=r"other.weights.h5 does not fit the Keras small backbone .*expected a Keras weights file of the small backbone"):
        mk.load_pretrained(model, str(tmp_path / "other.weights.h5"), "small")
    with pytest.raises(InputError, match=r"'nope.h5' does not exist"):
        mk.load_pretrained(model, "nope.h5", "small")
    (tmp_path / "w.pt").write_bytes(b"PK\x03\x04")
    with pytest.raises(InputError, match=r"not a Keras weights file \(.weights.h5, .h5, .hdf5 or .keras\)"):
        mk.load_pretrained(model, str(tmp_path / "w.pt"), "small")
    backbone.set_weights([np.full_like(w, np.nan) for w in expected])
    backbone.save_weights(tmp_path / "nan.weights.h5")
    with pytest.raises(InputError, match=r"holds NaN or infinite values in 20 variable\(s\)"):
        mk.load_pretrained(model, str(tmp_path / "nan.weights.h5"), "small")


def test_fit_from_imagenet_weights_with_a_frozen_backbone(shapes, tmp_path):
    from keras.src.legacy.saving import legacy_h5_format

    import h5py

    _, parts, root = shapes
    # The layout of the ImageNet files keras.applications downloads: legacy HDF5, with the 1,000-class top.
    imagenet = keras.applications.ResNet50(include_top=True, weights=None)
    path = tmp_path / "resnet50_weights_tf_dim_ordering_tf_kernels.h5"
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, imagenet)
    small = {"train": parts["train"].head(16), "val": parts["val"].head(0), "test": parts["test"].head(0)}
    r = _fit(small, root, tmp_path / "run", arch="resnet50", batch_size=8, pretrained=str(path), freeze=True)
    assert r.best_epoch == 1 and set(r.history[0]) == {"epoch", "train_loss", "seconds", "images_per_second", "data_wait_share"}
    assert r.probabilities == {}  # no val or test rows
    assert r.details["pretrained"] == {"file": str(path), "format": "h5 by layer name", "loaded": 318}
    assert r.details["normalize"] == "imagenet" and r.details["channels"] == 3 and r.details["frozen_tensors"] == 212
    net = keras.saving.load_model(r.checkpoint)
    assert net.layers[1].name == "imagenet_preprocess" and net.input_shape == (None, 32, 32, 3)
    for layer in ("conv1_conv", "conv5_block3_3_bn"):  # frozen: BatchNorm statistics included
        for got, want in zip(net.get_layer("backbone").get_layer(layer).get_weights(), imagenet.get_layer(layer).get_weights()):
            np.testing.assert_array_equal(got, want)
    # Loading by name must not leave a backbone partly random: every layer with weights must be in the file.
    with pytest.raises(InputError, match=r"does not fit the Keras small backbone: 8 of its 8 layers with weights are missing from the file \(block1_conv, block1_bn, block2_conv, ...\)"):
        mk.load_pretrained(mk.build_model("small", 3, image_size=32), str(path), "small")


def test_a_diverging_run_stops_with_the_step(shapes, tmp_path):
    _, parts, root = shapes
    huge = np.full(len(LABELS), 3e38, dtype=np.float32)
    with pytest.raises(DivergedError, match=r"the training loss became inf at epoch 1, step 1; lower the learning rate \(now 0.003\), or check the class weights \(largest 3e\+38\)"):
        _fit({k: v.head(40) for k, v in parts.items()}, root, tmp_path / "run", w_pos=huge, w_neg=huge, image_size=16)


def test_mdprep_train_framework_keras_writes_what_the_pytorch_path_writes(shapes, tmp_path, runner):
    import json

    from mdprep.cli import main
    from mdprep.manifest import write_manifest

    m, _, root = shapes
    folded = split_manifest(m.with_frame(m.frame.drop(columns=["split"])), ratios=(0.8, 0.2), folds=2, seed=0).manifest
    path = tmp_path / "folds.parquet"
    write_manifest(folded, path)
    args = ["train", str(path), "--fold", "all", "--arch", "small", "--epochs", "1", "--image-size", "32", "--device", "cpu",
            "--evaluate-test", "--bootstrap", "20", "-q"]
    outs = {}
    for framework in ("keras", "torch"):
        r = runner.invoke(main, [*args, "--framework", framework, "-o", str(tmp_path / framework)])
        assert r.exit_code == 0, r.output
        outs[framework] = pd.read_parquet(tmp_path / framework / "predictions.parquet")
    assert (tmp_path / "keras" / "fold-0" / "best.keras").is_file() and (tmp_path / "keras" / "fold-1" / "best.keras").is_file()
    keras_pred, torch_pred = outs["keras"], outs["torch"]
    assert list(keras_pred.columns) == list(torch_pred.columns)
    assert keras_pred[["image_id", "split", "fold", "part"]].equals(torch_pred[["image_id", "split", "fold", "part"]])
    metrics = json.loads((tmp_path / "keras" / "metrics.json").read_text())
    assert metrics["framework"] == "keras" and metrics["provenance"]["versions"]["keras"]
    assert metrics["out_of_fold"]["rows"] == int((folded.frame["split"] != "test").sum())
    r = runner.invoke(main, [*args, "--framework", "keras", "--arch", "resnet18", "-o", str(tmp_path / "bad")])
    assert r.exit_code == 2 and "Error: unknown --arch 'resnet18' for --framework keras; choose one of densenet121, resnet50, small" in r.output

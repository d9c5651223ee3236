"""Models (ResNet-50, torchvision's models), ImageNet normalisation, DICOM display windows,
the dataset in a plain torch loop, and per-row sampling weights."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from collections import OrderedDict

import numpy as np
import pandas as pd
import pytest
import torch
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from torch import nn

from mdprep.errors import InputError, UsageError
from mdprep.imaging import decode_grey, grey_8bit, load_pixels, unit_grey, voi_kind, voi_unit
from mdprep.manifest import Manifest
from mdprep.synthetic import SHAPE_LABELS, _write_dicom_pixels, write_shapes_dataset
from mdprep.training import ManifestDataset, build_model, normalise, sample_weights
from mdprep.training.data import normalisation_for
from mdprep.training.models import ARCHITECTURES, check_arch, freeze_backbone, head_names, load_pretrained


# ---------------------------------------------------------------- ResNet-50


def test_resnet50_has_torchvisions_state_dict_layout(tmp_path):
    imagenet = build_model("resnet50", 1000)
    state = imagenet.state_dict()
    # torchvision's resnet50: 320 state-dict tensors, 25,557,032 parameters (its docs' num_params), 2,049,000 in fc.
    assert len(state) == 320
    assert sum(p.numel() for p in imagenet.parameters()) == 25_557_032
    assert sum(v.numel() for k, v in state.items() if k.startswith("fc.")) == 2048 * 1000 + 1000
    assert [len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5)] == [3, 4, 6, 3]
    expected = {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.running_mean": (64,),
        "layer1.0.conv1.weight": (64, 64, 1, 1),
        "layer1.0.conv3.weight": (256, 64, 1, 1),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer1.0.downsample.1.num_batches_tracked": (),
        "layer1.2.bn3.weight": (256,),
        "layer2.0.conv2.weight": (128, 128, 3, 3),
        "layer2.0.downsample.0.weight": (512, 256, 1, 1),
        "layer3.5.conv3.weight": (1024, 256, 1, 1),
        "layer4.0.downsample.1.running_var": (2048,),
        "layer4.2.bn3.bias": (2048,),
        "fc.weight": (1000, 2048),
        "fc.bias": (1000,),
    }
    assert {k: tuple(state[k].shape) for k in expected} == expected
    assert not any(k.startswith(("layer1.1.downsample", "layer4.1.downsample", "layer4.3")) for k in state)
    # The stride sits in the 3x3 convolution (torchvision's ResNet v1.5): 224 -> 7 before pooling.
    assert imagenet.layer2[0].conv2.stride == (2, 2) and imagenet.layer2[0].conv1.stride == (1, 1)
    torch.save(state, tmp_path / "resnet50-imagenet.pt")
    model = build_model("resnet50", 5)
    report = load_pretrained(model, str(tmp_path / "resnet50-imagenet.pt"), "resnet50")
    assert report["skipped"] == ["fc.bias", "fc.weight"] and report["loaded"] == 318 and report["unexpected"] == []
    assert torch.equal(model.layer3[5].conv3.weight, imagenet.layer3[5].conv3.weight)
    model.eval()
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 5)
    assert freeze_backbone(model) == 161 - 2


def test_every_architecture_names_its_head():
    assert ARCHITECTURES == ("densenet121", "resnet18", "resnet50", "small")
    heads = {arch: head_names(build_model(arch, 2)) for arch in ("resnet18", "resnet50", "small")}
    assert heads == {"resnet18": ("fc.",), "resnet50": ("fc.",), "small": ("classifier.",)}
    with pytest.raises(UsageError, match=r"unknown --arch 'resnet51'; choose one of densenet121, resnet18, resnet50, small, or tv:NAME"):
        build_model("resnet51", 2)
    with pytest.raises(UsageError, match="names no torchvision model"):
        check_arch("tv:")


# ---------------------------------------------------------------- tv:NAME


def test_torchvision_archs_say_why_when_torchvision_does_not_import(monkeypatch):
    if importlib.util.find_spec("torchvision") is not None:
        monkeypatch.setitem(sys.modules, "torchvision", None)  # where it is installed, make it fail to import
    for call in (lambda: build_model("tv:resnet34", 3), lambda: check_arch("tv:resnet34")):
        with pytest.raises(UsageError) as info:
            call()
        msg = info.value.message
        assert msg.startswith("--arch tv:resnet34 needs torchvision, which is not importable here (")
        assert "ModuleNotFoundError" in msg or "ImportError" in msg
        assert msg.endswith("choose a plain-torch --arch: densenet121, resnet18, resnet50, small")


class _TinyResNet(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.conv(x), 1), 1))


class _TinyViT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.heads = nn.Sequential(OrderedDict(pre_logits=nn.Linear(8, 8), act=nn.Tanh(), head=nn.Linear(8, 1000)))

    def forward(self, x):
        return self.heads(torch.flatten(nn.functional.adaptive_avg_pool2d(self.conv(x), 1), 1))


class _TinySqueezeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 8, 3)
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(8, 1000, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


class _TinyInception(_TinyResNet):
    def __init__(self) -> None:
        super().__init__()
        self.aux_logits = True
        self.AuxLogits = nn.Linear(8, 1000)

    def forward(self, x):
        out = super().forward(x)
        return (out, out) if self.training and self.aux_logits else out


class _NoHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Conv2d(3, 8, 3)


@pytest.fixture
def fake_torchvision(monkeypatch):
    """A stand-in ``torchvision`` whose ``models.get_model`` builds tiny models shaped like torchvision's."""
    calls = []
    builders = {"tinyresnet": _TinyResNet, "tinyvit": _TinyViT, "tinysqueezenet": _TinySqueezeNet, "tinyinception": _TinyInception, "nohead": _NoHead}

    def get_model(name, **config):
        calls.append((name, config))
        if name not in builders:
            raise ValueError(f"Unknown model {name}")
        return builders[name]()

    module = types.ModuleType("torchvision")
    module.models = types.SimpleNamespace(get_model=get_model)
    monkeypatch.setitem(sys.modules, "torchvision", module)
    return calls


@pytest.mark.parametrize(
    "name, head, layer",
    [("tinyresnet", "fc.", lambda m: m.fc), ("tinyvit", "heads.head.", lambda m: m.heads.head), ("tinysqueezenet", "classifier.1.", lambda m: m.classifier[1])],
)
def test_torchvision_models_get_a_new_head(fake_torchvision, tmp_path, name, head, layer):
    donor = sys.modules["torchvision"].models.get_model(name)
    torch.save(donor.state_dict(), tmp_path / "imagenet.pt")
    model = build_model(f"tv:{name}", 3)
    assert fake_torchvision[-1] == (name, {"weights": None})
    assert head_names(model) == (head,) and model.in_channels == 3
    new = layer(model)
    assert (new.out_channels if isinstance(new, nn.Conv2d) else new.out_features) == 3
    model.eval()
    assert model(torch.rand(2, 3, 16, 16)).shape == (2, 3)
    report = load_pretrained(model, str(tmp_path / "imagenet.pt"), f"tv:{name}")
    assert report["skipped"] == [f"{head}bias", f"{head}weight"] and report["missing"] == [f"{head}bias", f"{head}weight"]
    assert torch.equal(next(model.parameters()), next(donor.parameters()))
    freeze_backbone(model)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [f"{head}weight", f"{head}bias"]


def test_torchvision_models_refused_with_the_reason(fake_torchvision):
    with pytest.raises(UsageError, match=r"^--arch tv:resnet999: torchvision cannot build 'resnet999' \(Unknown model resnet999\); torchvision.models.list_models\(\)"):
        build_model("tv:resnet999", 3)
    with pytest.raises(UsageError, match=r"^--arch tv:nohead: _NoHead has no fc, classifier, heads or head layer"):
        build_model("tv:nohead", 3)
    check_arch("tv:tinyresnet")  # importable: accepted before anything is built
    model = build_model("tv:tinyinception", 4)
    assert model.AuxLogits is None and not model.aux_logits
    assert model.train()(torch.rand(1, 3, 8, 8)).shape == (1, 4)  # logits alone, also in training mode


# ---------------------------------------------------------------- normalisation


def test_imagenet_normalisation():
    images = torch.rand(2, 3, 4, 4)
    out = normalise(images, "imagenet")
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(out, (images - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))
    assert torch.allclose(normalise(images[0], "imagenet"), out[0])  # one image or a batch
    grey = torch.full((1, 2, 2), 0.449)
    assert torch.allclose(normalise(grey, "imagenet"), torch.zeros(1, 2, 2), atol=1e-6)
    assert torch.allclose(normalise(torch.ones(1, 1, 1), "imagenet"), torch.tensor((1 - 0.449) / (0.678 / 3)))
    assert normalise(images, None) is images and normalise(images, "none") is images
    with pytest.raises(UsageError, match="needs 1 or 3 channels"):
        normalise(torch.rand(2, 4, 4), "imagenet")
    with pytest.raises(UsageError, match="unknown normalisation 'imagenet21k'"):
        normalise(images, "imagenet21k")
    assert [normalisation_for(o, pretrained=p, channels=c) for o, p, c in
            [("auto", True, 3), ("auto", False, 3), ("auto", True, 1), ("none", True, 3), ("imagenet", False, 1), (None, True, 3)]] == \
        ["imagenet", None, None, None, "imagenet", "imagenet"]
    with pytest.raises(UsageError, match="unknown --normalize 'z-score'; choose one of auto, imagenet, none"):
        normalisation_for("z-score", pretrained=True, channels=3)


# ---------------------------------------------------------------- DICOM display windows


def _dicom(tmp_path, name, pixels, **tags):
    """A 12-bit MONOCHROME2 DICOM (rescale intercept -1024) with extra tags."""
    _write_dicom_pixels(tmp_path / name, np.asarray(pixels, dtype=np.uint16), "P1")
    ds = dcmread(tmp_path / name)
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(tmp_path / name)
    return str(tmp_path / name)


RAW = np.array([[0, 1548, 1800, 2048], [2300, 2548, 3000, 4095]])  # minus 1024 after the modality LUT


def test_window_centre_and_width_set_the_display_range(tmp_path):
    # Window 1024 +- 500 in modality units (raw 1548..2548); outside it clips to 0 and 1.
    path = _dicom(tmp_path, "w.dcm", RAW, WindowCenter="1024", WindowWidth="1000")
    grey = decode_grey(path)
    assert grey.dtype == np.float32 and grey.shape == RAW.shape
    assert grey[0, 0] == 0.0 and grey[0, 1] == 0.0 and grey[1, 1] == pytest.approx(1.0, abs=2e-3) and grey[1, 3] == 1.0
    assert grey[0, 3] == pytest.approx(0.5, abs=2e-3)  # the centre
    assert np.array_equal(grey, voi_unit(load_pixels(path)[0], dcmread(path)))  # the table of stored values gives the same
    assert grey[0, 2] == pytest.approx(0.5 - 248 / 999, abs=2e-3) and grey[1, 0] == pytest.approx(0.5 + 252 / 999, abs=2e-3)
    # The same window on MONOCHROME1 is inverted; a file without a window keeps its own range.
    inverted = decode_grey(_dicom(tmp_path, "m1.dcm", RAW, WindowCenter="1024", WindowWidth="1000", PhotometricInterpretation="MONOCHROME1"))
    assert np.allclose(inverted, 1 - grey)
    plain = _dicom(tmp_path, "plain.dcm", RAW)
    assert np.array_equal(decode_grey(plain), unit_grey(*load_pixels(plain)))
    # Hashing's pixels do not change: load_pixels gives the modality values, grey_8bit the image's own range.
    arr, invert = load_pixels(path)
    assert np.array_equal(arr, RAW - 1024) and not invert
    assert np.array_equal(grey_8bit(arr), grey_8bit(*load_pixels(plain)))
    sigmoid = decode_grey(_dicom(tmp_path, "s.dcm", RAW, WindowCenter="1024", WindowWidth="1000", VOILUTFunction="SIGMOID"))
    assert sigmoid[0, 3] == pytest.approx(0.5) and sigmoid[0, 0] < 0.001 and sigmoid[1, 3] > 0.999
    # Several windows: the first; a width pydicom refuses (below 1): the image's own range.
    first = decode_grey(_dicom(tmp_path, "two.dcm", RAW, WindowCenter=["1024", "0"], WindowWidth=["1000", "10"]))
    assert np.allclose(first, grey)
    broken = decode_grey(_dicom(tmp_path, "broken.dcm", RAW, WindowCenter="1024", WindowWidth="0"))
    assert np.array_equal(broken, unit_grey(*load_pixels(plain)))


def test_voi_lut_sequence_wins_and_scales_by_its_own_entries(tmp_path):
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 16])  # LUT Descriptor: 4096 entries from 0, nominally 16 bits
    item.add_new(0x00283006, "US", [min(4095, max(0, 4 * (x - 500))) for x in range(4096)])  # entries stop at 4095
    path = _dicom(tmp_path, "lut.dcm", RAW, WindowCenter="1024", WindowWidth="1000", VOILUTSequence=Sequence([item]))
    ds = dcmread(path)
    assert voi_kind(ds) == "lut"
    grey = decode_grey(path)
    modality = RAW - 1024  # the LUT maps modality values; negative ones take its first entry
    expected = np.clip(4 * (np.clip(modality, 0, 4095) - 500), 0, 4095) / 4095
    assert np.allclose(grey, expected, atol=1e-6) and grey.max() == 1.0


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "examples_overlay.dcm", "MR_small_RLE.dcm"])
def test_pydicom_test_files_decode_into_the_unit_range(name):
    path = get_testdata_file(name, download=False)
    ds = dcmread(path)
    grey = decode_grey(path)
    assert grey.ndim == 2 and np.isfinite(grey).all() and grey.min() >= 0 and grey.max() <= 1 and grey.std() > 0.05
    if voi_kind(ds) is None:  # CT_small: no window, so its own range
        assert np.array_equal(grey, unit_grey(*load_pixels(path)))
    else:  # the first window, by hand
        centre = float(ds.WindowCenter[0] if ds["WindowCenter"].VM > 1 else ds.WindowCenter) - 0.5
        width = float(ds.WindowWidth[0] if ds["WindowWidth"].VM > 1 else ds.WindowWidth) - 1
        arr = load_pixels(path)[0].astype(np.float64)
        assert np.allclose(grey, np.clip((arr - centre) / width + 0.5, 0, 1), atol=1e-6)


# ---------------------------------------------------------------- the dataset in a plain loop


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    frame = write_shapes_dataset(root, images=10, size=24, seed=2, dicom_every=3)
    frame["split"] = np.where(np.arange(len(frame)) < 6, "train", "val")
    return Manifest(frame, labels=SHAPE_LABELS, root=str(root)), root


def test_dataset_in_a_plain_dataloader_with_a_transform(small_set):
    m, root = small_set
    flip = lambda img: img.flip(-1)  # noqa: E731
    ds = ManifestDataset(m.frame, str(root), SHAPE_LABELS, size=16, channels=3, transform=flip, normalize="imagenet")
    raw = ManifestDataset(m.frame, str(root), SHAPE_LABELS, size=16, channels=3)
    images, targets, masks = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert images.shape == (4, 3, 16, 16) and targets.shape == masks.shape == (4, 3)
    plain = torch.stack([raw[i][0] for i in range(4)])
    assert float(plain.min()) >= 0 and float(plain.max()) <= 1
    assert torch.allclose(images, normalise(plain.flip(-1), "imagenet"))  # transform first, in [0, 1]; then normalised
    with pytest.raises(TypeError, match="transform returned ndarray, not a torch.Tensor"):
        ManifestDataset(m.frame, str(root), SHAPE_LABELS, size=16, transform=lambda img: img.numpy())[0]
    with pytest.raises(UsageError, match="unknown normalize 'ImageNet'"):
        ManifestDataset(m.frame, str(root), SHAPE_LABELS, normalize="ImageNet")


def test_dataset_from_a_manifest(small_set):
    m, root = small_set
    f = m.frame.copy()
    f["synthetic"] = False
    f.loc[f.index[0], "synthetic"] = True
    ds = ManifestDataset.from_manifest(m.with_frame(f), "train", size=12)
    assert len(ds) == 5 and list(ds.frame["image_id"]) == list(f["image_id"][1:6]) and ds.labels == list(SHAPE_LABELS)
    assert ds[0][0].shape == (1, 12, 12)
    only = ManifestDataset.from_manifest(m, labels=["circle"], size=12)
    assert len(only) == 10 and only[0][1].shape == (1,)
    with pytest.raises(UsageError, match="no rows have split == 'test'"):
        ManifestDataset.from_manifest(m, "test")
    with pytest.raises(UsageError, match="records no image root"):
        ManifestDataset.from_manifest(Manifest(m.frame, labels=m.labels), "train")
    with pytest.raises(UsageError, match="has no 'fold' column"):
        ManifestDataset.from_manifest(m, "1", split_col="fold")


# ---------------------------------------------------------------- sampling weights


def _weights_doc(**weights):
    return {"schema": "mdprep-weights", "version": 1, "labels": list(weights),
            "weights": {k: {"w_pos": p, "w_neg": n} for k, (p, n) in weights.items()}}


def test_sample_weights_per_row(tmp_path):
    frame = pd.DataFrame({
        "image_id": list("abcde"), "path": list("abcde"), "patient_id": list("abcde"),
        "Rare": pd.array([1, 0, 0, -1, None], dtype="Int8"),
        "Common": pd.array([0, 1, 0, 1, None], dtype="Int8"),
    })
    doc = _weights_doc(Rare=(5.0, 0.5), Common=(1.5, 0.75))
    assert sample_weights(frame, doc).tolist() == [5.0, 1.5, 0.75, 1.5, 1.0]
    assert sample_weights(frame, doc, reduce="mean").tolist() == [2.875, 1.0, 0.625, 1.5, 1.0]
    (tmp_path / "weights.json").write_text(json.dumps(doc))
    m = Manifest(frame, labels=("Rare", "Common"))
    assert sample_weights(m, tmp_path / "weights.json").dtype == np.float64
    assert sample_weights(m, str(tmp_path / "weights.json")).tolist() == [5.0, 1.5, 0.75, 1.5, 1.0]
    with pytest.raises(UsageError, match="weights for 'Other', which are not label columns"):
        sample_weights(m, _weights_doc(Rare=(5.0, 0.5), Other=(1.0, 1.0)))
    with pytest.raises(InputError, match="'Rare' has w_pos -1, not a finite number of 0 or more"):
        sample_weights(m, _weights_doc(Rare=(-1, 0.5)))
    with pytest.raises(InputError, match="does not exist; create it with `mdprep weights`"):
        sample_weights(m, tmp_path / "missing.json")
    with pytest.raises(UsageError, match="unknown reduce 'sum'"):
        sample_weights(m, doc, reduce="sum")


def test_weighted_sampler_draws_minority_positives_more_often():
    from mdprep.weights import compute_weights

    n = 400
    positive = np.arange(n) < 40  # 10% positive
    frame = pd.DataFrame({"image_id": [f"i{i}" for i in range(n)], "path": [f"i{i}.png" for i in range(n)],
                          "patient_id": [f"p{i}" for i in range(n)], "Finding": pd.array(positive.astype(int), dtype="Int8")})
    m = Manifest(frame, labels=("Finding",))
    doc = compute_weights(m, split="all").document()  # balanced: w_pos 5, w_neg 0.556
    w = sample_weights(m, doc)
    sampler = torch.utils.data.WeightedRandomSampler(torch.from_numpy(w), num_samples=4000, replacement=True,
                                                     generator=torch.Generator().manual_seed(0))
    drawn = positive[np.fromiter(iter(sampler), dtype=np.int64)]
    assert 0.45 < drawn.mean() < 0.55  # balanced weights draw both classes about equally, against 10% uniformly

"""Multi-label image classifiers written with plain torch (no torchvision needed).

``densenet121`` (the CheXNet choice), ``resnet18`` and ``resnet50`` use the module
names of torchvision's implementations, so a state dict saved from torchvision loads
with ``--pretrained``; their new head has one output per label. ``small`` is a
four-block CNN for quick experiments and tests. ``tv:NAME`` builds any classification
model of torchvision, when torchvision is importable (it is never required), with
its head replaced.
"""

from __future__ import annotations

import pickle

import torch
from torch import nn

#: The models written here, with plain torch.
ARCHITECTURES = ("densenet121", "resnet18", "resnet50", "small")
#: ``--arch tv:NAME`` builds ``torchvision.models.get_model(NAME)``.
TORCHVISION_PREFIX = "tv:"


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU-pool blocks, global average pooling, a linear head."""

    in_channels = 1
    head_prefixes = ("classifier.",)

    def __init__(self, n_labels: int, width: int = 32) -> None:
        super().__init__()
        layers, c = [], self.in_channels
        for w in (width, width * 2, width * 4, width * 4):
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, n_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


class _BasicBlock(nn.Module):
    """Two 3x3 convolutions (ResNet-18 and -34), torchvision's names."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class _Bottleneck(nn.Module):
    """1x1, 3x3 (with the stride: torchvision's "ResNet v1.5"), 1x1 convolutions, four times wider out."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class _ResNet(nn.Module):
    """ResNet (He et al. 2016) with torchvision's module names and a multi-label ``fc``."""

    in_channels = 3
    head_prefixes = ("fc.",)
    block: type = _BasicBlock
    depths: tuple[int, ...] = (2, 2, 2, 2)

    def __init__(self, n_labels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (planes, depth) in enumerate(zip((64, 128, 256, 512), self.depths), start=1):
            stride = 1 if i == 1 else 2
            blocks = [self.block(cin, planes, stride)]
            cin = planes * self.block.expansion
            blocks += [self.block(cin, planes, 1) for _ in range(depth - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, n_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ResNet18(_ResNet):
    """ResNet-18: basic blocks, 2-2-2-2."""

    block, depths = _BasicBlock, (2, 2, 2, 2)


class ResNet50(_ResNet):
    """ResNet-50: bottleneck blocks, 3-4-6-3 (torchvision's ``resnet50``, 2048 features into ``fc``)."""

    block, depths = _Bottleneck, (3, 4, 6, 3)


class _DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bn_size: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, 1)
        return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))


class _DenseBlock(nn.ModuleDict):
    def __init__(self, layers: int, cin: int, growth: int, bn_size: int) -> None:
        super().__init__()
        for i in range(layers):
            self.add_module(f"denselayer{i + 1}", _DenseLayer(cin + i * growth, growth, bn_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.pool = nn.AvgPool2d(2, 2)


class DenseNet121(nn.Module):
    """DenseNet-121 (Huang et al. 2017) with torchvision's module names and a multi-label ``classifier``."""

    in_channels = 3
    head_prefixes = ("classifier.",)

    def __init__(self, n_labels: int, growth: int = 32, blocks: tuple[int, ...] = (6, 12, 24, 16), bn_size: int = 4) -> None:
        super().__init__()
        c = 2 * growth
        self.features = nn.Sequential()
        self.features.add_module("conv0", nn.Conv2d(3, c, 7, 2, 3, bias=False))
        self.features.add_module("norm0", nn.BatchNorm2d(c))
        self.features.add_module("relu0", nn.ReLU(inplace=True))
        self.features.add_module("pool0", nn.MaxPool2d(3, 2, 1))
        for i, n in enumerate(blocks, start=1):
            self.features.add_module(f"denseblock{i}", _DenseBlock(n, c, growth, bn_size))
            c += n * growth
            if i != len(blocks):
                self.features.add_module(f"transition{i}", _Transition(c, c // 2))
                c //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(c))
        self.classifier = nn.Linear(c, n_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.relu(self.features(x))
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


_PLAIN = {"densenet121": DenseNet121, "resnet18": ResNet18, "resnet50": ResNet50, "small": SmallCNN}


def _arch_choices() -> str:
    return f"{', '.join(ARCHITECTURES)}, or tv:NAME for a model of torchvision"


def _import_torchvision(name: str):
    """torchvision, or a :class:`~mdprep.errors.UsageError` saying why ``--arch tv:NAME`` cannot be used here."""
    from ..errors import UsageError, cut_text

    try:
        import torchvision
    except Exception as exc:  # noqa: BLE001 - a missing package and a build for another torch (OSError, RuntimeError) fail alike
        detail = cut_text(" ".join(f"{type(exc).__name__}: {exc}".split()), 120)
        raise UsageError(
            f"--arch {TORCHVISION_PREFIX}{name} needs torchvision, which is not importable here ({detail}); "
            f"install the torchvision build that matches torch, or choose a plain-torch --arch: {', '.join(ARCHITECTURES)}",
            arch=f"{TORCHVISION_PREFIX}{name}",
        ) from None
    return torchvision


def check_arch(arch: str) -> None:
    """Refuse an ``--arch`` that :func:`build_model` cannot build, before any work is done.

    A plain-torch name must be one of :data:`ARCHITECTURES`; ``tv:NAME`` needs a
    non-empty NAME and an importable torchvision (whether torchvision knows NAME is
    found when the model is built).

    Raises
    ------
    mdprep.errors.UsageError
        Naming the value and the choices.
    """
    from ..errors import UsageError

    if arch in _PLAIN:
        return
    if isinstance(arch, str) and arch.startswith(TORCHVISION_PREFIX):
        name = arch[len(TORCHVISION_PREFIX):]
        if not name or name != name.strip():
            raise UsageError(f"--arch {arch!r} names no torchvision model; write tv:NAME, for example tv:resnet34", arch=arch)
        _import_torchvision(name)
        return
    raise UsageError(f"unknown --arch {arch!r}; choose one of {_arch_choices()}", arch=arch)


def _replace_head(model: nn.Module, n_labels: int) -> str | None:
    """Put a new ``n_labels``-output layer in place of a torchvision model's last layer; returns its name prefix.

    The head is the first of ``fc``, ``classifier``, ``heads`` and ``head`` that is a
    linear (or, as in SqueezeNet, a convolution) layer, or a ``Sequential`` whose
    last such layer is then replaced. None when the model has no such layer.
    """
    kinds = (nn.Linear, nn.Conv2d)
    for attr in ("fc", "classifier", "heads", "head"):
        layer = getattr(model, attr, None)
        parent, key, prefix = model, attr, attr
        if isinstance(layer, nn.Sequential):
            inner = [k for k, m in layer.named_children() if isinstance(m, kinds)]
            if not inner:
                continue
            parent, key, prefix = layer, inner[-1], f"{attr}.{inner[-1]}"
            layer = layer._modules[key]
        if isinstance(layer, nn.Linear):
            new: nn.Module = nn.Linear(layer.in_features, n_labels, bias=layer.bias is not None)
        elif isinstance(layer, nn.Conv2d):
            new = nn.Conv2d(layer.in_channels, n_labels, layer.kernel_size, layer.stride, layer.padding, bias=layer.bias is not None)
        else:
            continue
        setattr(parent, key, new)
        return prefix + "."
    return None


def torchvision_model(name: str, n_labels: int) -> nn.Module:
    """``torchvision.models.get_model(name, weights=None)`` with a new head of ``n_labels`` outputs.

    Nothing is downloaded: the weights are random until :func:`load_pretrained`
    loads a local file. Auxiliary classifiers (Inception v3, GoogLeNet) are turned
    off, so that the forward pass returns the logits alone; a state dict that
    holds them loads with their tensors reported as unexpected. The model gets
    ``in_channels = 3`` and ``head_prefixes`` (the new head's parameter prefix,
    used by :func:`load_pretrained` and :func:`freeze_backbone`).

    Raises
    ------
    mdprep.errors.UsageError
        torchvision is not importable, does not know ``name``, or the model has
        no ``fc``, ``classifier``, ``heads`` or ``head`` layer to replace.
    """
    from ..errors import UsageError, cut_text

    arch = f"{TORCHVISION_PREFIX}{name}"
    check_arch(arch)  # a name, and torchvision importable
    import torchvision

    try:
        model = torchvision.models.get_model(name, weights=None)
    except ValueError as exc:
        raise UsageError(
            f"--arch {arch}: torchvision cannot build {name!r} ({cut_text(str(exc), 120)}); torchvision.models.list_models() lists the names it knows",
            arch=arch,
        ) from None
    if getattr(model, "aux_logits", False):
        model.aux_logits = False
        for aux in ("AuxLogits", "aux1", "aux2"):
            if isinstance(getattr(model, aux, None), nn.Module):
                setattr(model, aux, None)
    prefix = _replace_head(model, n_labels)
    if prefix is None:
        raise UsageError(
            f"--arch {arch}: {type(model).__name__} has no fc, classifier, heads or head layer to replace with one output per label; "
            "choose a classification model of torchvision",
            arch=arch,
        )
    model.in_channels = 3
    model.head_prefixes = (prefix,)
    return model


def build_model(arch: str, n_labels: int) -> nn.Module:
    """A fresh model with random weights and one output per label.

    ``arch`` is one of :data:`ARCHITECTURES` (plain torch), or ``tv:NAME`` for
    :func:`torchvision_model`. Every model has ``in_channels`` (the image channels
    it takes: 1 for ``small``, 3 for the others) and ``head_prefixes``.

    Raises
    ------
    mdprep.errors.UsageError
        An unknown ``arch`` (see :func:`check_arch`).
    """
    if isinstance(arch, str) and arch.startswith(TORCHVISION_PREFIX):
        return torchvision_model(arch[len(TORCHVISION_PREFIX):], n_labels)
    check_arch(arch)
    return _PLAIN[arch](n_labels)


def head_names(model: nn.Module) -> tuple[str, ...]:
    """Parameter name prefixes of the new multi-label head (``fc.`` for ResNets, ``classifier.`` for the others)."""
    return tuple(getattr(model, "head_prefixes", ("classifier.",)))


def load_pretrained(model: nn.Module, path: str, arch: str | None = None) -> dict:
    """Load a local state dict into ``model``; the head's tensors may differ in shape and are skipped.

    Returns what happened: ``loaded``, ``skipped`` (the head's tensors whose shape
    differs, such as ImageNet's 1000 classes), ``unexpected`` and ``missing`` key lists.
    A checkpoint written by ``mdprep train`` (``best.pt``) works too.

    Raises :class:`~mdprep.errors.InputError` naming the file and what was expected
    when it is not a PyTorch file, does not hold a state dict (names to tensors), is a
    ``best.pt`` of another ``arch``, lacks any backbone tensor of ``model`` (or has
    it in another shape: a backbone left partly random would train silently worse),
    or holds NaN or infinite values.
    """
    from ..errors import InputError

    name = arch or type(model).__name__
    expected = f"expected a state dict of {name} (torchvision's state_dict() saved with torch.save) or a best.pt written by `mdprep train --arch {name}`"
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except FileNotFoundError:
        raise InputError(f"--pretrained {path!r} does not exist; {expected}", path=path) from None
    except IsADirectoryError:
        raise InputError(f"--pretrained {path!r} is a folder; {expected}", path=path) from None
    if not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):
        # torch.save writes a zip archive (PK), or a pickle (0x80) in the legacy format.
        raise InputError(f"--pretrained {path} is not a PyTorch checkpoint (it begins with {head!r}, not as a file torch.save writes); {expected}", path=path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(
            f"--pretrained {path} holds Python objects besides tensors, which mdprep never loads (torch.load with weights_only=True runs no code); {expected}",
            path=path,
        ) from None
    except Exception as exc:  # noqa: BLE001 - torch.load fails in many ways on a damaged file
        detail = " ".join(str(exc).split())[:120]
        raise InputError(f"--pretrained {path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {detail}); {expected}", path=path) from None
    saved_normalize: object = "unknown"  # a plain state dict does not say how its inputs were normalised
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        saved_normalize = state.get("normalize")
        saved_arch = state.get("arch")
        if arch and isinstance(saved_arch, str) and saved_arch != arch:
            raise InputError(f"--pretrained {path} is a best.pt of --arch {saved_arch}, not {arch}; {expected}", path=path)
        state = state["model"]
    if not isinstance(state, dict) or not state or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        what = type(state).__name__ if not isinstance(state, dict) else ("an empty dict" if not state else "a dict whose values are not all tensors")
        raise InputError(f"--pretrained {path} holds {what}, not a state dict (names to tensors); {expected}", path=path)
    own = model.state_dict()
    heads = head_names(model)
    unfit = [k for k in own if not k.startswith(heads) and (k not in state or state[k].shape != own[k].shape)]
    if unfit:
        n_backbone = sum(not k.startswith(heads) for k in own)
        shown = ", ".join(unfit[:3]) + (", ..." if len(unfit) > 3 else "")
        raise InputError(
            f"--pretrained {path} does not fit {name}: {len(unfit)} of the {n_backbone} backbone tensors of {name} are missing "
            f"from it or have another shape ({shown}); {expected}",
            path=path,
            missing=unfit,
        )
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    not_finite = [k for k, v in usable.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if not_finite:
        shown = ", ".join(not_finite[:3]) + (", ..." if len(not_finite) > 3 else "")
        raise InputError(f"--pretrained {path} holds NaN or infinite values in {len(not_finite)} tensor(s) ({shown}); training from them cannot work", path=path)
    skipped = sorted(k for k in state if k in own and own[k].shape != state[k].shape)
    unexpected = sorted(k for k in state if k not in own)
    missing = sorted(k for k in own if k not in usable)
    model.load_state_dict(usable, strict=False)
    out = {"loaded": len(usable), "skipped": skipped, "unexpected": unexpected, "missing": missing}
    if saved_normalize != "unknown":
        out["normalize"] = saved_normalize  # a best.pt written by mdprep train records its inputs' normalisation
    return out


def freeze_backbone(model: nn.Module) -> int:
    """Freeze every parameter but the head's; returns how many tensors were frozen."""
    heads = head_names(model)
    frozen = 0
    for name, p in model.named_parameters():
        if not name.startswith(heads):
            p.requires_grad_(False)
            frozen += 1
    return frozen

"""Multi-label image classifiers written with plain torch (no torchvision needed).

``densenet121`` (the CheXNet choice) and ``resnet18`` use the module names of
torchvision's implementations, so a state dict saved from torchvision loads with
``--pretrained``; their new head has one output per label. ``small`` is a four-block
CNN for quick experiments and tests.
"""

from __future__ import annotations

import torch
from torch import nn

ARCHITECTURES = ("densenet121", "resnet18", "small")


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU-pool blocks, global average pooling, a linear head."""

    in_channels = 1

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
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    """ResNet-18 (He et al. 2016) with torchvision's module names and a multi-label ``fc``."""

    in_channels = 3

    def __init__(self, n_labels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths, cin = (64, 128, 256, 512), 64
        for i, w in enumerate(widths, start=1):
            stride = 1 if i == 1 else 2
            setattr(self, f"layer{i}", nn.Sequential(_BasicBlock(cin, w, stride), _BasicBlock(w, w, 1)))
            cin = w
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, n_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


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


def build_model(arch: str, n_labels: int) -> nn.Module:
    """A fresh model with random weights and one output per label."""
    if arch == "small":
        return SmallCNN(n_labels)
    if arch == "resnet18":
        return ResNet18(n_labels)
    if arch == "densenet121":
        return DenseNet121(n_labels)
    from ..errors import UsageError

    raise UsageError(f"unknown --arch {arch!r}; choose one of {', '.join(ARCHITECTURES)}")


def head_names(model: nn.Module) -> tuple[str, ...]:
    """Parameter name prefixes of the new multi-label head."""
    return ("fc.",) if isinstance(model, ResNet18) else ("classifier.",)


def load_pretrained(model: nn.Module, path: str) -> dict:
    """Load a local state dict into ``model``; keys whose shape does not fit (the old head) are skipped.

    Returns what happened: ``loaded``, ``skipped`` (shape mismatch) and ``missing`` key lists.
    A checkpoint written by ``mdprep train`` (``best.pt``) works too.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(k for k in state if k in own and own[k].shape != state[k].shape)
    unexpected = sorted(k for k in state if k not in own)
    missing = sorted(k for k in own if k not in usable)
    model.load_state_dict(usable, strict=False)
    return {"loaded": len(usable), "skipped": skipped, "unexpected": unexpected, "missing": missing}


def freeze_backbone(model: nn.Module) -> int:
    """Freeze every parameter but the head's; returns how many tensors were frozen."""
    heads = head_names(model)
    frozen = 0
    for name, p in model.named_parameters():
        if not name.startswith(heads):
            p.requires_grad_(False)
            frozen += 1
    return frozen

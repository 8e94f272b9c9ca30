"""Backbones (torchvision ResNets, a small CNN) and MLP heads built from layer specs."""

from __future__ import annotations

from typing import Literal, NamedTuple, Optional

import torch
from torch import nn
import torchvision

Norm = Optional[Literal["bn", "bn-noaffine", "ln"]]


class Layer(NamedTuple):
    """One Linear layer of a head, with what follows it."""
    width: int
    bias: bool = True
    norm: Norm = None
    relu: bool = False


def mlp(in_dim: int, layers: list[Layer]) -> nn.Sequential:
    """Linear → [norm] → [ReLU] for each layer spec, e.g. BYOL's [Layer(4096, True, 'bn', True), Layer(256, False)]."""
    modules: list[nn.Module] = []
    for layer in layers:
        modules.append(nn.Linear(in_dim, layer.width, bias=layer.bias))
        if layer.norm == "bn":
            modules.append(nn.BatchNorm1d(layer.width))
        elif layer.norm == "bn-noaffine":
            modules.append(nn.BatchNorm1d(layer.width, affine=False))
        elif layer.norm == "ln":
            modules.append(nn.LayerNorm(layer.width))
        if layer.relu:
            modules.append(nn.ReLU(inplace=True))
        in_dim = layer.width
    return nn.Sequential(*modules)


class SmallCNN(nn.Module):
    """Four stride-2 conv-BN-ReLU stages and global average pooling: for tests and quick runs."""

    def __init__(self, width: int = 32):
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 8 * width]
        self.features = nn.Sequential(*[
            nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
                          nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
            for cin, cout in zip(chans, chans[1:])])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = chans[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)


def build_backbone(name: str, stem: str = "imagenet") -> tuple[nn.Module, int]:
    """Return (backbone producing pooled features, feature dimension).

    ResNets keep torchvision's key names with `fc` replaced by Identity, so an exported backbone loads
    with strict=True into `torchvision.models.resnetXX()` whose fc was replaced the same way.
    """
    if name == "small_cnn":
        net = SmallCNN()
        return net, net.out_dim
    net = getattr(torchvision.models, name)(weights=None)
    if stem == "small":  # CIFAR-style stem for 32 px-class images (MoCo demo, InstDisc, SimCLR cifar_stem)
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim


def backbone_info(name: str, stem: str, feature_dim: int) -> dict:
    """What a checkpoint records to rebuild the backbone without the run spec."""
    return {"name": name, "kwargs": {"stem": stem}, "feature_dim": feature_dim,
            "torchvision": name.startswith("resnet")}

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


class SplitBatchNorm(nn.BatchNorm2d):
    """Batch norm computed separately over `splits` sub-batches in training, as if each were on its own GPU
    (MoCo's single-GPU CIFAR demo); eval mode, parameters and state-dict keys are those of BatchNorm2d."""

    def __init__(self, num_features: int, splits: int, **kwargs):
        super().__init__(num_features, **kwargs)
        self.splits = splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        s = self.splits
        if not self.training or s == 1 or n % s:
            return super().forward(x)
        # (n, c) -> (n/s, s*c): sample i lands in split i % s, each split normalised with its own statistics
        mean, var = self.running_mean.repeat(s), self.running_var.repeat(s)
        out = nn.functional.batch_norm(x.reshape(n // s, s * c, h, w), mean, var, self.weight.repeat(s),
                                       self.bias.repeat(s), True, self.momentum, self.eps)
        with torch.no_grad():
            self.running_mean.copy_(mean.view(s, c).mean(0))
            self.running_var.copy_(var.view(s, c).mean(0))
            self.num_batches_tracked += 1
        return out.view(n, c, h, w)


def split_batchnorm(module: nn.Module, splits: int) -> nn.Module:
    """Replace every BatchNorm2d in `module` by a SplitBatchNorm with the same state (in place)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, SplitBatchNorm):
            split = SplitBatchNorm(child.num_features, splits, eps=child.eps, momentum=child.momentum,
                                   affine=child.affine)
            split.load_state_dict(child.state_dict())
            setattr(module, name, split.to(child.weight.device if child.affine else child.running_mean.device))
        else:
            split_batchnorm(child, splits)
    return module

"""Backbones (torchvision ResNets and Vision Transformers, a small CNN, any timm model) and MLP heads built from
layer specs."""

from __future__ import annotations

import difflib
import functools
import inspect
from types import ModuleType
from typing import Literal, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn
import torchvision
from torchvision.models.vision_transformer import VisionTransformer

from .errors import UserError
from .extras import require
from .spec import TIMM_PREFIX  # --backbone timm:NAME

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


VIT_SIZES = {"vit_tiny": (192, 3), "vit_small": (384, 6), "vit_base": (768, 12)}  # DeiT/DINO: width, heads


def sincos_position_embedding(grid: int, width: int) -> torch.Tensor:
    """MoCo v3's fixed 2-D sine-cosine embedding [1, 1 + grid², width]: a quarter of the channels each for sin and
    cos of the column and of the row at geometric frequencies; zeros for the CLS token."""
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32),
                                indexing="ij")
    quarter = width // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    at_col, at_row = cols.flatten()[:, None] * omega, rows.flatten()[:, None] * omega
    patches = torch.cat([at_col.sin(), at_col.cos(), at_row.sin(), at_row.cos()], dim=1)
    return torch.cat([torch.zeros(1, width), patches]).unsqueeze(0)


class ViT(VisionTransformer):
    """torchvision's VisionTransformer whose feature is the final CLS token (`heads` is Identity), so its state_dict
    loads with strict=True into `VisionTransformer(image_size, patch_size, depth, heads, width, 4 * width)` whose
    heads were replaced the same way, and gives the same features. Unlike torchvision's, it takes any image side
    that is a multiple of the patch size: the position embeddings of the patch grid are interpolated (bicubic, as
    DINO's evaluation) when the grid differs from the training one."""

    def __init__(self, image_size: int, patch_size: int, width: int, num_heads: int, depth: int,
                 pos_embed: str = "learned"):
        super().__init__(image_size, patch_size, depth, num_heads, width, 4 * width)
        self.heads = nn.Identity()
        if pos_embed == "sincos":  # fixed: MoCo v3 found it as good as learned and more stable
            self.encoder.pos_embedding.data.copy_(sincos_position_embedding(image_size // patch_size, width))
            self.encoder.pos_embedding.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        tokens = self.conv_proj(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.class_token.expand(n, -1, -1), tokens], dim=1)
        tokens = tokens + self.position_embedding(h // self.patch_size, w // self.patch_size)
        tokens = self.encoder.ln(self.encoder.layers(self.encoder.dropout(tokens)))
        return tokens[:, 0]

    def position_embedding(self, rows: int, cols: int) -> torch.Tensor:
        pos = self.encoder.pos_embedding
        grid = self.image_size // self.patch_size
        if rows == grid and cols == grid:
            return pos
        patches = pos[:, 1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=(rows, cols), mode="bicubic", align_corners=False)
        return torch.cat([pos[:, :1], patches.flatten(2).transpose(1, 2)], dim=1)


def build_backbone(name: str, *args, **kwargs) -> tuple[nn.Module, int]:
    """Return (backbone producing pooled features, feature dimension): `timm:NAME` is timm's model NAME built with
    `kwargs` (timm_backbone), any other name one of ours (torchvision_backbone)."""
    if name.startswith(TIMM_PREFIX):
        return timm_backbone(name.removeprefix(TIMM_PREFIX), **kwargs)
    return torchvision_backbone(name, *args, **kwargs)


def torchvision_backbone(name: str, stem: str = "imagenet", image_size: int = 224, patch_size: int = 16,
                         pos_embed: str = "learned", depth: int = 12) -> tuple[nn.Module, int]:
    """ResNets keep torchvision's key names with `fc` replaced by Identity, so an exported backbone loads
    with strict=True into `torchvision.models.resnetXX()` whose fc was replaced the same way; ViTs likewise into
    torchvision's VisionTransformer with `heads` replaced (class ViT).
    """
    if name == "small_cnn":
        net = SmallCNN()
        return net, net.out_dim
    if name in VIT_SIZES:
        width, num_heads = VIT_SIZES[name]
        return ViT(image_size, patch_size, width, num_heads, depth, pos_embed), width
    net = getattr(torchvision.models, name)(weights=None)
    if stem == "small":  # CIFAR-style stem for 32 px-class images (MoCo demo, InstDisc, SimCLR cifar_stem)
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim


# ---- timm ------------------------------------------------------------------------------------------

TIMM_GEOMETRY = ("img_size", "patch_size", "depth", "dynamic_img_size")  # constructor arguments the spec may set


def require_timm() -> ModuleType:
    return require("timm", "timm", "--backbone timm:NAME",
                   alternative="choose a built-in backbone (resnet18/34/50, vit_tiny/small/base, small_cnn)")


def check_timm_name(name: str) -> None:
    """ValueError (a spec problem) naming close matches when timm has no model `name` (with or without a tag)."""
    timm = require_timm()
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        raise ValueError(f"timm has no model {name!r}; " + (f"close names: {', '.join(close)}" if close else
                         "list them with python -c \"import timm; print(timm.list_models('*PART*'))\""))


class TimmFacts(NamedTuple):
    """What the spec needs to know of a timm model before building it."""
    vit: bool  # a patch embedding (ViT, DeiT, Swin, EVA, ...): the transformer recipes and patch-size checks apply
    patch_size: Optional[int]  # its own patch side
    takes: frozenset[str]  # which of TIMM_GEOMETRY its constructor takes


@functools.lru_cache(maxsize=None)
def timm_facts(name: str) -> TimmFacts:
    timm = require_timm()
    try:
        with torch.device("meta"):  # the structure only: no memory, no initialisation
            model = timm.create_model(name, pretrained=False, num_classes=0)
    except Exception:  # noqa: BLE001 - a constructor that computes with its tensors: build it for real
        model, _ = timm_backbone(name)
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch
    params = inspect.signature(type(model).__init__).parameters
    takes = frozenset(p for p in TIMM_GEOMETRY if p in params)
    return TimmFacts(hasattr(model, "patch_embed"), patch, takes)


def timm_backbone(name: str, **kwargs) -> tuple[nn.Module, int]:
    """timm's model `name` without its classifier (num_classes=0), so its output is its pooled feature
    (model.num_features wide) and its state_dict loads with strict=True into
    `timm.create_model(name, num_classes=0, **kwargs)`."""
    timm = require_timm()
    try:
        net = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except Exception as err:  # noqa: BLE001 - a model refusing its geometry raises anything; the message helps
        raise UserError(f"timm could not build {name} with {kwargs} ({type(err).__name__}: {err})",
                        "choose another --image-size or --patch-size, or another timm model") from None
    return net, net.num_features


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
    """Replace every BatchNorm2d in `module` by a SplitBatchNorm with the same state (in place). Subclasses are
    kept whole: they may do more than normalise (timm's BatchNormAct2d applies its activation too)."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            split = SplitBatchNorm(child.num_features, splits, eps=child.eps, momentum=child.momentum,
                                   affine=child.affine)
            split.load_state_dict(child.state_dict())
            setattr(module, name, split.to(child.weight.device if child.affine else child.running_mean.device))
        else:
            split_batchnorm(child, splits)
    return module

"""CPC v2 (Hénaff et al. 2020): one view is cut into a grid of overlapping patches, each encoded on its own; a masked
(causal) conv net summarises the rows above into contexts c_ij, and W_k c_ij must pick the true encoding of the patch
k rows below among all patches of the batch (InfoNCE), in up to four directions."""

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import ViewAugment
from ..losses import mi_bound
from ..models import build_backbone
from .base import Method
from .cpcv2_spec import patch_grid


def layer_norm_for_batch_norm(module: nn.Module) -> nn.Module:
    """Every BatchNorm2d becomes GroupNorm(1, C), a layer norm over each patch's (C, H, W) (in place): the paper's
    fix, since batch statistics let the encoder share information across patches and cheat the prediction task."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.GroupNorm(1, child.num_features, eps=child.eps))
        else:
            layer_norm_for_batch_norm(child)
    return module


class PatchEncoder(nn.Module):
    """The exported encoder: image → grid of patches → backbone on each patch → one vector per image: the mean over
    the grid (pool "mean", the paper's linear evaluation) or the grid's G² patch features side by side (pool "grid",
    the layout kept, as the paper's downstream classifiers take the whole grid). `patch_features` is the training path."""

    def __init__(self, backbone: str, stem: str, patch_size: int, stride: int, norm: str, pool: str = "mean",
                 grid: int = 1):
        super().__init__()
        net, self.patch_dim = build_backbone(backbone, stem)
        self.net = layer_norm_for_batch_norm(net) if norm == "ln" else net
        self.patch_size, self.stride, self.pool = patch_size, stride, pool
        self.out_dim = self.patch_dim * (grid * grid if pool == "grid" else 1)

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] → [B, G, G, C, p, p]; patch (i, j) starts at pixel (i·stride, j·stride)."""
        p, s = self.patch_size, self.stride
        if patch_grid(min(x.shape[-2:]), p, s) < 1:
            raise ValueError(f"{x.shape[-1]} px views are smaller than the {p} px patches")
        return x.unfold(2, p, s).unfold(3, p, s).permute(0, 2, 3, 1, 4, 5)

    def encode(self, patches: torch.Tensor) -> torch.Tensor:
        """[B, G, G, C, p, p] → [B, G, G, D]: all patches of the batch through the backbone as one batch."""
        b, gh, gw = patches.shape[0], patches.shape[1], patches.shape[2]
        return self.net(patches.flatten(0, 2)).view(b, gh, gw, -1)

    def patch_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(self.patches(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.patch_features(x)
        return z.flatten(1) if self.pool == "grid" else z.mean(dim=(1, 2))


class MaskedConv(nn.Conv2d):
    """3x3 conv padded only above (and at the sides): the output at row i sees input rows i-2..i, never below."""

    def __init__(self, channels: int):
        super().__init__(channels, channels, 3)

    def forward(self, x):
        return super().forward(F.pad(x, (1, 1, 2, 0)))


class ContextNetwork(nn.Module):
    """PixelCNN-style context over a [B, D, G, G] grid of patch encodings: 1x1 in, residual blocks of
    ReLU → masked 3x3 → ReLU → 1x1, so c_ij depends on rows ≤ i only; then one 1x1 with the K predictors W_k."""

    def __init__(self, in_dim: int, width: int, blocks: int, steps: int):
        super().__init__()
        self.inp = nn.Conv2d(in_dim, width, 1)
        self.blocks = nn.ModuleList(nn.Sequential(nn.ReLU(), MaskedConv(width), nn.ReLU(), nn.Conv2d(width, width, 1))
                                    for _ in range(blocks))
        self.predictors = nn.Conv2d(width, steps * in_dim, 1)  # W_1..W_K stacked along channels
        self.steps = steps

    def context(self, z: torch.Tensor) -> torch.Tensor:
        c = self.inp(z)
        for block in self.blocks:
            c = c + block(c)
        return c

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """[B, D, G, G] → predictions [K, B, D, G, G]: entry k-1 at (i, j) is ẑ_{i+k, j} = W_k c_ij."""
        b, d, gh, gw = z.shape
        return self.predictors(self.context(z)).view(b, self.steps, d, gh, gw).transpose(0, 1)


# Each direction re-orients the [..., G, G] grid so that "down" is the direction of prediction.
DIRECTIONS = {
    "down": lambda g: g,
    "up": lambda g: g.flip(-2),
    "right": lambda g: g.transpose(-2, -1),
    "left": lambda g: g.transpose(-2, -1).flip(-2),
}
DIRECTION_SETS = {"down": ("down",), "vertical": ("down", "up"), "all": ("down", "up", "right", "left")}


def patch_info_nce(predictions: torch.Tensor, targets: torch.Tensor, candidates: torch.Tensor,
                   sampled: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE of predictions [Q, D] whose true patches are rows `targets` [Q] of candidates [M, D] (all patches of
    the batch): −log softmax over ẑ·z (dot products, no temperature). `sampled` [n]: score each prediction against
    its positive and these candidate rows only (a sampled row equal to the positive is masked out)."""
    if sampled is None:
        return F.cross_entropy(predictions @ candidates.T, targets)
    positive = (predictions * candidates[targets]).sum(1, keepdim=True)
    negative = (predictions @ candidates[sampled].T).masked_fill(sampled[None, :] == targets[:, None], float("-inf"))
    return F.cross_entropy(torch.cat([positive, negative], 1), torch.zeros_like(targets))


class CPCv2(Method):
    name = "cpcv2"

    def __init__(self, spec, backbone, feature_dim, data):
        super().__init__(spec, backbone, feature_dim, data)
        spec = self.spec
        self.directions = DIRECTION_SETS[spec.directions]
        patch_dim = backbone.patch_dim  # feature_dim is the exported (pooled) width
        self.context = nn.ModuleDict({d: ContextNetwork(patch_dim, spec.context_dim, spec.context_blocks,
                                                        spec.prediction_steps) for d in self.directions})
        self.colour = data.channels == 3
        # the views arrive normalised; per-patch jitter works on [0, 1] pixel values
        self.register_buffer("pixel_mean", torch.tensor(data.mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(data.std).view(-1, 1, 1), persistent=False)

    @classmethod
    def encoder_info(cls, spec, data):
        m = spec.method
        return {"method": cls.name, "name": "cpc_patches", "kwargs": {
            "backbone": spec.backbone.name, "stem": spec.backbone.stem, "patch_size": m.patch_size,
            "stride": m.patch_stride, "norm": m.patch_norm, "pool": m.feature_pool,
            "grid": patch_grid(spec.data.image_size, m.patch_size, m.patch_stride)}}

    @staticmethod
    def build_encoder(**kwargs):
        encoder = PatchEncoder(**kwargs)
        return encoder, encoder.out_dim

    def views(self, augment, size, mean, std):
        return [ViewAugment(augment, size, mean, std, view=0)]  # one view: the patches of an image are its "views"

    def jitter_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """Per patch: brightness × U(1 ± s), then contrast × U(1 ± s) around the patch's mean (s = patch_jitter), so
        neighbouring patches cannot be matched by their shared intensity alone."""
        s, grid = self.spec.patch_jitter, (*patches.shape[:3], 1, 1, 1)
        pixels = patches * self.pixel_std + self.pixel_mean
        pixels = pixels * (1 + s * (2 * torch.rand(grid) - 1)).to(pixels)
        mean = pixels.mean(dim=(-3, -2, -1), keepdim=True)
        pixels = ((pixels - mean) * (1 + s * (2 * torch.rand(grid) - 1)).to(pixels) + mean).clamp(0, 1)
        return (pixels - self.pixel_mean) / self.pixel_std

    def augment_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """Per patch: brightness/contrast jitter, a left-right flip with p 0.5 and, on colour data, one of the three
        channels kept (0 = the data mean after normalisation). Drawn from the CPU generator, which checkpoints save."""
        grid = patches.shape[:3]
        if self.spec.patch_jitter > 0:
            patches = self.jitter_patches(patches)
        flip = (torch.rand(grid) < 0.5).to(patches.device)
        patches = torch.where(flip[..., None, None, None], patches.flip(-1), patches)
        if self.colour:
            keep = F.one_hot(torch.randint(0, 3, grid), 3).to(patches)
            patches = patches * keep[..., None, None]
        return patches

    def forward(self, views, indices=None, progress=0.0):
        (x,) = views
        patches = self.backbone.patches(x)
        if self.spec.patch_augment:
            patches = self.augment_patches(patches)
        z = self.backbone.encode(patches)  # [B, G, G, D]
        b, g, _, d = z.shape
        candidates = z.reshape(-1, d)  # every patch of the batch: the positive and the negatives
        index = torch.arange(len(candidates), device=z.device).view(b, g, g)
        n = self.spec.patch_negatives
        sampled = (torch.randperm(len(candidates))[:n].to(z.device)
                   if 0 < n < len(candidates) - 1 else None)
        predictions, targets = [], []
        for direction in self.directions:
            orient = DIRECTIONS[direction]
            grid, where = orient(z.permute(0, 3, 1, 2)), orient(index)  # [B, D, G, G], [B, G, G]
            predicted = self.context[direction](grid)  # [K, B, D, G, G]
            for k in range(1, self.spec.prediction_steps + 1):
                # the context at row i predicts row i + k: rows 0..G-k-1 predict, rows k..G-1 are predicted
                predictions.append(predicted[k - 1, :, :, : g - k].permute(0, 2, 3, 1).reshape(-1, d))
                targets.append(where[:, k:].reshape(-1))
        loss = patch_info_nce(torch.cat(predictions), torch.cat(targets), candidates, sampled)
        return {"loss": loss, **mi_bound(loss, len(candidates) if sampled is None else 1 + len(sampled))}

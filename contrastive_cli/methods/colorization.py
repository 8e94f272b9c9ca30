"""Colorization (Zhang, Isola & Efros 2016): predict an image's colour (the ab channels of Lab) from its lightness L.

One crop per image, no colour augmentation (colour is the target). The encoder sees L only; a decoder turns its last
feature map into a prediction at 1/4 of the view side (the paper's output resolution): with --colour-loss
classification (the paper), a distribution over the Q in-gamut ab bins, trained by cross-entropy against the
soft-encoded target (the view's ab averaged down to that size), each pixel weighted by the rarity of its colour (class
rebalancing, λ = --colour-rebalance; the colour distribution is counted online, see ab_bins.ColourPrior); with
regression (the paper's baseline), ab itself under an L2 loss. The exported encoder takes the evaluations' normalised
RGB views, converts them to L itself and gives the pooled features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import ViewAugment
from . import ab_bins
from .base import Method
from .cmc import LAB_MEAN, LAB_STD, LabInput, view_encoder
from .dense import Decoder, feature_map, map_shape

OUTPUT_STRIDE = 4  # the colour map is predicted at 1/4 of the view side (paper §2; the code's 56 px of 224)


class LightnessEncoder(LabInput):
    """The exported encoder: normalised RGB views in, the L channel through a one-input-channel backbone, pooled
    features out."""

    def __init__(self, backbone: str, stem: str, mean, std):
        super().__init__(mean, std)
        self.l_encoder, self.out_dim = view_encoder(backbone, stem, 1, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l_encoder(self.lab_views(x)[0])


def lab_units(channels: torch.Tensor, first: int) -> torch.Tensor:
    """Normalised Lab channels (from LabInput.lab_views) back to CIE units; `first`: 0 for L, 1 for ab."""
    n = channels.shape[1]
    mean = torch.tensor(LAB_MEAN[first:first + n], device=channels.device).view(1, n, 1, 1)
    std = torch.tensor(LAB_STD[first:first + n], device=channels.device).view(1, n, 1, 1)
    return channels * std + mean


def pixels(x: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B·h·w, C]: one row per pixel."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel -Σ_q Z_q log softmax(logits)_q; logits [B, Q, h, w], target [B·h·w, Q] -> [B·h·w]."""
    return -(target * F.log_softmax(pixels(logits).float(), dim=1)).sum(1)


class Colorization(Method):
    name = "colorization"

    @classmethod
    def encoder_info(cls, spec, data):
        kwargs = {"backbone": spec.backbone.name, "stem": spec.backbone.stem, "mean": list(data.mean),
                  "std": list(data.std)}
        return {"method": cls.name, "name": "colorization_l", "kwargs": kwargs}

    @staticmethod
    def build_encoder(**kwargs) -> tuple[nn.Module, int]:
        encoder = LightnessEncoder(**kwargs)
        return encoder, encoder.out_dim

    def __init__(self, spec, backbone, feature_dim, data):
        super().__init__(spec, backbone, feature_dim, data)
        self.size = max(1, spec.data.image_size // OUTPUT_STRIDE)
        channels, side = map_shape(backbone.l_encoder, 1, spec.data.image_size)
        self.classify = self.spec.colour_loss == "classification"
        outputs = 2  # regression: a and b
        if self.classify:
            self.prior = ab_bins.ColourPrior(ab_bins.gamut_bins(), self.spec.colour_rebalance)
            outputs = len(self.prior.centres)  # one logit per ab bin
        self.decoder = Decoder(channels, outputs, side, self.size)

    def views(self, augment, size, mean, std):
        return [ViewAugment(augment, size, mean, std, view=0)]  # one crop; its L is the input, its ab the target

    def forward(self, views, indices=None, progress=0.0):
        l, ab = self.backbone.lab_views(views[0])
        prediction = self.decoder(feature_map(self.backbone.l_encoder, l))
        target = F.adaptive_avg_pool2d(ab, self.size)  # area average down to the output resolution
        return self.classification(prediction, target) if self.classify else self.regression(prediction, target)

    def classification(self, logits, target):
        """L = -mean_hw v(Z_hw) Σ_q Z_hwq log Ẑ_hwq, Z the soft-encoded target, v the rebalancing weight of its
        nearest bin (paper eq. 2)."""
        z = ab_bins.soft_encode(pixels(lab_units(target, 1)), self.prior.centres)
        nearest = z.argmax(1)  # the largest soft weight sits on the nearest bin
        self.prior.update(nearest)
        v = self.prior.weights()[nearest]
        loss = (v * soft_cross_entropy(logits, z)).mean()
        accuracy = (pixels(logits.detach()).argmax(1) == nearest).float().mean()
        return {"loss": loss, "pixel_acc": accuracy}

    def regression(self, prediction, target):
        """The paper's L2 baseline ½ Σ_hw ||Y - Ŷ||², averaged over pixels, on ab scaled to about [-1, 1]."""
        loss = 0.5 * (prediction.float() - target).square().sum(1).mean()
        error = lab_units(prediction.detach().float(), 1) - lab_units(target, 1)
        return {"loss": loss, "ab_rmse": error.square().sum(1).mean().sqrt()}  # in ab units

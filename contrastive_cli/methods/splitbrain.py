"""Split-brain autoencoders (Zhang, Isola & Efros 2017): the encoder is split along its channels into two disjoint
halves, each predicting the channels the other sees: the L half predicts ab (classification over the in-gamut ab
bins, soft-encoded targets as colorization's, no class rebalancing) and the ab half predicts L (classification over
--l-bins lightness bins). L = L(L→ab) + L(ab→L). Each half's decoder predicts at 1/4 of the view side, as
colorization's. The representation is both halves' pooled features, concatenated: CMC's LabEncoder, each half half
as wide as the backbone, which converts the evaluations' normalised RGB views to Lab itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..augment import ViewAugment
from . import ab_bins
from .base import Method
from .cmc import build_lab_encoder, lab_encoder_info
from .colorization import OUTPUT_STRIDE, lab_units, pixels, soft_cross_entropy
from .dense import Decoder, feature_map, map_shape

HALF = 0.5  # each half is half as wide as the backbone (the paper splits every layer of AlexNet in two)


class SplitBrain(Method):
    name = "splitbrain"

    @classmethod
    def encoder_info(cls, spec, data):
        return lab_encoder_info(cls.name, "splitbrain_lab", spec, data, HALF)

    build_encoder = staticmethod(build_lab_encoder)

    def __init__(self, spec, backbone, feature_dim, data):
        super().__init__(spec, backbone, feature_dim, data)
        size = spec.data.image_size
        self.size = max(1, size // OUTPUT_STRIDE)
        self.register_buffer("centres", ab_bins.gamut_bins(), persistent=False)
        l_channels, l_side = map_shape(backbone.l_encoder, 1, size)
        ab_channels, ab_side = map_shape(backbone.ab_encoder, 2, size)
        self.ab_decoder = Decoder(l_channels, len(self.centres), l_side, self.size)  # L half -> ab bins
        self.l_decoder = Decoder(ab_channels, self.spec.l_bins, ab_side, self.size)  # ab half -> L bins

    def views(self, augment, size, mean, std):
        return [ViewAugment(augment, size, mean, std, view=0)]  # one crop; its L and ab predict each other

    def forward(self, views, indices=None, progress=0.0):
        enc = self.backbone
        l, ab = enc.lab_views(views[0])
        ab_logits = self.ab_decoder(feature_map(enc.l_encoder, l))
        l_logits = self.l_decoder(feature_map(enc.ab_encoder, ab))
        ab_target = pixels(lab_units(F.adaptive_avg_pool2d(ab, self.size), 1))  # area average, CIE units
        l_target = pixels(lab_units(F.adaptive_avg_pool2d(l, self.size), 0))[:, 0]
        z = ab_bins.soft_encode(ab_target, self.centres)
        l_bin = ab_bins.l_bin(l_target, self.spec.l_bins)
        loss_ab = soft_cross_entropy(ab_logits, z).mean()
        loss_l = F.cross_entropy(pixels(l_logits).float(), l_bin)
        ab_acc = (pixels(ab_logits.detach()).argmax(1) == z.argmax(1)).float().mean()
        l_acc = (pixels(l_logits.detach()).argmax(1) == l_bin).float().mean()
        return {"loss": loss_ab + loss_l, "loss_ab": loss_ab.detach(), "loss_l": loss_l.detach(),
                "ab_acc": ab_acc, "l_acc": l_acc}

    def embeddings(self, x):
        h_l, h_ab = self.backbone.features(x)
        return {"backbone": torch.cat([h_l, h_ab], 1), "l_half": h_l, "ab_half": h_ab}

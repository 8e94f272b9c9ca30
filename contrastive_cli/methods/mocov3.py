"""MoCo v3 (Chen, Xie & He 2021): a query encoder (backbone, projector, predictor) contrasts each view with the
momentum encoder's key of the other view against the other keys of the batch: no queue, a symmetric loss, and
for ViTs a frozen random patch projection."""

import torch
from torch import nn

from ..losses import mi_bound, mocov3_ctr, gathered_world
from ..models import Layer, mlp
from .base import Method, cosine_momentum, momentum_copy


def freeze_patch_embedding(encoder: nn.Module) -> nn.Conv2d:
    """Keep a ViT's patch projection (torchvision's `conv_proj`, timm's `patch_embed.proj`) at its initialisation:
    the official --stop-grad-conv1, which removes the instability spikes the paper traces to this first layer."""
    found = [m for name, m in encoder.named_modules() if isinstance(m, nn.Conv2d) and
             (name.split(".")[-1] == "conv_proj" or name.endswith("patch_embed.proj"))]
    if len(found) != 1:
        raise ValueError(f"expected one ViT patch projection (a Conv2d named conv_proj or patch_embed.proj), "
                         f"found {len(found)}")
    found[0].requires_grad_(False)
    return found[0]


class MoCoV3(Method):
    name = "mocov3"

    def __init__(self, spec, backbone, feature_dim, data):
        super().__init__(spec, backbone, feature_dim, data)
        vit, spec = spec.backbone.is_vit, self.spec
        if spec.freeze_patch_embed:
            freeze_patch_embedding(self.backbone)
        # official builder: bias-free Linears, BN + ReLU between them, BN without affine after the projector
        # (SimCLR's last BN, without γ) and, for ViTs only, after the predictor too
        hidden = [Layer(spec.proj_hidden_dim, False, "bn", True)] * (spec.proj_layers - 1)
        self.projector = mlp(feature_dim, hidden + [Layer(spec.proj_dim, False, "bn-noaffine")])
        self.predictor = mlp(spec.proj_dim, [Layer(spec.pred_hidden_dim, False, "bn", True),
                                             Layer(spec.proj_dim, False, "bn-noaffine" if vit else None)])
        self.momentum_backbone = momentum_copy(self.backbone)
        self.momentum_projector = momentum_copy(self.projector)

    def momentum_pairs(self):
        return [(self.backbone, self.momentum_backbone), (self.projector, self.momentum_projector)]

    def momentum(self, progress):
        return cosine_momentum(self.spec.momentum, progress)  # --moco-m-cos: per step from m up to 1

    def forward(self, views, indices=None, progress=0.0):
        q1, q2 = (self.predictor(self.projector(self.backbone(x))) for x in views)
        with torch.no_grad():
            k1, k2 = (self.momentum_projector(self.momentum_backbone(x)) for x in views)
        t = self.spec.temperature
        loss = mocov3_ctr(q1, k2, t) + mocov3_ctr(q2, k1, t)
        # the readout of one direction, without the 2τ scale: each query scores its key among the global batch's
        return {"loss": loss, **mi_bound(loss / (4 * t), len(k1) * gathered_world())}

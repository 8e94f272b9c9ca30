"""BYOL (Grill et al. 2020): an online network with a predictor regresses the projection of the other view made
by an EMA target network; no negatives. Batch norm in the MLPs and the stop-gradient on the target matter."""

import torch

from ..losses import normalized_mse
from ..models import Layer, mlp
from .base import Method, cosine_momentum, momentum_copy


def byol_mlp(in_dim: int, hidden: int, out: int, norm: str = "bn"):
    # deepmind-research byol: Linear(bias) → BN → ReLU → Linear(no bias), for projector and predictor alike;
    # `norm` is the ablation knob (ln / none) of the batch-norm debate (../shared/protocols.md §6)
    return mlp(in_dim, [Layer(hidden, True, None if norm == "none" else norm, True), Layer(out, False)])


class BYOL(Method):
    name = "byol"

    def __init__(self, spec, backbone, feature_dim, data):
        super().__init__(spec, backbone, feature_dim, data)
        spec = self.spec
        self.projector = byol_mlp(feature_dim, spec.proj_hidden_dim, spec.proj_dim, spec.proj_norm)
        # without a predictor the online projection regresses the target's directly: the paper's collapsing ablation
        self.predictor = (byol_mlp(spec.proj_dim, spec.pred_hidden_dim, spec.proj_dim, spec.pred_norm)
                          if spec.predictor else torch.nn.Identity())
        self.target_backbone = momentum_copy(backbone)
        self.target_projector = momentum_copy(self.projector)

    def momentum_pairs(self):
        return [(self.backbone, self.target_backbone), (self.projector, self.target_projector)]

    def momentum(self, progress):
        return cosine_momentum(self.spec.momentum, progress)

    def forward(self, views, indices=None, progress=0.0):
        p1, p2 = (self.predictor(self.projector(self.backbone(x))) for x in views)
        with torch.no_grad():
            t1, t2 = (self.target_projector(self.target_backbone(x)) for x in views)
        # the sum of both view orders, each averaged over the batch
        return {"loss": normalized_mse(p1, t2) + normalized_mse(p2, t1)}

"""Barlow Twins (Zbontar et al. 2021): the cross-correlation matrix of the two views' batch-standardised embeddings
is pushed to the identity, 1 on the diagonal (invariant to the augmentations) and 0 elsewhere (every dimension
carries something the others do not). No negatives, predictor, momentum network or stop-gradient: the redundancy
term alone rules out the constant solution."""

from ..losses import barlow_twins
from ..models import Layer, mlp
from .base import Method


def projector(in_dim: int, hidden: int, out: int, layers: int):
    # official main.py ("8192-8192-8192"): [Linear(no bias) → BN → ReLU] × (layers − 1) → Linear(no bias); the
    # loss standardises the output itself (the code's BN(affine=False))
    return mlp(in_dim, [Layer(hidden, False, "bn", True)] * (layers - 1) + [Layer(out, False)])


class BarlowTwins(Method):
    name = "barlowtwins"

    def __init__(self, spec, backbone, feature_dim, data):
        super().__init__(spec, backbone, feature_dim, data)
        s = self.spec
        self.projector = projector(feature_dim, s.proj_hidden_dim, s.proj_dim, s.proj_layers)

    def forward(self, views, indices=None, progress=0.0):
        z1, z2 = (self.projector(self.backbone(x)) for x in views)  # one pass per view: BN statistics per view
        loss, on_diagonal, off_diagonal = barlow_twins(z1, z2, self.spec.redundancy_weight)
        return {"loss": loss, "on_diagonal": on_diagonal.detach(), "off_diagonal": off_diagonal.detach()}

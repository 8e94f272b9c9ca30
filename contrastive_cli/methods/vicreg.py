"""VICReg (Bardes et al. 2022): each view's embedding is pulled to the other's (invariance), every dimension keeps a
std of at least 1 over the batch (variance) and the dimensions are decorrelated (covariance). The variance term alone
rules out collapse: no negatives, predictor, momentum network, stop-gradient or normalisation of the embeddings."""

from ..losses import vicreg
from ..models import Layer, mlp
from .base import Method


def expander(in_dim: int, hidden: int, out: int, layers: int):
    # official main_vicreg.py ("8192-8192-8192"): [Linear → BN → ReLU] × (layers − 1) → Linear(no bias)
    return mlp(in_dim, [Layer(hidden, True, "bn", True)] * (layers - 1) + [Layer(out, False)])


class VICReg(Method):
    name = "vicreg"

    def __init__(self, spec, backbone, feature_dim, data):
        super().__init__(spec, backbone, feature_dim, data)
        s = self.spec
        self.projector = expander(feature_dim, s.proj_hidden_dim, s.proj_dim, s.proj_layers)

    def forward(self, views, indices=None, progress=0.0):
        z1, z2 = (self.projector(self.backbone(x)) for x in views)  # one pass per view: BN statistics per view
        s = self.spec
        loss, invariance, variance, covariance = vicreg(z1, z2, s.invariance_weight, s.variance_weight,
                                                        s.covariance_weight)
        return {"loss": loss, "invariance": invariance.detach(), "variance": variance.detach(),
                "covariance": covariance.detach()}

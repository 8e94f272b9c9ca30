"""SimCLR (Chen et al. 2020): NT-Xent over the 2N views of a batch, in-batch negatives only."""

from ..losses import mi_bound, nt_xent
from ..models import Layer, mlp
from .base import Method


class SimCLR(Method):
    name = "simclr"

    def __init__(self, spec, backbone, feature_dim, data):
        super().__init__(spec, backbone, feature_dim, data)
        spec = self.spec
        # v1 code: Linear(bias) → BN → ReLU → Linear(no bias) → BN
        self.projector = mlp(feature_dim, [Layer(spec.proj_hidden_dim, True, "bn", True),
                                           Layer(spec.proj_dim, False, "bn")])

    def forward(self, views, indices=None, progress=0.0):
        z1, z2 = (self.projector(self.backbone(x)) for x in views)
        loss = nt_xent(z1, z2, self.spec.temperature)
        # each of the 2N anchors scores its positive among the 2N - 1 other views
        return {"loss": loss, **mi_bound(loss, 2 * len(z1) - 1)}

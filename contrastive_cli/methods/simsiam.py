"""SimSiam (Chen & He 2021): a predictor on one branch, stop-gradient on the other; no negatives, no momentum."""

from torch import nn

from ..losses import negative_cosine
from ..models import Layer, mlp
from .base import Method


class SimSiam(Method):
    name = "simsiam"

    def __init__(self, spec, backbone, feature_dim, data):
        super().__init__(spec, backbone, feature_dim, data)
        spec = self.spec
        proj, pred = (None if n == "none" else n for n in (spec.proj_norm, spec.pred_norm))
        hidden = [Layer(spec.proj_hidden_dim, proj != "bn", proj, True)] * (spec.proj_layers - 1)
        # The last Linear has no bias: BN(affine=False) right after it would cancel one (the official code
        # freezes that bias for the same reason).
        last = Layer(spec.proj_dim, False, "bn-noaffine") if proj == "bn" else Layer(spec.proj_dim, True, proj)
        self.projector = mlp(feature_dim, hidden + [last])
        # without a predictor (or without stop-gradient) SimSiam collapses: the paper's ablations (Sec. 4)
        self.predictor = (mlp(spec.proj_dim, [Layer(spec.pred_hidden_dim, pred != "bn", pred, True), Layer(spec.proj_dim)])
                          if spec.predictor else nn.Identity())

    def parameter_groups(self):
        encoder = [p for n, p in self.named_parameters() if not n.startswith("predictor.")]
        predictor = list(self.predictor.parameters())
        return [{"params": encoder}] + ([{"params": predictor, "fixed_lr": self.spec.fix_pred_lr}] if predictor else [])

    def forward(self, views, indices=None, progress=0.0):
        z1, z2 = (self.projector(self.backbone(x)) for x in views)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        sg = self.spec.stop_gradient
        return {"loss": 0.5 * (negative_cosine(p1, z2, sg) + negative_cosine(p2, z1, sg))}

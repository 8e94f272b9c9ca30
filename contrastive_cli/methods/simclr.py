"""SimCLR (Chen et al. 2020): NT-Xent over the 2N views of a batch, in-batch negatives only."""

from ..losses import nt_xent
from ..models import Layer, mlp
from .base import Method


class SimCLR(Method):
    name = "simclr"

    @staticmethod
    def recipe(small: bool) -> dict:
        # lr 0.3 x B/256 with warm-up + cosine, wd 1e-6 (v1 code; LARS there, SGD here); CIFAR: tau 0.5, jitter strength 0.5.
        s = 0.5 if small else 1.0
        optim = {"optimizer": "sgd", "lr": 0.3, "weight_decay": 1e-6, "warmup_epochs": 10,
                 "schedule": "cosine", "exclude_bias_norm_wd": True}
        method = {"temperature": 0.5 if small else 0.1}
        augment = {"crop_scale": (0.08, 1.0), "jitter_p": 0.8, "jitter": (0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s),
                   "jitter_random_order": True, "gray_p": 0.2, "blur_p": (0.5, 0.5), "solarize_p": (0.0, 0.0)}
        return {"optim": optim, "method": method, "augment": augment}

    def __init__(self, spec, backbone, feature_dim):
        super().__init__(spec, backbone, feature_dim)
        # v1 code: Linear(bias) → BN → ReLU → Linear(no bias) → BN
        self.projector = mlp(feature_dim, [Layer(spec.proj_hidden_dim, True, "bn", True),
                                           Layer(spec.proj_dim, False, "bn")])

    def forward(self, views, indices=None):
        z1, z2 = (self.projector(self.backbone(x)) for x in views)
        return {"loss": nt_xent(z1, z2, self.spec.temperature)}

"""MoCo v1 (He et al. 2020): MoCo v2 before its improvements — the encoder's fc layer outputs the 128-d embedding
directly (no MLP head), T 0.07, and the v1 augmentation (no blur); the queue, momentum encoder, ShuffleBN and
InfoNCE loss are MoCo v2's (mocov2.py)."""

from torch import nn

from ..models import split_batchnorm
from .base import KeyQueue, Method, momentum_copy
from .mocov2 import MoCoV2


class MoCoV1(MoCoV2):
    name = "mocov1"

    def __init__(self, spec, backbone, feature_dim, data):
        Method.__init__(self, spec, split_batchnorm(backbone, spec.method.bn_splits), feature_dim, data)
        self.projector = nn.Linear(feature_dim, self.spec.proj_dim)  # v1: ResNet's fc → 128-d, then L2-normalised
        self.momentum_backbone = momentum_copy(self.backbone)
        self.momentum_projector = momentum_copy(self.projector)
        self.queue = KeyQueue(self.spec.queue_size, self.spec.proj_dim)

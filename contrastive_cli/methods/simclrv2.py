"""SimCLR v2 (Chen et al. 2020): SimCLR with a deeper projector whose first layer(s) the exported encoder keeps
(fine-tuning starts from the middle of the head), and optionally MoCo's memory: a momentum copy of the network whose
outputs are buffered in a queue as extra negatives."""

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import gather, mi_bound, nt_xent
from ..models import Layer, build_backbone, mlp
from .base import backbone_info, KeyQueue, Method, momentum_copy


class BatchNormNoShift(nn.BatchNorm1d):
    """Batch norm with a scale γ but no shift β (TF's center=False), the projector's last normalisation."""

    def __init__(self, width: int):
        super().__init__(width)
        self.bias = None  # F.batch_norm takes no bias; γ stays a parameter


def projection_head(width: int, layers: int, out_dim: int) -> nn.ModuleList:
    """tf2/model.py ProjectionHead: every Linear is bias-free (a BN follows it); the middle layers keep the input
    width and end in BN(γ, β) → ReLU, the last ends in BN(γ) with neither shift nor ReLU. One module per layer, so
    the first ones can move into the encoder."""
    head = [mlp(width, [Layer(width, False, "bn", True)]) for _ in range(layers - 1)]
    head.append(nn.Sequential(nn.Linear(width, out_dim, bias=False), BatchNormNoShift(out_dim)))
    return nn.ModuleList(head)


def nt_xent_with_queue(z1, z2, queue, temperature):
    """NT-Xent whose denominators also hold the queue's keys: anchor i (of 2N views) scores its other view against
    the 2N - 2 other in-batch views (gathered across processes) and the K queued keys. With K = 0 it is nt_xent."""
    return nt_xent(z1, z2, temperature, extra_negatives=queue)


class SimCLRv2(Method):
    name = "simclrv2"

    @classmethod
    def encoder_info(cls, spec, data):
        m = spec.method
        if m.keep_proj_layers == 0:  # the plain backbone record: exports stay torchvision-loadable
            return super().encoder_info(spec, data)
        return {"method": cls.name, "name": f"{spec.backbone.name}+projector[:{m.keep_proj_layers}]",
                "kwargs": {"backbone": spec.backbone.name, "backbone_kwargs": backbone_info(spec)["kwargs"],
                           "keep": m.keep_proj_layers, "proj_layers": m.proj_layers, "proj_dim": m.proj_dim}}

    @staticmethod
    def build_encoder(backbone, keep, proj_layers, proj_dim, backbone_kwargs=None, stem="imagenet"):
        """The backbone followed by the first `keep` projector layers (random init); keys backbone.*, projector.*.
        (`stem`: checkpoints written before ViTs recorded only the ResNet stem.)"""
        kwargs = {"stem": stem} if backbone_kwargs is None else backbone_kwargs  # a timm ResNet's: {}
        net, width = build_backbone(backbone, **kwargs)
        kept = projection_head(width, proj_layers, proj_dim)[:keep]
        out = proj_dim if keep == proj_layers else width
        return nn.Sequential(OrderedDict(backbone=net, projector=nn.Sequential(*kept))), out

    def __init__(self, spec, backbone, feature_dim, data):
        super().__init__(spec, backbone, feature_dim, data)
        spec = self.spec
        # the layers the encoder kept are rebuilt here only to be dropped: the projector holds the rest
        self.projector = nn.Sequential(*projection_head(feature_dim, spec.proj_layers, spec.proj_dim)
                                       [spec.keep_proj_layers:])
        self.queue = None
        if spec.queue_size:  # the memory: a momentum copy of the whole network fills a queue of negatives
            self.momentum_backbone = momentum_copy(self.backbone)
            self.momentum_projector = momentum_copy(self.projector)
            self.queue = KeyQueue(spec.queue_size, spec.proj_dim)

    def momentum_pairs(self):
        if self.queue is None:
            return []
        return [(self.backbone, self.momentum_backbone), (self.projector, self.momentum_projector)]

    @torch.no_grad()
    def memory_keys(self, x):
        # keys serve only as negatives, never as the positive, so BN cannot leak the answer: no ShuffleBN needed
        return F.normalize(self.momentum_projector(self.momentum_backbone(x)), dim=1)

    def forward(self, views, indices=None, progress=0.0):
        x1, x2 = views
        # both views in one pass, as the code does (BN statistics over all 2N views)
        z1, z2 = self.projector(self.backbone(torch.cat([x1, x2]))).chunk(2)
        if self.queue is None:  # the released code: SimCLR's loss, in-batch negatives only
            loss = nt_xent(z1, z2, self.spec.temperature)
            return {"loss": loss, **mi_bound(loss, 2 * len(z1) - 1)}
        negatives = self.queue.keys.clone().detach()
        loss = nt_xent_with_queue(z1, z2, negatives, self.spec.temperature)
        self.queue.push(gather(self.memory_keys(x2)))  # one key per image (of the global batch): no duplicates
        # each anchor scores its positive among the 2N - 1 other views and the K queued keys
        return {"loss": loss, **mi_bound(loss, 2 * len(z1) - 1 + len(negatives))}

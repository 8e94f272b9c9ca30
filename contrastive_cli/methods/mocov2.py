"""MoCo v2 (He et al. 2020; Chen et al. 2020): a query encoder trained with InfoNCE against the key of the
other view, produced by a momentum encoder, and a FIFO queue of past keys as negatives."""

import torch
import torch.nn.functional as F

from ..losses import gather, info_nce, mi_bound, gathered_rank
from ..models import Layer, mlp, split_batchnorm
from .base import KeyQueue, Method, momentum_copy


class MoCoV2(Method):
    name = "mocov2"

    def __init__(self, spec, backbone, feature_dim, data):
        super().__init__(spec, split_batchnorm(backbone, spec.method.bn_splits), feature_dim, data)
        spec = self.spec
        # v2's head: 2-layer MLP with no batch norm
        self.projector = mlp(feature_dim, [Layer(spec.proj_hidden_dim, relu=True), Layer(spec.proj_dim)])
        self.momentum_backbone = momentum_copy(backbone)
        self.momentum_projector = momentum_copy(self.projector)
        self.queue = KeyQueue(spec.queue_size, spec.proj_dim)

    def momentum_pairs(self):
        return [(self.backbone, self.momentum_backbone), (self.projector, self.momentum_projector)]

    def query(self, x):
        return F.normalize(self.projector(self.backbone(x)), dim=1)

    @torch.no_grad()
    def key(self, x):
        # ShuffleBN: the keys' BN splits (or processes) hold other samples than the queries', so batch statistics
        # cannot tell which key is the positive. Under torchrun the whole batch is shuffled across processes, as
        # the official batch_shuffle_ddp; every process draws the same permutation from the global generator,
        # which is seeded alike and saved in checkpoints, so resume stays exact.
        everything, rank = gather(x), gathered_rank()
        shuffle = torch.randperm(len(everything)).to(x.device)
        mine = shuffle[rank * len(x):(rank + 1) * len(x)]
        keys = gather(F.normalize(self.momentum_projector(self.momentum_backbone(everything[mine])), dim=1))
        return keys[torch.argsort(shuffle)][rank * len(x):(rank + 1) * len(x)]

    def forward(self, views, indices=None, progress=0.0):
        x1, x2 = views
        negatives = self.queue.keys.clone().detach()
        k2 = self.key(x2)
        loss = info_nce(self.query(x1), k2, negatives, self.spec.temperature)
        keys = [k2]
        if self.spec.symmetric:  # the CIFAR demo's symmetrised loss, worth about 2x the epochs
            k1 = self.key(x1)
            loss = loss + info_nce(self.query(x2), k1, negatives, self.spec.temperature)
            keys.append(k1)
        for k in keys:
            self.queue.push(gather(k))  # the keys of the global batch, in the same order on every process
        # the readout of one direction: 1 positive + the queue's keys
        return {"loss": loss, **mi_bound(loss / len(keys), 1 + len(negatives))}

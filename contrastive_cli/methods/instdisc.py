"""InstDisc (Wu et al. 2018): every image is its own class. One augmented view per step is embedded (fc -> 128,
L2-normalised) and scored against a memory bank holding one embedding per training image: its own entry is the
positive. The loss is NCE against K uniformly drawn noise entries (or, with --negatives 0, a softmax over the
whole bank); afterwards the image's entry moves towards the new embedding."""

import torch
import torch.nn.functional as F

from ..augment import ViewAugment
from ..evaluate import weighted_knn
from ..losses import mi_bound, nce
from ..models import Layer, mlp
from .base import MemoryBank, Method


class InstDisc(Method):
    name = "instdisc"

    def __init__(self, spec, backbone, feature_dim, data):
        super().__init__(spec, backbone, feature_dim, data)
        self.projector = mlp(feature_dim, [Layer(self.spec.proj_dim)])  # the paper's fc -> 128
        self.memory_bank = MemoryBank(data.images, self.spec.proj_dim)

    def views(self, augment, size, mean, std):
        return [ViewAugment(augment, size, mean, std)]  # the positive is the bank entry, not a second view

    def embed(self, x):
        return F.normalize(self.projector(self.backbone(x)), dim=1)

    def forward(self, views, indices=None, progress=0.0):
        (x,) = views
        f = self.embed(x)
        bank, t = self.memory_bank, self.spec.temperature
        if self.spec.negatives:
            rows = bank.sample(indices, self.spec.negatives)
            out = {"loss": nce(bank.nce_scores(f, rows, t), len(bank.features))}
            # NCE classifies data against noise; it is no N-way softmax, so the InfoNCE bound does not apply
        else:  # lemniscate LinearAverage: a full softmax over the bank, the image's own entry as the target
            loss = F.cross_entropy(f @ bank.snapshot().T / t, indices)
            out = {"loss": loss, **mi_bound(loss, len(bank.features))}
        bank.update(f, indices, self.spec.bank_momentum)
        return out


@torch.no_grad()
def bank_knn(method: InstDisc, bank_labels, queries, query_labels, k: int = 200, num_classes: int = 10) -> dict:
    """The paper's weighted kNN (lemniscate test.kNN without recompute_memory): the memory bank serves as the training
    features, so no pass over the training set is needed; the queries (normalised views) are embedded like the bank
    and vote with exp(s/τ) at the training temperature. Returns {"top1": %, "top5": %}."""
    was_training = method.training
    method.eval()
    embedded = torch.cat([method.embed(q) for q in queries.split(1024)]).cpu()
    method.train(was_training)
    bank = method.memory_bank.features.cpu()
    return weighted_knn(bank, bank_labels, embedded, query_labels, [k], method.spec.temperature, num_classes)[k]

"""SwAV (Caron et al. 2020): online clustering. Each crop's projection is scored against K learnable prototypes; the
two global crops get codes by Sinkhorn-Knopp (an equal partition of the batch over the prototypes), and every crop
predicts the codes of the other crops (swapped prediction). No negatives, no momentum network; multi-crop."""

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import sinkhorn_codes, swapped_prediction
from ..models import Layer, mlp
from .base import Method, encode_crops

GLOBAL_CROPS = 2  # crops_for_assign 0, 1: only the global crops get codes


class ProjectionQueue(nn.Module):
    """SwAV's queue: the last `size` projections of each assigned crop, FIFO. It starts empty and is used once full,
    as in main_swav.py; buffers, so checkpoints hold it and resume is exact."""

    def __init__(self, crops: int, size: int, dim: int):
        super().__init__()
        self.register_buffer("projections", torch.zeros(crops, size, dim))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @property
    def full(self) -> bool:
        return bool(self.filled == self.projections.shape[1])

    @torch.no_grad()
    def push(self, z: torch.Tensor) -> None:
        """z [crops, B, d]: replace the oldest B entries of each crop's queue."""
        size = self.projections.shape[1]
        z = z[:, -size:]
        slots = (self.ptr + torch.arange(z.shape[1], device=z.device)) % size
        self.projections[:, slots] = z.to(self.projections.dtype)
        self.ptr.copy_((self.ptr + z.shape[1]) % size)
        self.filled.copy_((self.filled + z.shape[1]).clamp(max=size))


def prototypes_used(codes: torch.Tensor) -> torch.Tensor:
    """The perplexity exp(H) of the batch's mean code: K when the images spread evenly over the prototypes, 1 when
    they all share one (the collapse the equal partition prevents)."""
    p = codes.mean(0)
    return torch.exp(-(p * p.clamp_min(1e-12).log()).sum())


class SwAV(Method):
    name = "swav"

    def __init__(self, spec, backbone, feature_dim, data):
        super().__init__(spec, backbone, feature_dim, data)
        m = self.spec
        # resnet50.py projection_head: Linear → BN → ReLU → Linear, then L2-normalise; prototypes: Linear(no bias)
        self.projector = mlp(feature_dim, [Layer(m.proj_hidden_dim, True, "bn", True), Layer(m.proj_dim)])
        self.prototypes = nn.Linear(m.proj_dim, m.prototypes, bias=False)
        self.normalise_prototypes()
        # the hooks get progress in [0, 1]; the freeze and the queue count in steps, as the official code does
        self.steps_per_epoch = max(1, data.images // spec.optim.batch_size)
        self.total_steps = self.steps_per_epoch * spec.optim.epochs
        self.freeze_steps = round(m.freeze_prototypes_epochs * self.steps_per_epoch)
        self.queue_start_step = m.swav_queue_start * self.steps_per_epoch
        self.queue = ProjectionQueue(GLOBAL_CROPS, m.swav_queue_size, m.proj_dim) if m.swav_queue_size else None

    def step_at(self, progress: float) -> int:
        return round(progress * self.total_steps)

    @torch.no_grad()
    def normalise_prototypes(self):
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def project(self, h):
        return F.normalize(self.projector(h), dim=1)

    @torch.no_grad()
    def codes(self, scores: torch.Tensor) -> torch.Tensor:
        """Soft assignments of a crop's images to the prototypes: Sinkhorn-Knopp's equal partition, or, as the
        ablation, each image's own softmax(scores / ε), which nothing keeps from sending every image to one prototype."""
        m = self.spec
        if m.equipartition:
            return sinkhorn_codes(scores, m.sinkhorn_epsilon, m.sinkhorn_iterations)
        return F.softmax(scores.float() / m.sinkhorn_epsilon, dim=1)

    def forward(self, views, indices=None, progress=0.0):
        z = self.project(encode_crops(self.backbone, views))  # every crop, in view order
        scores = self.prototypes(z).chunk(len(views))  # z·C, [B, K] per crop
        batch = len(views[0])
        global_z = z[:GLOBAL_CROPS * batch].detach().view(GLOBAL_CROPS, batch, -1)
        codes = []
        for crop in range(GLOBAL_CROPS):
            s = scores[crop].detach()
            if self.queue is not None and self.queue.full:  # queue scores join the partition, with today's prototypes
                s = torch.cat([self.prototypes(self.queue.projections[crop]).detach(), s])
            codes.append(self.codes(s)[-batch:])
        if self.queue is not None and self.step_at(progress) >= self.queue_start_step:
            self.queue.push(global_z)
        loss = swapped_prediction(codes, list(scores), self.spec.temperature)
        return {"loss": loss, "prototypes_used": prototypes_used(torch.cat(codes))}

    def before_optimizer_step(self, progress):
        # freeze_prototypes_niters: the prototypes start fixed. The official code sets their gradient to None; fused SGD
        # needs a gradient for every parameter once it keeps momentum buffers, so it is zeroed instead: weight decay then
        # only shortens the prototypes, which after_step re-normalises, so their directions stay exactly where they were.
        grad = self.prototypes.weight.grad
        if self.step_at(progress) < self.freeze_steps and grad is not None:
            grad.zero_()

    def after_step(self, progress):
        super().after_step(progress)
        self.normalise_prototypes()  # the official code does it before each forward; the same sequence of weights

    def embeddings(self, x):
        """The encoder's features, the normalised projection, and each image's prototype as a one-hot vector (the
        argmax of z·C): over a set of images the latter's spread is 1 − Σ_k f_k² (f_k: the share of images on
        prototype k) and its effective rank counts the prototypes in use, so when the codes lose the equal partition
        and every image goes to one prototype it is a complete collapse."""
        h = self.backbone(x)
        z = self.project(h)
        assignment = F.one_hot(self.prototypes(z).argmax(dim=1), self.spec.prototypes).float()
        return {"backbone": h, "projector": z, "assignment": assignment}

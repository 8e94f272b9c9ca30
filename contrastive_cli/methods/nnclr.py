"""NNCLR (Dwibedi et al. 2021): SimCLR-style in-batch contrast in which a view's positive is not the other view of
its image but the nearest neighbour of its projection in a support set (a FIFO queue of past projections): the
neighbour of view 1 must pick out the prediction of view 2 of the same image among the batch's predictions."""

import torch
import torch.nn.functional as F

from ..losses import gather, in_batch_infonce, mi_bound, gathered_world
from ..models import Layer, mlp
from .base import KeyQueue, Method


class SupportSet(KeyQueue):
    """KeyQueue of L2-normalised projections that also remembers which training image each entry came from
    (-1: the random initial entries), to report how often a nearest neighbour is an earlier view of the same image."""

    def __init__(self, size: int, dim: int):
        super().__init__(size, dim)
        self.register_buffer("images", torch.full((size,), -1, dtype=torch.long))

    @torch.no_grad()
    def push(self, keys: torch.Tensor, images: torch.Tensor | None = None) -> None:
        size = len(self.keys)
        slots = (self.ptr + torch.arange(min(len(keys), size), device=self.keys.device)) % size
        self.images[slots] = -1 if images is None else images[-size:].to(self.images.device)
        super().push(keys)

    @torch.no_grad()
    def nearest(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """NN(z, Q): for each row of z the most cosine-similar entry (a constant: no gradient), its similarity
        and its slot."""
        similarity, slot = (F.normalize(z, dim=1) @ self.keys.T).max(dim=1)
        return self.keys[slot], similarity, slot


class NNCLR(Method):
    name = "nnclr"

    def __init__(self, spec, backbone, feature_dim, data):
        super().__init__(spec, backbone, feature_dim, data)
        spec = self.spec
        # paper §3.3: projection [2048, 2048, d] with BN after every layer and ReLU after all but the last;
        # prediction [4096, d] with BN + ReLU after the hidden layer only (a BN follows: no bias needed)
        hidden = Layer(spec.proj_hidden_dim, False, "bn", True)
        self.projector = mlp(feature_dim, [hidden, hidden, Layer(spec.proj_dim, False, "bn")])
        self.predictor = mlp(spec.proj_dim, [Layer(spec.pred_hidden_dim, False, "bn", True), Layer(spec.proj_dim)])
        self.support = SupportSet(spec.support_size, spec.proj_dim)

    def forward(self, views, indices=None, progress=0.0):
        z1, z2 = (self.projector(self.backbone(x)) for x in views)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        # the neighbours come from the support set as it was before this batch, so never from the batch itself
        nn1, similarity1, slot1 = self.support.nearest(z1)
        nn2, similarity2, _ = self.support.nearest(z2)
        t = self.spec.temperature
        loss = (in_batch_infonce(nn1, p2, t) + in_batch_infonce(nn2, p1, t)) / 2
        out = {"loss": loss, **mi_bound(loss, len(p1) * gathered_world()),
               "nn_similarity": (similarity1.mean() + similarity2.mean()) / 2}
        if indices is not None:  # the share of view-1 neighbours that are an earlier view of the same image
            out["nn_same_image"] = (self.support.images[slot1] == indices.to(slot1.device)).float().mean()
        self.support.push(gather(F.normalize(z1.detach(), dim=1)), None if indices is None else gather(indices))
        return out

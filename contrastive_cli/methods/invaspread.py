"""InvaSpread (Ye et al. 2019): one encoder trained end to end on the real-time features of a batch, no memory. Each
image gives two augmented views; every view must recognise its sibling among the batch's other 2B − 1 views
(invariance) and be recognised as none of the rest (spreading)."""

import torch
import torch.nn.functional as F

from ..losses import gather, mi_bound, gathered_rank
from ..models import Layer, mlp
from .base import Method


def invariance_spreading_loss(z: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The softmax-embedding loss as the official BatchCriterion computes it, over the 2B L2-normalised views z
    (view 1 of the batch, then view 2). For anchor a, p(a, j) = exp(z_a·sg(z_j)/τ) / Σ_{k≠a} exp(z_a·sg(z_k)/τ) over
    the other 2B − 1 views; with a⁺ its sibling view,
        L = −(1/2B) Σ_a [ log p(a, a⁺) + Σ_{j ∉ {a, a⁺}} log(1 − p(a, j)) ].
    The candidates are detached (the code's `.data`): gradient reaches each view through its role as an anchor.
    Returns (invariance term, spreading term); their sum is L.

    Under torchrun the candidates are the 2N views of the global batch (gathered, detached as above) and each
    process scores its own 2n anchors: rows [2n], columns [2N]."""
    n = len(z) // 2
    columns = torch.cat([gather(half.detach()) for half in z.chunk(2)])  # all first views, then all second views
    big_n = len(columns) // 2
    first = torch.arange(n, device=z.device) + gathered_rank() * n
    own, sibling = torch.cat([first, first + big_n]), torch.cat([first + big_n, first])
    rows = torch.arange(2 * n, device=z.device)
    self_mask = torch.zeros(2 * n, 2 * big_n, dtype=torch.bool, device=z.device)
    self_mask[rows, own] = True
    log_p = (z @ columns.T).float().div(temperature).masked_fill(self_mask, float("-inf")).log_softmax(dim=1)
    invariance = -log_p[rows, sibling].mean()
    negative = ~self_mask
    negative[rows, sibling] = False
    # 1 − p stays > 0 (the code has no guard; a duplicate image could push p to 1 and the loss to inf)
    spreading = -torch.log1p(-log_p[negative].exp().clamp(max=1 - 1e-7)).sum() / (2 * n)
    return invariance, spreading


class InvaSpread(Method):
    name = "invaspread"

    def __init__(self, spec, backbone, feature_dim, data):
        super().__init__(spec, backbone, feature_dim, data)
        self.projector = mlp(feature_dim, [Layer(self.spec.proj_dim)])  # the paper's fc -> 128

    def forward(self, views, indices=None, progress=0.0):
        z = F.normalize(self.projector(self.backbone(torch.cat(views))), dim=1)  # one pass: BN sees both views
        invariance, spreading = invariance_spreading_loss(z, self.spec.temperature)
        loss = invariance + spreading
        # the readout of the positive (invariance) term: a softmax over the 2B − 1 other views
        return {"loss": loss, "invariance": invariance.detach(), "spreading": spreading.detach(),
                **mi_bound(invariance, len(z) - 1)}

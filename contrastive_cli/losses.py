"""Losses as plain functions/modules, each a direct transcription of its formula.

`gather` switches to features from all processes under torch.distributed (identity otherwise), so
in-batch negatives grow with the global batch as in the papers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x across processes, keeping gradients for the local slice."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return x
    from torch.distributed.nn.functional import all_gather
    return torch.cat(all_gather(x), dim=0)


def info_nce(query: torch.Tensor, positive_key: torch.Tensor, negative_keys: torch.Tensor,
             temperature: float) -> torch.Tensor:
    """MoCo's (K+1)-way softmax: logits [q·k+, q·queue] / T, cross-entropy with the positive at index 0.

    Inputs are L2-normalised; negative_keys is [K, d]. Gradients flow only through `query`.
    """
    positive = (query * positive_key).sum(dim=1, keepdim=True)
    negative = query @ negative_keys.T
    logits = torch.cat([positive, negative], dim=1) / temperature
    target = torch.zeros(len(query), dtype=torch.long, device=query.device)
    return F.cross_entropy(logits, target)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float, distributed: bool = False) -> torch.Tensor:
    """SimCLR's NT-Xent: each of the 2N views has its other view as positive and 2N-2 negatives.

    Cosine similarities / T with self-similarity masked out; mean over the 2N anchors (the paper's
    form; the TF code sums the two directions, i.e. twice this value).
    """
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    if distributed:
        z1, z2 = gather(z1), gather(z2)
    z = torch.cat([z1, z2], dim=0)
    n = len(z1)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, target)


def negative_cosine(p: torch.Tensor, z: torch.Tensor, stop_gradient: bool = True) -> torch.Tensor:
    """SimSiam's D(p, z) = -cos(p, stopgrad(z)), averaged over the batch (stop_gradient=False: the ablation)."""
    return -F.cosine_similarity(p, z.detach() if stop_gradient else z, dim=1).mean()


def normalized_mse(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's ||p̂ - ẑ'||² = 2 - 2 cos(p, stopgrad(z')), averaged over the batch."""
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=1)).mean()


def nce(scores: torch.Tensor, n_data: int) -> torch.Tensor:
    """InstDisc's NCE (lemniscate NCECriterion): scores [B, 1+K] are model probabilities P(i|f) of the positive
    (column 0) and K noise samples drawn uniformly (Pn = 1/N). With h = P / (P + K·Pn), the posterior that a sample
    came from the data, L = −(1/B) Σ [log h(positive) + Σ_noise log(1 − h(noise))]."""
    k_pn = (scores.shape[1] - 1) / n_data
    eps = 1e-7  # as in the official code: keeps the logs finite when a score underflows
    log_h_positive = torch.log(scores[:, 0] / (scores[:, 0] + k_pn + eps))
    log_one_minus_h_noise = torch.log(k_pn / (scores[:, 1:] + k_pn + eps))
    return -(log_h_positive.sum() + log_one_minus_h_noise.sum()) / len(scores)


def mi_bound(loss: torch.Tensor, candidates: int) -> dict[str, torch.Tensor | float]:
    """The InfoNCE readout (CPC, seed 004): I(x; y) ≥ log(N) − L_N, with N = 1 + negatives the candidates the loss
    really scored. It cannot exceed log N, so it saturates there however much the views share; both are logged."""
    return {"mi_bound": math.log(candidates) - loss.detach(), "mi_max": math.log(candidates)}


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes under torch.distributed ((0, 1) otherwise): where a
    process's rows sit in what `gather` returns."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return 0, 1
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def in_batch_infonce(anchors: torch.Tensor, candidates: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy of cos(anchor_i, candidate_j)/T over the (all-gathered) candidates, anchor i's positive being
    candidate i of its own process: -(1/N) Σ_i log softmax_j(â_i·ĉ_j/T)[i]. One view order of MoCo v3's ctr and of
    NNCLR's Eq. 2; gradients reach the anchors and this process's candidates."""
    anchors, candidates = F.normalize(anchors, dim=1), gather(F.normalize(candidates, dim=1))
    logits = anchors @ candidates.T / temperature
    rank, _ = rank_and_world()
    positives = torch.arange(len(anchors), device=anchors.device) + rank * len(anchors)
    return F.cross_entropy(logits, positives)


def mocov3_ctr(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo v3's ctr(q, k) = 2τ · CE(q̂·k̂ᵀ/τ): the keys are the other view's momentum-encoder outputs of the
    whole (gathered) batch, key i the positive of query i, no queue. The 2τ factor makes the loss (and its
    gradient) less sensitive to τ (Chen, Xie & He 2021, Alg. 1)."""
    return 2 * temperature * in_batch_infonce(q, k.detach(), temperature)

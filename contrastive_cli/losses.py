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


@torch.no_grad()
def sinkhorn_codes(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """SwAV's codes: the soft assignment Q [B, K] of B samples to K prototypes that maximises Tr(Qᵀ·scores) + ε·H(Q)
    under the equal-partition constraint (each prototype receives B/K of the mass, each sample a distribution),
    by `iterations` Sinkhorn-Knopp steps on exp(scores/ε). Under torch.distributed the sums run over the samples of
    every process, as the official distributed_sinkhorn does (B is then the global count)."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()

    def all_reduce(x, op=None):
        if distributed:
            torch.distributed.all_reduce(x, **({"op": op} if op is not None else {}))
        return x

    scores = scores.float()
    # a common shift cancels in the normalisations; it keeps exp finite for any ε (the official code has none)
    top = all_reduce(scores.max().clone(), torch.distributed.ReduceOp.MAX if distributed else None)
    q = torch.exp((scores - top) / epsilon).T  # [K, B], the paper's orientation
    k, b = q.shape[0], q.shape[1] * (torch.distributed.get_world_size() if distributed else 1)
    q /= all_reduce(q.sum())
    for _ in range(iterations):
        q /= all_reduce(q.sum(dim=1, keepdim=True))  # each prototype: total mass 1/K
        q /= k
        q /= q.sum(dim=0, keepdim=True)  # each sample: total mass 1/B
        q /= b
    return (q * b).T  # rows sum to 1: each sample's code is a distribution over the prototypes


def swapped_prediction(codes: list[torch.Tensor], scores: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """SwAV's loss: codes[s] (q_s, [B, K], no gradient) is the code of crop s, one per assigned crop (the first
    len(codes) of the crops); scores[v] = z_v·C, [B, K], for every crop v. Each code is predicted from every other
    crop: L = mean_s mean_{v≠s} mean_batch −Σ_k q_s,k log softmax(z_v·C/τ)_k."""
    log_p = [F.log_softmax(s / temperature, dim=1) for s in scores]
    loss = 0.0
    for s, q in enumerate(codes):
        others = [v for v in range(len(scores)) if v != s]
        loss = loss + sum(-(q * log_p[v]).sum(dim=1).mean() for v in others) / len(others)
    return loss / len(codes)

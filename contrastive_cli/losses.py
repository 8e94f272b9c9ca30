"""Losses as plain functions/modules, each a direct transcription of its formula.

`gather` switches to features from all processes under torch.distributed (identity otherwise), so
in-batch negatives grow with the global batch as in the papers; `all_reduce` sums a statistic the same way (Barlow
Twins' cross-correlation).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F


GATHERING = {"on": True}  # --no-gather turns it off for a run: each process's loss then sees its own batch only


def gathering() -> bool:
    return GATHERING["on"] and torch.distributed.is_available() and torch.distributed.is_initialized()


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x across processes in rank order (identity on one process or with --no-gather). Differentiable:
    the gradient that every process's loss sends to a slice is summed back to the process that computed it, so a
    loss of local rows against gathered columns, averaged by DDP, has the gradient of the global loss."""
    if not gathering():
        return x
    if not (x.requires_grad and torch.is_grad_enabled()):  # keys, indices, bank entries: no autograd needed
        parts = [torch.empty_like(x) for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)
    from torch.distributed.nn.functional import all_gather
    return torch.cat(all_gather(x), dim=0)


def gathered_rank() -> int:
    """This process's place in what `gather` returns (its rows start at gathered_rank() x its batch); 0 unless
    gathering."""
    return torch.distributed.get_rank() if gathering() else 0


def gathered_world() -> int:
    """How many processes' rows `gather` returns: the world size, 1 unless gathering."""
    return torch.distributed.get_world_size() if gathering() else 1


def global_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of x over the global batch (processes hold equal shares); no gradient."""
    mean = x.detach().mean()
    if gathering():
        torch.distributed.all_reduce(mean)
        mean = mean / torch.distributed.get_world_size()
    return mean


def my_rows(total: int, local: int) -> slice:
    """Where this process's `local` rows sit among `total` drawn for the global batch (all of them on one process)."""
    start = gathered_rank() * local
    return slice(start, start + local) if total > local else slice(0, local)


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


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float,
            extra_negatives: Optional[torch.Tensor] = None) -> torch.Tensor:
    """SimCLR's NT-Xent: each of the 2N views has its other view as positive and 2N-2 negatives, N the global
    batch (gathered across processes, as the paper's TPU code).

    Cosine similarities / T with self-similarity masked out; mean over the anchors (the paper's form; the TF code
    sums the two directions, i.e. twice this value). Each process scores its own 2n anchors against the 2N
    gathered views, [2n, 2N], not the whole [2N, 2N] matrix on every process. `extra_negatives` [K, d], normalised
    (SimCLR v2's queue of momentum keys), join every anchor's denominator.
    """
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    columns = torch.cat([gather(z1), gather(z2)], dim=0)  # [2N, d]: all first views, then all second views
    n, big_n = len(z1), len(columns) // 2
    first = torch.arange(n, device=z1.device) + gathered_rank() * n  # own columns
    own = torch.cat([first, first + big_n])  # each anchor's own column, masked out
    positive = torch.cat([first + big_n, first])  # the other view of the same image
    if extra_negatives is not None:
        columns = torch.cat([columns, extra_negatives], dim=0)
    logits = torch.cat([z1, z2], dim=0) @ columns.T / temperature
    logits[torch.arange(2 * n, device=z1.device), own] = float("-inf")
    return F.cross_entropy(logits, positive)


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


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum x across processes (identity on one, or with --no-gather), with the gradient summed back to every
    process's x."""
    if not gathering():
        return x
    from torch.distributed.nn.functional import all_reduce as differentiable_all_reduce
    return differentiable_all_reduce(x)


def batch_standardize(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """BatchNorm1d(affine=False) in training mode: every dimension to zero mean and unit (biased) variance over the
    batch; over the global batch under torch.distributed, as the official code's SyncBatchNorm."""
    n = all_reduce(torch.tensor(float(len(z)), device=z.device))
    mean = all_reduce(z.sum(dim=0)) / n
    var = all_reduce((z - mean).pow(2).sum(dim=0)) / n
    return (z - mean) / torch.sqrt(var + eps)


def barlow_twins(z1: torch.Tensor, z2: torch.Tensor, redundancy_weight: float) -> tuple[torch.Tensor, ...]:
    """Barlow Twins' loss on the projector outputs of the two views, [B, d] each. With the cross-correlation
    C = BN(z1)ᵀ·BN(z2) / B of the batch-standardised embeddings (summed over processes, B the global batch),
        L = Σ_i (1 − C_ii)² + λ·Σ_{i≠j} C_ij²
    unscaled, as the official code since June 2021 (its earlier --scale-loss 1/32 is gone). Returns (L, the
    invariance term Σ(1 − C_ii)², the redundancy term Σ_{i≠j} C_ij² before λ).

    In fp32 whatever the autocast: bf16 keeps 8 significant bits, too few to resolve 1 − C_ii near the optimum."""
    with torch.autocast(z1.device.type, enabled=False):
        z1, z2 = batch_standardize(z1.float()), batch_standardize(z2.float())
        n = all_reduce(torch.tensor(float(len(z1)), device=z1.device))
        c = all_reduce(z1.T @ z2) / n
        diagonal = c.diagonal()
        on_diagonal = (1 - diagonal).pow(2).sum()
        off_diagonal = c.pow(2).sum() - diagonal.pow(2).sum()  # Σ_{i≠j} without building a mask of d² entries
    return on_diagonal + redundancy_weight * off_diagonal, on_diagonal, off_diagonal


def vicreg_variance(z: torch.Tensor, target: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """VICReg's v(Z): the mean over dimensions of the hinge max(0, γ − S(z_j, ε)), S = sqrt(Var(z_j) + ε) with the
    unbiased variance over the batch; 0 once every dimension's std reaches γ."""
    return F.relu(target - torch.sqrt(z.var(dim=0) + eps)).mean()


def vicreg_covariance(z: torch.Tensor) -> torch.Tensor:
    """VICReg's c(Z): the squared off-diagonal entries of the covariance matrix (unbiased, 1/(N−1)), summed and
    divided by the dimension d."""
    n, d = z.shape
    z = z - z.mean(dim=0)
    cov = z.T @ z / (n - 1)
    return (cov.pow(2).sum() - cov.diagonal().pow(2).sum()) / d


def vicreg(z1: torch.Tensor, z2: torch.Tensor, invariance_weight: float, variance_weight: float,
           covariance_weight: float, target_std: float = 1.0, eps: float = 1e-4) -> tuple[torch.Tensor, ...]:
    """VICReg's loss on the expander outputs of the two views, [B, d] each, as the official main_vicreg.py computes it:
        L = λ·s(Z, Z') + μ·[v(Z) + v(Z')]/2 + ν·[c(Z) + c(Z')]
    with s the mean squared error over the local batch, and v and c over the batch gathered from all processes.
    The code averages the two variance terms where the paper's formula sums them (facebookresearch/vicreg issues
    #8, #26); λ = μ = 25, ν = 1 were tuned with the code. Returns (L, s, the averaged v, the summed c), the three
    terms before their weights. In fp32 whatever the autocast, like barlow_twins."""
    with torch.autocast(z1.device.type, enabled=False):
        z1, z2 = z1.float(), z2.float()
        invariance = F.mse_loss(z1, z2)
        z1, z2 = gather(z1), gather(z2)
        variance = (vicreg_variance(z1, target_std, eps) + vicreg_variance(z2, target_std, eps)) / 2
        covariance = vicreg_covariance(z1) + vicreg_covariance(z2)
    loss = invariance_weight * invariance + variance_weight * variance + covariance_weight * covariance
    return loss, invariance, variance, covariance


def in_batch_infonce(anchors: torch.Tensor, candidates: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy of cos(anchor_i, candidate_j)/T over the (all-gathered) candidates, anchor i's positive being
    candidate i of its own process: -(1/N) Σ_i log softmax_j(â_i·ĉ_j/T)[i]. One view order of MoCo v3's ctr and of
    NNCLR's Eq. 2; gradients reach the anchors and this process's candidates."""
    anchors, candidates = F.normalize(anchors, dim=1), gather(F.normalize(candidates, dim=1))
    logits = anchors @ candidates.T / temperature
    positives = torch.arange(len(anchors), device=anchors.device) + gathered_rank() * len(anchors)
    return F.cross_entropy(logits, positives)


def mocov3_ctr(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo v3's ctr(q, k) = 2τ · CE(q̂·k̂ᵀ/τ): the keys are the other view's momentum-encoder outputs of the
    whole (gathered) batch, key i the positive of query i, no queue. The 2τ factor makes the loss (and its
    gradient) less sensitive to τ (Chen, Xie & He 2021, Alg. 1)."""
    return 2 * temperature * in_batch_infonce(q, k.detach(), temperature)


@torch.no_grad()
def sinkhorn_codes(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """SwAV's codes: the soft assignment Q [B, K] of B samples to K prototypes that maximises Tr(Qᵀ·scores) + ε·H(Q)
    under the equal-partition constraint (each prototype receives B/K of the mass, each sample a distribution),
    by `iterations` Sinkhorn-Knopp steps on exp(scores/ε). Under torch.distributed the sums run over the samples of
    every process, as the official distributed_sinkhorn does (B is then the global count)."""
    distributed = gathering()

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


def dino_loss(student: torch.Tensor, teacher_probs: torch.Tensor, student_temp: float) -> torch.Tensor:
    """DINO's cross-entropy H(P_t, P_s) = −Σ_k P_t log P_s, averaged over the batch and over the (teacher view,
    student view) pairs of different views. `student` [V, B, K]: head outputs of all V crops, the 2 global ones
    first; `teacher_probs` [2, B, K]: the teacher's centred, sharpened softmax of the global crops, taken as
    constants. P_s = softmax(student / student_temp)."""
    log_p_student = F.log_softmax(student.float() / student_temp, dim=-1)
    cross = -torch.einsum("tbk,vbk->tv", teacher_probs.detach().float(), log_p_student) / student.shape[1]
    different_views = ~torch.eye(*cross.shape, dtype=torch.bool, device=cross.device)  # teacher t never sees view t
    return cross[different_views].mean()

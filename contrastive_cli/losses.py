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


def dino_loss(student: torch.Tensor, teacher_probs: torch.Tensor, student_temp: float) -> torch.Tensor:
    """DINO's cross-entropy H(P_t, P_s) = −Σ_k P_t log P_s, averaged over the batch and over the (teacher view,
    student view) pairs of different views. `student` [V, B, K]: head outputs of all V crops, the 2 global ones
    first; `teacher_probs` [2, B, K]: the teacher's centred, sharpened softmax of the global crops, taken as
    constants. P_s = softmax(student / student_temp)."""
    log_p_student = F.log_softmax(student.float() / student_temp, dim=-1)
    cross = -torch.einsum("tbk,vbk->tv", teacher_probs.detach().float(), log_p_student) / student.shape[1]
    different_views = ~torch.eye(*cross.shape, dtype=torch.bool, device=cross.device)  # teacher t never sees view t
    return cross[different_views].mean()

"""The gathered computations that tests/test_gathered_losses.py checks: each takes a process's rows of a fixed global
batch and returns a loss (a scalar) or a per-sample output; the same function on one process with the whole batch is
the reference."""

import torch

from contrastive_cli import losses
from contrastive_cli.distributed import GlobalBatchNorm

BATCH, DIM = 8, 16


def inputs(name: str) -> list[torch.Tensor]:
    """Two views' outputs [BATCH, DIM] (a fixed draw per case)."""
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    return [torch.randn(BATCH, DIM, generator=g, dtype=torch.float64) for _ in range(2)]


def batch_norm(x, y):
    """Batch statistics over the global batch (GlobalBatchNorm); per-sample outputs, weighted so the gradient is
    not trivially zero."""
    bn = GlobalBatchNorm(DIM).double()
    weights = torch.linspace(-1, 1, DIM, dtype=torch.float64)
    return (bn(x + y) * weights).pow(2).sum(dim=1)


def constant_rows(rows: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(rows, DIM, generator=g, dtype=torch.float64), dim=1)


QUEUE, PROTOTYPES = constant_rows(5, 1), constant_rows(4, 2)


def sinkhorn(x, y):
    """SwAV's codes (equal partition over the global batch) of x's scores against 4 prototypes, times y's scores
    (the codes carry no gradient)."""
    return (losses.sinkhorn_codes(x @ PROTOTYPES.T, 0.05, 3) * (y @ PROTOTYPES.T)).sum(dim=1)

CASES = {
    "nt_xent": lambda x, y: losses.nt_xent(x, y, 0.5),  # SimCLR: local anchors vs gathered columns
    "nt_xent_queue": lambda x, y: losses.nt_xent(x, y, 0.5, extra_negatives=QUEUE),  # SimCLR v2
    "mocov3_ctr": lambda x, y: losses.mocov3_ctr(x, y, 0.2),  # MoCo v3 (and NNCLR's in-batch InfoNCE)
    "barlow_twins": lambda x, y: losses.barlow_twins(x, y, 0.005)[0],  # the cross-correlation all-reduced
    "vicreg": lambda x, y: losses.vicreg(x, y, 25.0, 25.0, 1.0)[0],  # variance and covariance of the gathered batch
    "batch_norm": batch_norm,
    "sinkhorn": sinkhorn,
}
# per-sample outputs (rows of the global result) rather than a loss averaged over the processes
PER_SAMPLE = {"batch_norm", "sinkhorn"}

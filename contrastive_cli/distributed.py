"""Data parallelism under `torchrun`: PyTorch's own engine (torch.distributed, NCCL on GPUs, gloo on CPUs), no
launcher of our own. One process per device; torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, the
rendezvous) says who is who. Outside torchrun every helper here is the identity and a run is one process.

What a method gathers or reduces lives in the method (losses.gather, losses.all_reduce); the loop only
shards the data, averages gradients (DistributedDataParallel) and lets rank 0 write.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Callable

import torch
import torch.distributed as dist

from .errors import UserError


def launched() -> bool:
    """Started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (torchrun's RANK before the process group is joined; 0 outside torchrun)."""
    return dist.get_rank() if active() else int(os.environ.get("RANK", "0"))


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def device_for(name: str) -> str:
    """Each process's device under torchrun: cuda:LOCAL_RANK for CUDA (a single 'cuda' or 'auto'), else as given."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if launched() and name in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{local}"
    return name


def init(device: torch.device) -> None:
    """Join the process group torchrun set up (once): NCCL for CUDA devices, gloo otherwise."""
    if not launched() or active():
        return
    if not dist.is_available():
        raise UserError("This torch build has no torch.distributed, so it cannot run under torchrun",
                        "run without torchrun, or install a torch build with distributed support")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # the differentiable collectives of torch.distributed.nn are deprecated for private successors; until a public
    # one exists they are what a loss of gathered features needs, and the warning would repeat every step
    warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional", category=FutureWarning)
    # CPC v2's permuted patch grids give gradients of other strides than DDP's buckets: a copy, not an error
    warnings.filterwarnings("ignore", message=r"Grad strides do not match bucket view strides")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            **({"device_id": device} if device.type == "cuda" else {}))


def shutdown() -> None:
    if active():
        dist.destroy_process_group()


def broadcast(value: Any) -> Any:
    """Rank 0's value of a picklable object (a path, a decision) on every rank; our own objects only."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(write: Callable[[], Any]) -> Any:
    """write() on rank 0 only (files are rank 0's), its result or its UserError (a full disk) on every rank, so
    every process stops alike rather than wait for a rank that has failed."""
    result, failed = None, None
    if is_main():
        try:
            result = write()
        except UserError as err:
            failed = err
    result, failed = broadcast((result, failed))
    if failed is not None:
        raise failed
    return result


def mean_of(values: torch.Tensor) -> torch.Tensor:
    """The mean over ranks of a tensor of scalars (a step's losses), with no gradient."""
    if not active():
        return values
    values = values.detach().clone()
    dist.all_reduce(values)
    return values / world()


def peer_failure(err: BaseException) -> bool:
    """Whether an error from a collective means another process is gone (killed, crashed, unreachable)."""
    kinds = tuple(getattr(dist, name) for name in ("DistError", "DistBackendError", "DistNetworkError")
                  if hasattr(dist, name))
    text = str(err)
    return isinstance(err, kinds) or any(mark in text for mark in (
        "Connection closed by peer", "Connection reset by peer", "gloo", "NCCL", "Broken pipe"))


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when it is true on any: decisions to stop are taken together, never by one rank
    alone (the others would wait forever in the next collective)."""
    if not active():
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


# ---- sharded evaluation -------------------------------------------------------------------------


def my_share(n: int) -> slice:
    """This process's contiguous block of n items (rank order; the last blocks may be shorter), all on one process."""
    size = -(-n // world())
    return slice(min(rank() * size, n), min((rank() + 1) * size, n))


def gather_rows(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Each tensor's rows from every process, concatenated in rank order, on every process (no gradient). Shares
    may differ in length (a process skipped an unreadable file): they are padded to the longest for the collective
    and trimmed after. NCCL moves CUDA tensors only, so CPU tensors travel through the process's device."""
    if not active():
        return list(tensors)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    counts = torch.tensor([len(tensors[0])], device=device)
    all_counts = [torch.zeros_like(counts) for _ in range(world())]
    dist.all_gather(all_counts, counts)
    longest = int(max(all_counts))
    out = []
    for t in tensors:
        padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=device)
        padded[:len(t)] = t.to(device)
        parts = [torch.empty_like(padded) for _ in range(world())]
        dist.all_gather(parts, padded)
        out.append(torch.cat([p[:int(c)] for p, c in zip(parts, all_counts)]).to(t.device))
    return out


def gather_list(items: list) -> list:
    """A small list of picklable items (file paths) from every process, concatenated in rank order."""
    if not active():
        return items
    lists = [None] * world()
    dist.all_gather_object(lists, items)
    return [item for part in lists for item in part]


# ---- batch norm over the global batch ------------------------------------------------------------


class GlobalBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics are those of the global batch of all processes, for CPU (gloo)
    runs: torch's SyncBatchNorm runs on GPUs only. One differentiable all-gather per layer of each process's
    (count, mean, sum of squared deviations), combined exactly (Chan et al.'s parallel variance), so the statistics
    equal BatchNorm's on the whole batch; evaluation uses the running statistics, as BatchNorm."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and active()):
            return super().forward(x)
        from torch.distributed.nn.functional import all_gather
        dims, shape = [0, *range(2, x.dim())], [1, -1] + [1] * (x.dim() - 2)
        count = x.numel() // x.shape[1]
        mean = x.mean(dims)
        squares = (x - mean.view(shape)).pow(2).sum(dims)
        parts = torch.stack(all_gather(torch.stack([torch.full_like(mean, count), mean, squares])))  # [W, 3, C]
        counts, means, sums = parts[:, 0], parts[:, 1], parts[:, 2]
        n = counts.sum(0)
        mean = (counts * means).sum(0) / n
        var = (sums + counts * (means - mean).pow(2)).sum(0) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * n / (n - 1), m)  # unbiased, as BatchNorm
        y = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


def sync_batch_norm(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Every BatchNorm of `module` computing its statistics over the global batch: torch's SyncBatchNorm on GPUs,
    GlobalBatchNorm elsewhere; parameters and running statistics are kept (the state_dict keys do not change)."""
    fused = sorted({type(m).__name__ for m in module.modules()
                    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and any(True for _ in m.children())})
    if fused:  # timm's BatchNormAct2d & co: a plain (Sync)BatchNorm in their place would drop their activation
        from .errors import UserError
        raise UserError(f"--sync-bn cannot convert this backbone's {', '.join(fused)} layers (batch norm fused with "
                        "its activation, as timm builds EfficientNets and RegNets) without losing the activation",
                        "run with --no-sync-bn (each process normalises over its own share of the batch)")
    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if isinstance(child, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(child, GlobalBatchNorm):
            replacement = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                          child.track_running_stats).to(device)
            replacement.load_state_dict(child.state_dict())
            replacement.train(child.training)
            for p_new, p_old in zip(replacement.parameters(), child.parameters()):
                p_new.requires_grad_(p_old.requires_grad)
            setattr(module, name, replacement)
        else:
            sync_batch_norm(child, device)
    return module

"""Optimisers and learning-rate schedules shared by pretraining, the linear probe and fine-tuning."""

from __future__ import annotations

import math

import torch

def decay_groups(params: list, lr: float, o, **extra) -> list[dict]:
    """Parameter groups at `lr`: all of `params` with weight decay, or, when the recipe excludes biases and norm
    weights from decay (o.exclude_bias_norm_wd), the matrices with it and the vectors without."""
    split = ([p for p in params if p.ndim > 1], [p for p in params if p.ndim <= 1]) \
        if o.exclude_bias_norm_wd else (params, [])
    ratios = (1.0, getattr(o, "bias_lr_ratio", None) or 1.0)  # Barlow Twins gives biases and norms a smaller lr
    return [{"params": ps, "weight_decay": wd, "base_wd": wd, "base_lr": lr * r, "lr": lr * r, "fixed_lr": False,
             **extra} for ps, wd, r in zip(split, (o.weight_decay, 0.0), ratios) if ps]


def param_groups(method_groups: list[dict], o) -> list[dict]:
    """A method's groups (Method.parameter_groups) at the spec's lr, each split into decayed and non-decayed
    (biases, norm weights) when the recipe says so."""
    lr = o.lr * o.batch_size / 256  # linear scaling rule
    groups = []
    for group in method_groups:
        groups += decay_groups(group.pop("params"), lr, o, fixed_lr=bool(group.pop("fixed_lr", False)))
    return groups


def fused(device: torch.device) -> dict:
    """fused=True where this torch has fused SGD/AdamW kernels for the device: one pass over all parameters
    instead of a loop of small ops (on 2 CPU cores, 26 instead of 56 ms per ResNet-18 step; docs/performance.md)."""
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices
    except ImportError:  # older torch: the per-parameter loop
        return {}
    return {"fused": True} if device.type in _get_fused_kernels_supported_devices() else {}


class LARS(torch.optim.Optimizer):
    """LARS (You, Gitman & Ginsburg 2017) as SimCLR, BYOL and Barlow Twins run it: for each weight matrix (ndim > 1)
    the gradient plus weight decay, d = g + wd·w, is scaled by the trust ratio η·‖w‖/‖d‖ (1 when either norm is 0),
    then SGD momentum: μ ← m·μ + d, w ← w − lr·μ. Biases and norm weights (ndim 1) are neither decayed nor adapted
    (the papers' exclusion). Weight decay and lr come from each group, so the schedules set them as for SGD."""

    def __init__(self, params, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.001):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta})

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            # one fused op per stage for all the group's tensors, not a loop of small ops per parameter
            steps = [p.grad if p.ndim <= 1 else p.grad.add(p, alpha=group["weight_decay"]) for p in params]
            matrices = [i for i, p in enumerate(params) if p.ndim > 1]
            if matrices:
                w_norms = torch.stack(torch._foreach_norm([params[i] for i in matrices]))
                d_norms = torch.stack(torch._foreach_norm([steps[i] for i in matrices]))
                trust = torch.where((w_norms > 0) & (d_norms > 0), group["eta"] * w_norms / d_norms,
                                    torch.ones_like(w_norms))
                torch._foreach_mul_([steps[i] for i in matrices], list(trust.unbind()))
            buffers = []
            for p, d in zip(params, steps):
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buffers.append(state["momentum_buffer"])
            torch._foreach_mul_(buffers, group["momentum"])
            torch._foreach_add_(buffers, steps)
            torch._foreach_add_(params, buffers, alpha=-group["lr"])
        return loss


def make_optimizer(groups: list[dict], o, device: torch.device) -> torch.optim.Optimizer:
    """The spec's optimiser (SGD with momentum, AdamW or LARS) over `groups`, fused where the device has the
    kernels."""
    if o.optimizer == "lars":
        return LARS(groups, momentum=o.optimizer_momentum, eta=o.lars_eta)
    if o.optimizer == "adamw":
        return torch.optim.AdamW(groups, betas=(o.optimizer_momentum, 0.999), **fused(device))
    return torch.optim.SGD(groups, momentum=o.optimizer_momentum, **fused(device))


def build_optimizer(method: torch.nn.Module, o, device: torch.device) -> torch.optim.Optimizer:
    """The optimiser of a method's parameter_groups() under OptimSpec `o`."""
    return make_optimizer(param_groups(method.parameter_groups(), o), o, device)


def lr_factor(step: int, total: int, warmup: int, schedule: str, milestones=(0.6, 0.8)) -> float:
    """Multiplier of the base lr at `step`: linear warm-up, then cosine to 0, step decay (x0.1 per milestone) or constant."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "step":
        return 0.1 ** sum(step >= m * total for m in milestones)
    return 1.0


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> float:
    for g in optimizer.param_groups:
        g["lr"] = g["base_lr"] if g["fixed_lr"] else g["base_lr"] * factor
    return optimizer.param_groups[0]["lr"]


def set_weight_decay(optimizer: torch.optim.Optimizer, o, step: int, total: int) -> None:
    """DINO's weight-decay schedule: a cosine from o.weight_decay to o.weight_decay_end over the run, per step, on
    the decayed groups (the biases and norms the recipe excludes stay at 0)."""
    end = getattr(o, "weight_decay_end", None)
    if end is None or end == o.weight_decay:
        return
    wd = end + (o.weight_decay - end) * 0.5 * (1 + math.cos(math.pi * step / max(1, total)))
    for g in optimizer.param_groups:
        if g.get("base_wd", 0.0) > 0:
            g["weight_decay"] = wd

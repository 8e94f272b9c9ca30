"""Where and how a command runs: the device, data-loader workers, mixed precision, and the seeds that make every
run reproducible and every resume exact (the data order of an epoch comes from (seed, epoch), the augmentation of a
step from (seed, step), so resuming needs only the module state and the step counter)."""

from __future__ import annotations

import os
from contextlib import nullcontext
from typing import Optional

import torch

from .errors import UserError


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} was asked for but CUDA is not available on this machine",
                        "use --device cpu or --device auto")
    if name.startswith("mps") and not torch.backends.mps.is_available():
        raise UserError(f"--device {name} was asked for but Apple's MPS is not available on this machine",
                        "use --device cpu or --device auto")
    try:
        device = torch.device(name)
        torch.empty(1, device=device)  # a device this torch build knows but cannot use fails here, not mid-run
    except RuntimeError as err:
        raise UserError(f"--device {name} cannot be used here ({str(err).splitlines()[0]})",
                        "use --device cpu, cuda or auto") from None
    return device


def default_workers(workers: Optional[int]) -> int:
    return min(4, os.cpu_count() or 1) if workers is None else workers


def autocast(device: torch.device, amp: Optional[bool]):
    if device.type == "cuda" and amp is not False:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled order of `n` training images in `epoch`, from (seed, epoch) alone."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))


def seed_step(generator: torch.Generator, seed: int, step: int) -> torch.Generator:
    """Seed the augmentation generator for `step`: a step's views depend on (seed, step) alone."""
    return generator.manual_seed(seed * 1_000_003 + step)

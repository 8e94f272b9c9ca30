"""Run by tests/test_gathered_losses.py under torchrun: each process computes every gathered loss on its half of a
fixed global batch and saves the values and the gradients of its own inputs (OUT/rank<R>.safetensors)."""

import sys

import torch
from safetensors.torch import save_file

from contrastive_cli import distributed, losses

from gathered_losses_cases import CASES, inputs


def main(out: str) -> None:
    distributed.init(torch.device("cpu"))
    rank, world = distributed.rank(), distributed.world()
    results = {}
    for name, case in CASES.items():
        full = inputs(name)
        share = len(full[0]) // world
        local = [x[rank * share:(rank + 1) * share].clone().requires_grad_(True) for x in full]
        value = case(*local)
        value.sum().backward()
        results[f"{name}.value"] = value.detach()
        for i, x in enumerate(local):
            results[f"{name}.grad{i}"] = x.grad if x.grad is not None else torch.zeros_like(x)  # detached input
    save_file({k: v.contiguous() for k, v in results.items()}, f"{out}/rank{rank}.safetensors")
    distributed.shutdown()


if __name__ == "__main__":
    losses.GATHERING["on"] = True
    main(sys.argv[1])

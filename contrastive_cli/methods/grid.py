"""The 3x3 grid of patches that the context pretext tasks cut from a view: relative location (Doersch et al. 2015)
and jigsaw (Noroozi & Favaro 2016). Gaps between the patches and a random shift of each patch keep the network from
solving the task by continuing lines or textures across borders (both papers' defence against trivial shortcuts)."""

from __future__ import annotations

import torch

CENTRE = 4  # raster order, row-major: patch (r, c) is number 3r + c


def grid_patches(x: torch.Tensor, patch: int, gap: int, jitter: int,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """[B, C, S, S] → [B, 9, C, patch, patch] in raster order. Patch (r, c) starts at the frame's origin +
    (r, c)·(patch + gap) + its own offset drawn from [0, 2·jitter] on each axis; the frame (3 patches, 2 gaps, 2
    jitters wide) sits at a uniform place of the view. Draws come from `generator` or torch's global CPU RNG (which
    checkpoints save), so a resumed run cuts the same grids."""
    b, side = x.shape[0], x.shape[-1]
    free = side - (3 * patch + 2 * gap + 2 * jitter)
    if free < 0 or patch < 1 or x.shape[-2] != side:
        raise ValueError(f"a 3x3 grid of {patch} px patches, {gap} px gaps and ±{jitter} px jitter does not fit "
                         f"{tuple(x.shape[-2:])} px views")
    origin = torch.randint(0, free + 1, (b, 1, 2), generator=generator)
    offsets = torch.randint(0, 2 * jitter + 1, (b, 9, 2), generator=generator)
    cells = torch.stack(torch.meshgrid(torch.arange(3), torch.arange(3), indexing="ij"), -1).view(1, 9, 2)
    corner = (origin + cells * (patch + gap) + offsets).to(x.device)  # [B, 9, 2]: (row, column) of the top left
    steps = torch.arange(patch, device=x.device)
    rows = (corner[..., 0, None] + steps)[:, :, :, None]  # [B, 9, p, 1]
    cols = (corner[..., 1, None] + steps)[:, :, None, :]  # [B, 9, 1, p]
    image = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    return x.permute(0, 2, 3, 1)[image, rows, cols].permute(0, 1, 4, 2, 3)  # [B, 9, p, p, C] → [B, 9, C, p, p]

"""The quantised colour spaces of Zhang, Isola & Efros's colour pretext tasks (colorization 2016, split-brain 2017).

ab: the ab plane in square bins of side GRID = 10 (centres at multiples of 10), keeping the bins that some sRGB
colour falls in (the paper's Q = 313 "in-gamut" bins). A target ab value is soft-encoded over its 5 nearest bin
centres with Gaussian weights (sigma 5). Colorization's class rebalancing weighs each pixel by
w ∝ ((1 - λ) p̃ + λ/Q)^-1 of its nearest bin, p̃ the bins' empirical distribution smoothed in ab space; the paper
measures p on ImageNet beforehand, we count it online over the pixels trained on (ColourPrior, a buffer that
checkpoints carry).

L: lightness 0..100 in `bins` equal bins (split-brain's ab → L classification).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from ..losses import gather
from .cmc import rgb_to_lab

GRID = 10.0  # ab bin side (paper §2.1: "grid size 10")
NEIGHBOURS = 5  # soft-encoding: the 5 nearest bins (paper §2.1; the released NNEncLayer uses 10)
SIGMA = 5.0  # Gaussian width of the soft-encoding and of the prior's smoothing, in ab units (paper §2.1, §2.2)
L_MAX = 100.0


@functools.lru_cache(maxsize=4)
def gamut_bins(grid: float = GRID) -> torch.Tensor:
    """[Q, 2] float32 centres (multiples of `grid`, sorted by a then b) of the ab bins hit by an 8-bit sRGB colour.

    Only the cube's six faces are converted (6 x 256² colours, in float64 so that no colour near a bin edge lands
    differently on another machine): the Lab image of the cube is a solid whose projection onto the ab plane is
    the projection of its surface, the image of the cube's faces."""
    levels = torch.arange(256, dtype=torch.float64) / 255
    u, v = torch.meshgrid(levels, levels, indexing="ij")
    faces = []
    for axis in range(3):
        for value in (0.0, 1.0):
            channels = [u, v]
            channels.insert(axis, torch.full_like(u, value))
            faces.append(torch.stack(channels))
    rgb = torch.cat(faces, dim=1).unsqueeze(0)  # [1, 3, 6·256, 256]
    cells = torch.round(rgb_to_lab(rgb)[0, 1:].flatten(1).T / grid).long()  # [P, 2] bin coordinates
    keys = torch.unique((cells[:, 0] + 1000) * 2000 + cells[:, 1] + 1000)  # 1-D keys: a fast, sorted unique
    return torch.stack([keys // 2000 - 1000, keys % 2000 - 1000], dim=1).float() * grid


def soft_encode(ab: torch.Tensor, centres: torch.Tensor, neighbours: int = NEIGHBOURS,
                sigma: float = SIGMA) -> torch.Tensor:
    """ab [P, 2] -> [P, Q] distributions: Gaussian weights exp(-d²/2σ²) on the `neighbours` nearest centres,
    normalised to sum 1 (zero elsewhere). The nearest bin always has the largest weight."""
    d2 = torch.cdist(ab.float(), centres).square()
    near, index = d2.topk(neighbours, dim=1, largest=False)
    weights = torch.softmax(-near / (2 * sigma ** 2), dim=1)  # = exp(-d²/2σ²) / Σ, without underflow far out
    return torch.zeros_like(d2).scatter_(1, index, weights)


def nearest_bin(ab: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """ab [P, 2] -> [P] index of the nearest bin centre (the hard quantisation)."""
    return torch.cdist(ab.float(), centres).argmin(dim=1)


def decode(distribution: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """[P, Q] weights -> [P, 2] ab: their mean over the bin centres (a one-hot gives the bin's centre)."""
    return distribution @ centres


def smooth(p: torch.Tensor, centres: torch.Tensor, sigma: float = SIGMA) -> torch.Tensor:
    """p̃: the distribution p [Q] over the bins smoothed with a Gaussian in ab space (each bin takes the
    kernel-weighted average of its neighbours' probabilities, so a uniform p stays uniform), renormalised."""
    kernel = torch.exp(-torch.cdist(centres, centres).square() / (2 * sigma ** 2))
    smoothed = (kernel @ p) / kernel.sum(dim=1)
    return smoothed / smoothed.sum()


def rebalancing_weights(p_smooth: torch.Tensor, lam: float) -> torch.Tensor:
    """w ∝ ((1 - λ) p̃ + λ/Q)^-1 normalised so that E_p̃[w] = 1 (paper eq. 4): rare colours weigh more; λ = 1
    makes every weight 1 (no rebalancing)."""
    w = 1.0 / ((1 - lam) * p_smooth + lam / len(p_smooth))
    return w / (p_smooth * w).sum()


class ColourPrior(nn.Module):
    """The online estimate of the ab distribution behind the rebalancing weights: counts of the nearest bins of
    every target pixel trained on so far (summed over processes under torchrun, so every process's counts agree).
    A persistent buffer: checkpoints save it and a resumed run continues counting."""

    def __init__(self, centres: torch.Tensor, lam: float, sigma: float = SIGMA):
        super().__init__()
        self.lam, self.sigma = lam, sigma
        self.register_buffer("centres", centres.clone(), persistent=False)
        self.register_buffer("counts", torch.zeros(len(centres), dtype=torch.long))

    @torch.no_grad()
    def update(self, bins: torch.Tensor) -> None:
        hist = torch.bincount(bins.flatten(), minlength=len(self.counts))
        self.counts += gather(hist[None]).sum(0)

    @torch.no_grad()
    def weights(self) -> torch.Tensor:
        """[Q] rebalancing weights from the counts so far (uniform before any count: the tiny pseudo-count)."""
        p = self.counts.float() + 1e-6
        return rebalancing_weights(smooth(p / p.sum(), self.centres, self.sigma), self.lam)


def l_bin(lightness: torch.Tensor, bins: int) -> torch.Tensor:
    """L (0..100) -> index of its bin among `bins` equal bins [i·100/bins, (i+1)·100/bins); L = 100 joins the last."""
    return (lightness * (bins / L_MAX)).floor().long().clamp_(0, bins - 1)


def l_centre(index: torch.Tensor, bins: int) -> torch.Tensor:
    """The L value at the centre of bin `index`."""
    return (index.float() + 0.5) * (L_MAX / bins)

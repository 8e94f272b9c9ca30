"""Jigsaw puzzles (Noroozi & Favaro 2016): the 9 tiles of a 3x3 grid, shuffled by one of a fixed set of permutations,
go one by one through a shared encoder (the context-free network: no tile sees another below fc7); the network names
the permutation. Putting tiles back in place needs object parts and their layout.

The exported encoder is the plain backbone, applied to the whole image as the paper evaluates its conv layers."""

import functools

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import ViewAugment
from .base import Method
from .grid import grid_patches

PERMUTATION_SEED = 0  # the same set in every run


@functools.lru_cache(maxsize=1)
def all_permutations() -> torch.Tensor:
    """The 9! orders of 0..8 [362880, 9] uint8, built by inserting each next value at every place (vectorised)."""
    perms = torch.zeros(1, 1, dtype=torch.uint8)
    for value in range(1, 9):
        n = perms.shape[1]
        perms = torch.cat([torch.cat([perms[:, :i], torch.full((len(perms), 1), value, dtype=torch.uint8),
                                      perms[:, i:]], 1) for i in range(n + 1)])
    return perms


@functools.lru_cache(maxsize=8)
def maximal_hamming_permutations(count: int, seed: int = PERMUTATION_SEED) -> torch.Tensor:
    """[count, 9] long: greedy farthest-point selection over all 9! permutations. The first is drawn at random (the
    paper's Algorithm 1); each next one has the largest minimum Hamming distance to those chosen, ties broken by the
    largest summed distance (Algorithm 1's own criterion), then by the first in the enumeration."""
    perms = all_permutations()
    by_place = perms.T.contiguous()  # [9, 9!]: a comparison per place runs over contiguous memory (3x faster)
    first = int(torch.randint(len(perms), (1,), generator=torch.Generator().manual_seed(seed)))
    chosen = [first]
    nearest = torch.full((len(perms),), 9, dtype=torch.int32)  # distance to the closest chosen permutation
    total = torch.zeros(len(perms), dtype=torch.int32)  # summed distance to the chosen ones
    for _ in range(count - 1):
        d = (by_place != perms[chosen[-1], :, None]).sum(0, dtype=torch.uint8)
        nearest, total = torch.minimum(nearest, d), total + d
        chosen.append(int((nearest * 10_000 + total).argmax()))  # the sum stays < 9 x 1000 < 10_000
    return perms[chosen].long()


def normalise_tiles(tiles: torch.Tensor) -> torch.Tensor:
    """Each tile's channels to zero mean, unit std over its own pixels [.., C, p, p] (the paper's per-tile
    normalisation: neighbouring tiles cannot be matched by their mean intensity or contrast)."""
    mean = tiles.mean(dim=(-2, -1), keepdim=True)
    std = tiles.std(dim=(-2, -1), keepdim=True)
    return (tiles - mean) / std.clamp_min(1e-5)


class Jigsaw(Method):
    name = "jigsaw"

    def __init__(self, spec, backbone, feature_dim, data):
        super().__init__(spec, backbone, feature_dim, data)
        s = self.spec
        # a buffer, so checkpoints carry the set the classifier's outputs refer to
        self.register_buffer("permutation_set", maximal_hamming_permutations(s.permutations).clone())
        self.fc6 = nn.Sequential(nn.Linear(feature_dim, s.jigsaw_tile_dim), nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(nn.Linear(9 * s.jigsaw_tile_dim, s.jigsaw_hidden_dim), nn.ReLU(inplace=True),
                                        nn.Linear(s.jigsaw_hidden_dim, s.permutations))  # fc7, fc8

    def views(self, augment, size, mean, std):
        return [ViewAugment(augment, size, mean, std, view=0)]  # one view: its tiles make the puzzle

    def shuffle(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 9, ..] → (puzzles, labels): a permutation drawn uniformly from the set per image (global CPU RNG);
        place i of the puzzle shows tile permutation_set[label][i] of the grid."""
        labels = torch.randint(len(self.permutation_set), (len(tiles),)).to(tiles.device)
        order = self.permutation_set[labels]  # [B, 9]
        return tiles[torch.arange(len(tiles), device=tiles.device)[:, None], order], labels

    def forward(self, views, indices=None, progress=0.0):
        (x,) = views
        s = self.spec
        tiles = normalise_tiles(grid_patches(x, s.grid_patch, s.grid_gap, s.grid_jitter))  # [B, 9, C, p, p]
        puzzles, labels = self.shuffle(tiles)
        f = self.fc6(self.backbone(puzzles.flatten(0, 1))).view(len(x), -1)  # the 9 fc6 in puzzle order
        logits = self.classifier(f)
        loss = F.cross_entropy(logits, labels)
        return {"loss": loss, "puzzle_acc": (logits.argmax(1) == labels).float().mean()}

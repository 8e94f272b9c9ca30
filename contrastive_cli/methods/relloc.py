"""Relative location (Doersch, Gupta & Efros 2015, "Context Prediction"): from a 3x3 grid of patches of one view,
a late-fusion siamese network tells where each of the 8 neighbours lay relative to the centre patch. Predicting that
needs the parts of objects (a wheel lies below a car door), which is what the patch encoder must learn.

The exported encoder is the plain backbone, applied to the whole image as the paper evaluates its conv layers."""

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import ViewAugment
from .base import Method
from .grid import CENTRE, grid_patches

# Class k is the k-th neighbour in raster order with the centre left out:  0 1 2 / 3 · 4 / 5 6 7  (grid index 3r + c)
NEIGHBOURS = [i for i in range(9) if i != CENTRE]


def drop_colours(patches: torch.Tensor) -> torch.Tensor:
    """Per patch [.., 3, p, p]: keep one channel drawn uniformly, replace the other two by Gaussian noise with 1/100
    of the kept channel's std (the paper's colour dropping against chromatic aberration). Global CPU RNG."""
    grid = patches.shape[:-3]
    keep = F.one_hot(torch.randint(0, 3, grid), 3).to(patches)[..., None, None]  # [.., 3, 1, 1]
    kept = (patches * keep).sum(-3, keepdim=True)
    noise = torch.randn(patches.shape).to(patches) * 0.01 * kept.std(dim=(-2, -1), keepdim=True)
    return patches * keep + noise * (1 - keep)


class RelLoc(Method):
    name = "relloc"

    def __init__(self, spec, backbone, feature_dim, data):
        super().__init__(spec, backbone, feature_dim, data)
        s = self.spec
        self.fc6 = nn.Sequential(nn.Linear(feature_dim, s.relloc_patch_dim), nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(nn.Linear(2 * s.relloc_patch_dim, s.relloc_pair_dim), nn.ReLU(inplace=True),
                                        nn.Linear(s.relloc_pair_dim, len(NEIGHBOURS)))
        self.drop_colours = s.colour_dropping and data.channels == 3  # grayscale views have no colour to give away

    def views(self, augment, size, mean, std):
        return [ViewAugment(augment, size, mean, std, view=0)]  # one view: its patches are the examples

    def forward(self, views, indices=None, progress=0.0):
        (x,) = views
        s = self.spec
        patches = grid_patches(x, s.grid_patch, s.grid_gap, s.grid_jitter)  # [B, 9, C, p, p]
        if self.drop_colours:
            patches = drop_colours(patches)
        b = len(x)
        f = self.fc6(self.backbone(patches.flatten(0, 1))).view(b, 9, -1)  # all 9 patches encoded once
        # every image gives all 8 (centre, neighbour) pairs; neighbour k's class is k
        pairs = torch.cat([f[:, CENTRE:CENTRE + 1].expand(-1, len(NEIGHBOURS), -1), f[:, NEIGHBOURS]], dim=2)
        logits = self.classifier(pairs).flatten(0, 1)  # [B·8, 8]
        labels = torch.arange(len(NEIGHBOURS), device=x.device).repeat(b)
        loss = F.cross_entropy(logits, labels)
        return {"loss": loss, "location_acc": (logits.argmax(1) == labels).float().mean()}

"""RotNet (Gidaris, Singh & Komodakis 2018): predict which of four rotations was applied to an image.

One augmented view per image; the batch holds all four rotations of every image (the paper finds this better than
drawing one rotation per image), and a classifier on the pooled features makes the 4-way prediction. Label k means
the image was turned by k x 90 degrees counter-clockwise (torch.rot90(x, k, dims=(2, 3)), as numpy.rot90). A square
view turned by multiples of 90 degrees needs no interpolation, so no low-level artefact gives the rotation away.
The exported encoder is the plain backbone on the upright image.
"""

import torch
import torch.nn.functional as F

from ..augment import ViewAugment
from ..models import Layer, mlp
from .base import Method

ROTATIONS = 4


def rotate_all(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, C, S, S] -> ([4B, C, S, S], labels [4B]): the batch turned by 0, 90, 180 and 270 degrees counter-clockwise,
    rotation-major (rows k·B..(k+1)·B-1 hold label k)."""
    rotated = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(ROTATIONS)])
    labels = torch.arange(ROTATIONS, device=x.device).repeat_interleave(len(x))
    return rotated, labels


class Rotation(Method):
    name = "rotation"

    def __init__(self, spec, backbone, feature_dim, data):
        super().__init__(spec, backbone, feature_dim, data)
        hidden = self.spec.rotation_head_hidden_dim
        layers = [Layer(hidden, False, "bn", True)] if hidden else []
        self.classifier = mlp(feature_dim, layers + [Layer(ROTATIONS)])

    def views(self, augment, size, mean, std):
        return [ViewAugment(augment, size, mean, std, view=0)]  # one view; its rotations are the task

    def forward(self, views, indices=None, progress=0.0):
        rotated, labels = rotate_all(views[0])
        logits = self.classifier(self.backbone(rotated))
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.detach().argmax(1) == labels).float().mean()
        return {"loss": loss, "rotation_acc": accuracy}

"""What the dense pretext tasks share (inpainting, colorization, split-brain): the encoder's last feature map before
its pooling, and a small up-convolutional decoder from that map to a prediction at a chosen resolution.

The encoders stay the plain backbones (or CMC's L/ab pair of them), so what a downstream task keeps is exactly what
export writes; only the decoders are training-time heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from ..models import SmallCNN


def feature_map(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The backbone's last spatial features [B, C, h, w] (what its global pooling averages): SmallCNN's conv stages,
    or a torchvision ResNet's stem and four stages."""
    if isinstance(backbone, SmallCNN):
        return backbone.features(x)
    if isinstance(backbone, torchvision.models.ResNet):
        x = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(x))))
        return backbone.layer4(backbone.layer3(backbone.layer2(backbone.layer1(x))))
    raise TypeError(f"dense pretext tasks need a convolutional backbone (small_cnn or a ResNet), not "
                    f"{type(backbone).__name__}")


class Decoder(nn.Module):
    """[B, C, h, w] → [B, out_channels, size, size]: (2x nearest upsampling → 3x3 conv → BN → ReLU) stages, each
    halving the width (not below `min_width`), until the map reaches `size`, then a 1x1 conv to the outputs and, when
    the last stage overshoots, a bilinear resize to exactly `size` (Context Encoders' and Zhang et al.'s up-convolution
    decoders, scaled down)."""

    def __init__(self, in_channels: int, out_channels: int, in_size: int, size: int, min_width: int = 32):
        super().__init__()
        stages, width, side = [], in_channels, max(1, in_size)
        while side < size:
            narrower = max(min_width, width // 2)
            stages.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                        nn.Conv2d(width, narrower, 3, padding=1, bias=False),
                                        nn.BatchNorm2d(narrower), nn.ReLU(inplace=True)))
            width, side = narrower, side * 2
        self.stages = nn.Sequential(*stages)
        self.out = nn.Conv2d(width, out_channels, 1)
        self.size = size

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        y = self.out(self.stages(features))
        if y.shape[-1] != self.size or y.shape[-2] != self.size:
            y = F.interpolate(y, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return y


@torch.no_grad()
def map_shape(backbone: nn.Module, channels: int, image_size: int) -> tuple[int, int]:
    """(channels, side) of feature_map(backbone, ·) for square `image_size` inputs, by a dry run in eval mode (batch
    norm statistics untouched)."""
    was_training = backbone.training
    backbone.eval()
    probe = torch.zeros(1, channels, image_size, image_size, device=next(backbone.parameters()).device)
    c, h = feature_map(backbone, probe).shape[1:3]
    backbone.train(was_training)
    return c, h

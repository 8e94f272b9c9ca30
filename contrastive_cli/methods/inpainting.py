"""Context Encoders (Pathak et al. 2016): fill in a hidden region of the image from its surroundings.

One view per image; a region (the centre square or random blocks) is set to the data mean (0 after normalisation)
before the encoder sees it. The backbone's last feature map goes through the paper's channel-wise fully-connected
bottleneck (each channel's h·w positions fully connected, then a 1x1 conv mixing the channels) and an up-conv
decoder that predicts the image; the loss is L2 on the hidden pixels only, optionally joined with an adversarial
loss from a small discriminator that judges the completed image. The exported encoder is the plain backbone on the
whole, unmasked image.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import ViewAugment
from .base import Method
from .dense import Decoder, feature_map, map_shape

DECODER_NARROWING = 4  # the bottleneck's 1x1 conv hands the decoder a quarter of the map's channels
BLOCKS = 4  # random squares per image, each at most 1/4 of the side: together at most 1/4 of the image


def central_mask(n: int, size: int) -> torch.Tensor:
    """[n, 1, size, size], 1 on the centre square of half the side (1/4 of the pixels for even sides)."""
    side, start = size // 2, (size - size // 2) // 2
    mask = torch.zeros(n, 1, size, size)
    mask[..., start:start + side, start:start + side] = 1
    return mask


def block_masks(n: int, size: int) -> torch.Tensor:
    """[n, 1, size, size], 1 on the union of BLOCKS squares per image, sides drawn in [size/6, size/4], anywhere
    inside the image; drawn from torch's global CPU generator (saved in checkpoints), all images at once."""
    low, high = max(1, size // 6), max(1, size // 4)
    u = torch.rand(n, BLOCKS, 3)
    side = low + (u[..., 0] * (high - low + 1)).long().clamp(max=high - low)
    top, left = ((u[..., 1:] * (size - side[..., None] + 1)).long()).unbind(-1)
    pixels = torch.arange(size)
    rows = (pixels >= top[..., None]) & (pixels < (top + side)[..., None])  # [n, BLOCKS, size]
    cols = (pixels >= left[..., None]) & (pixels < (left + side)[..., None])
    return (rows[..., :, None] & cols[..., None, :]).any(1, keepdim=True).float()


def hide(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The view with its hidden pixels (mask 1) at the data mean: 0 after normalisation, as the paper fills them."""
    return x * (1 - mask)


def masked_l2(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the hidden pixels (mask 1) of every channel; the visible ones do not count."""
    squared = torch.where(mask.bool(), (prediction - target).pow(2), 0.0)
    return squared.sum() / (mask.sum() * target.shape[1]).clamp_min(1)


class ChannelwiseFC(nn.Module):
    """[B, C, h, w] -> [B, out, h, w]: per channel a fully-connected layer over its h·w positions (C·(hw)² weights
    instead of a full layer's (C·hw)²), then a 1x1 conv -> BN -> ReLU that spreads information across channels."""

    def __init__(self, channels: int, side: int, out_channels: int):
        super().__init__()
        n = side * side
        bound = 1 / math.sqrt(n)  # nn.Linear's default initialisation, per channel
        self.weight = nn.Parameter(torch.empty(channels, n, n).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(channels, n).uniform_(-bound, bound))
        self.mix = nn.Sequential(nn.Conv2d(channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels),
                                 nn.ReLU(inplace=True))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        y = torch.einsum("bcp,cpq->bcq", f.flatten(2), self.weight) + self.bias
        return self.mix(y.view_as(f))


def discriminator(channels: int, width: int = 32) -> nn.Sequential:
    """A small DCGAN-style critic: three stride-2 4x4 convs with LeakyReLU 0.2, pooled, one logit. No batch norm, so
    real and completed images judged in one batch do not share statistics."""
    layers, cin = [], channels
    for cout in (width, 2 * width, 4 * width):
        layers += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1))


class Inpainting(Method):
    name = "inpainting"

    def __init__(self, spec, backbone, feature_dim, data):
        super().__init__(spec, backbone, feature_dim, data)
        size, channels = spec.data.image_size, 3  # views arrive as RGB (grayscale replicated)
        c, side = map_shape(backbone, channels, size)
        # the decoder starts at a quarter of the map's width and narrows to 16: at full width its high-resolution
        # stages cost ~6x the small CNN's own forward-backward at 28 px; narrowed, the step is about 2x faster
        width = max(1, c // DECODER_NARROWING)
        self.bottleneck = ChannelwiseFC(c, side, width)
        self.decoder = Decoder(width, channels, side, size, min_width=16)
        if self.spec.adversarial_weight > 0:
            self.discriminator = discriminator(channels)

    def views(self, augment, size, mean, std):
        return [ViewAugment(augment, size, mean, std, view=0)]

    def masks(self, x: torch.Tensor) -> torch.Tensor:
        n, size = len(x), x.shape[-1]
        mask = central_mask(n, size) if self.spec.inpaint_mask == "central" else block_masks(n, size)
        return mask.to(x.device, x.dtype)

    def inpaint(self, context: torch.Tensor) -> torch.Tensor:
        """The predicted image [B, C, S, S] from the masked view."""
        return self.decoder(self.bottleneck(feature_map(self.backbone, context)))

    def forward(self, views, indices=None, progress=0.0):
        x = views[0]
        mask = self.masks(x)
        context = hide(x, mask)
        prediction = self.inpaint(context)
        reconstruction = masked_l2(prediction, x, mask)
        w = self.spec.adversarial_weight
        if w == 0:
            return {"loss": reconstruction, "reconstruction": reconstruction.detach()}
        completed = context + prediction * mask  # the visible pixels kept, the hole filled in
        critic, fooling = self.adversarial_losses(x, completed)
        loss = (1 - w) * reconstruction + w * fooling + critic
        return {"loss": loss, "reconstruction": reconstruction.detach(), "discriminator_loss": critic.detach(),
                "adversarial_loss": fooling.detach()}

    def adversarial_losses(self, real: torch.Tensor, completed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the discriminator's loss, real vs the detached completion: no gradient to the encoder and decoder;
        the generator's loss, the completion judged real, through the discriminator with its parameters detached:
        no gradient to the discriminator). One backward then trains both sides as the paper's alternating steps."""
        logits = self.discriminator(torch.cat([real, completed.detach()])).squeeze(1)
        labels = torch.cat([torch.ones(len(real)), torch.zeros(len(real))]).to(logits)
        critic = F.binary_cross_entropy_with_logits(logits, labels)
        frozen = {k: p.detach() for k, p in self.discriminator.named_parameters()}
        judged = torch.func.functional_call(self.discriminator, frozen, (completed,)).squeeze(1)
        fooling = F.binary_cross_entropy_with_logits(judged, torch.ones_like(judged))
        return critic, fooling

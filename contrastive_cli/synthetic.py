"""The embedded 'synthetic' dataset: ten classes of shapes, 32x32 RGB, generated on the fly.

Each image is one shape at a random grey level (slightly tinted), position, scale and small rotation over
a flat background of another grey level, plus noise. Only the shape says the class: grey levels, position
and scale are independent of it, so raw pixels are a weak cue (raw-pixel weighted kNN: 68% at k=20, 40% at
k=200), while an encoder trained with colour jitter and crops learns the shapes (SimCLR, small CNN,
30 epochs: 77% at k=20, 69% at k=200, from 56% / 35% at random initialisation).

Generation is vectorised torch on the CPU (about a second for both splits) and deterministic:
each split has its own fixed seed, so the data is the same on every machine and for every run.
"""

from __future__ import annotations

import functools
import math

import torch

CLASSES = ("disk", "square", "triangle", "ring", "plus", "cross", "diamond",
           "horizontal-stripes", "vertical-stripes", "star")
SIZE = 32
SPLITS = {"train": (5000, 20240601), "test": (1000, 20240602)}  # split -> (image count, fixed seed)
SUPERSAMPLE = 2  # shapes are drawn at 2x and averaged down, so edges are anti-aliased
MAX_ROTATION = math.pi / 12  # +-15 degrees: small enough that plus/cross and the stripes stay distinct
RADIUS = (7.0, 13.0)  # pixels: from under half to most of the image
POSITION_SPREAD = 0.4  # fraction of the free room the centre may move into

# Per-channel statistics of the train split, measured once with `channel_stats(*generate("train"))`.
MEAN = (0.5014, 0.5003, 0.5011)
STD = (0.3059, 0.3051, 0.3054)
COLOUR_MEAN = (0.5018, 0.5003, 0.5007)  # synthetic-colour (channel_stats of its train split)
COLOUR_STD = (0.3023, 0.3022, 0.3003)


def _stripes(t: torch.Tensor) -> torch.Tensor:
    return torch.cos(t * (2 * math.pi / 0.6)) > 0  # three stripes across a unit-radius square


def _star(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    angle = torch.atan2(u, -v)  # 0 points up, so the star is symmetric under a horizontal flip
    phase = torch.remainder(angle * (5 / (2 * math.pi)), 1.0)
    between_points = 2 * torch.minimum(phase, 1 - phase)  # 0 at a point, 1 half-way to the next
    return u.hypot(v) <= 1.0 - 0.55 * between_points


def _plus(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return ((u.abs() <= 0.28) & (v.abs() <= 0.95)) | ((v.abs() <= 0.28) & (u.abs() <= 0.95))


# Shape masks in shape coordinates (u right, v down, radius ~1), in the order of CLASSES.
SHAPES = (
    lambda u, v: u.hypot(v) <= 0.9,
    lambda u, v: torch.maximum(u.abs(), v.abs()) <= 0.8,
    lambda u, v: (v <= 0.75) & (u.abs() <= (v + 0.9) * (0.95 / 1.65)),  # pointing up
    lambda u, v: (u.hypot(v) <= 1.0) & (u.hypot(v) >= 0.6),
    _plus,
    lambda u, v: _plus((u + v) / math.sqrt(2), (u - v) / math.sqrt(2)),
    lambda u, v: u.abs() + v.abs() <= 1.05,
    lambda u, v: (torch.maximum(u.abs(), v.abs()) <= 0.9) & _stripes(v),
    lambda u, v: (torch.maximum(u.abs(), v.abs()) <= 0.9) & _stripes(u),
    _star,
)


TINT = 0.08  # per-channel colour offset: images are coloured, but colour says little about an instance
# `synthetic-colour`: the same images with a chroma of this size and a random hue added to each shape, orthogonal
# to the luma weights, so the grey levels (Lab's L) are unchanged and the colour channels (ab) show the silhouette.
# Hue says nothing of the class. For methods whose views are colour channels (CMC): on `synthetic` the shapes' ab
# contrast is about the pixel noise (its spatial std exceeds twice the noise in ~2% of images, L in 98%).
CHROMA = 0.25
LUMA = (0.2989, 0.587, 0.114)
MIN_CONTRAST = 0.35  # grey-level gap between shape and background, so every shape is visible


def _distinct_colours(count: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Background and shape colours [N, 3]: random grey levels at least MIN_CONTRAST apart, slightly tinted.

    Colours that identify an image (random RGB, or a palette) became the feature self-supervised runs learned
    instead of the shape; brightness and contrast jitter do scramble grey levels, so shape is what is left.
    """
    background = torch.rand(count, generator=gen)
    gap = MIN_CONTRAST + torch.rand(count, generator=gen) * (1 - MIN_CONTRAST)
    up = torch.rand(count, generator=gen) < 0.5
    shape = torch.where(up, background + gap, background - gap)
    shape = torch.where((shape < 0) | (shape > 1), torch.where(up, background - gap, background + gap), shape)
    shape = shape.clamp(0, 1)
    tint = (torch.rand(2, count, 3, generator=gen) - 0.5) * 2 * TINT
    return (background[:, None] + tint[0]).clamp(0, 1), (shape[:, None] + tint[1]).clamp(0, 1)


def _hue_offsets(count: int, seed: int) -> torch.Tensor:
    """[N, 3] colour offsets of size CHROMA and uniform random hue in the plane orthogonal to LUMA; drawn from their
    own stream so that every other draw (and so `synthetic` itself) is unchanged."""
    luma = torch.tensor(LUMA)
    u = torch.tensor((1.0, -1.0, 0.0))
    u = u - (u @ luma) / (luma @ luma) * luma
    u = u / u.norm()
    v = torch.linalg.cross(luma, u)
    v = v / v.norm()
    hue = torch.rand(count, generator=torch.Generator().manual_seed(seed + 1)) * 2 * math.pi
    return CHROMA * (hue.cos()[:, None] * u + hue.sin()[:, None] * v)


def _alpha(labels: torch.Tensor, centre: torch.Tensor, radius: torch.Tensor, angle: torch.Tensor
           ) -> torch.Tensor:
    """Anti-aliased shape coverage [N, 1, S, S] in [0, 1]."""
    fine = SIZE * SUPERSAMPLE
    pixel = (torch.arange(fine, dtype=torch.float32) + 0.5) / SUPERSAMPLE  # pixel-unit centres
    alpha = torch.zeros(len(labels), 1, SIZE, SIZE)
    for cls, mask_of in enumerate(SHAPES):  # one batched pass per class, not per image
        pick = (labels == cls).nonzero().squeeze(1)
        if not len(pick):
            continue
        x = (pixel.view(1, 1, fine) - centre[pick, 0].view(-1, 1, 1)) / radius[pick].view(-1, 1, 1)
        y = (pixel.view(1, fine, 1) - centre[pick, 1].view(-1, 1, 1)) / radius[pick].view(-1, 1, 1)
        cos, sin = angle[pick].cos().view(-1, 1, 1), angle[pick].sin().view(-1, 1, 1)
        mask = mask_of(cos * x + sin * y, cos * y - sin * x).float().unsqueeze(1)
        alpha[pick] = torch.nn.functional.avg_pool2d(mask, SUPERSAMPLE)
    return alpha


@functools.lru_cache(maxsize=None)
def generate(split: str, colour: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images [N, 3, 32, 32], int64 labels [N]) of 'train' or 'test'; cached per process. `colour`: the
    `synthetic-colour` variant (coloured shapes, see CHROMA)."""
    count, seed = SPLITS[split]
    gen = torch.Generator().manual_seed(seed)
    labels = (torch.arange(count) % len(CLASSES))[torch.randperm(count, generator=gen)]  # balanced
    # Draw every parameter for every image up front so the random stream does not depend on classes.
    radius = RADIUS[0] + torch.rand(count, generator=gen) * (RADIUS[1] - RADIUS[0])
    room = (SIZE / 2 - 0.7 * radius).unsqueeze(1) * POSITION_SPREAD  # keeps most of the shape inside
    centre = SIZE / 2 + (torch.rand(count, 2, generator=gen) * 2 - 1) * room
    angle = (torch.rand(count, generator=gen) * 2 - 1) * MAX_ROTATION
    background_colour, shape_colour = _distinct_colours(count, gen)
    if colour:
        shape_colour = (shape_colour + _hue_offsets(count, seed)).clamp(0, 1)
    noise = torch.randn(count, 3, SIZE, SIZE, generator=gen)
    alpha = _alpha(labels, centre, radius, angle)
    # Flat backgrounds: a per-image gradient direction was an instance cue that survived every augmentation.
    images = background_colour.view(count, 3, 1, 1).expand(count, 3, SIZE, SIZE).clone()
    images.sub_(shape_colour.view(count, 3, 1, 1)).mul_(1 - alpha).add_(shape_colour.view(count, 3, 1, 1))
    images.add_(noise, alpha=0.03).clamp_(0, 1).mul_(255).round_()  # in place: 15M values, keep it quick
    return images.to(torch.uint8), labels


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images [N, C, H, W] in [0, 1] units."""
    values = images.transpose(0, 1).reshape(images.shape[1], -1).double() / 255
    return tuple(round(float(m), 4) for m in values.mean(1)), tuple(round(float(s), 4) for s in values.std(1))

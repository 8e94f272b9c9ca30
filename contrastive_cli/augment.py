"""Batched view augmentation: SimCLR/BYOL-style views for a whole batch at once, on the images' device.

Every random parameter of a batch is drawn in one `torch.rand` call from the caller's generator (so a
seed reproduces a batch exactly, and changing a probability never shifts the other draws), and each
operation runs once over the samples selected for it: no per-image Python work, no PIL.
Colour operations follow torchvision's float semantics (ColorJitter, RandomGrayscale, Solarize).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from .spec import AugmentSpec

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601 luma, the weights torchvision uses
SOLARIZE_THRESHOLD = 0.5  # BYOL's threshold on [0, 1] images
CROP_TRIES = 10  # torchvision's RandomResizedCrop tries this many boxes before its centre-crop fallback
SMALL_EVAL_IMAGE = 64  # center_view resizes images up to this side straight to the view size
EVAL_CROP_FRACTION = 0.875  # Resize 256 -> CenterCrop 224
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)

# Columns of the one uniform draw per sample in ViewAugment.sample, in a fixed layout.
_SCALE = slice(0, CROP_TRIES)
_LOG_RATIO = slice(CROP_TRIES, 2 * CROP_TRIES)
_POSITION = slice(2 * CROP_TRIES, 2 * CROP_TRIES + 2)
_FLIP, _JITTER, _GRAY, _BLUR, _SIGMA, _SOLARIZE = range(2 * CROP_TRIES + 2, 2 * CROP_TRIES + 8)
_FACTORS = slice(2 * CROP_TRIES + 8, 2 * CROP_TRIES + 12)
_ORDER = slice(2 * CROP_TRIES + 12, 2 * CROP_TRIES + 16)
_COLUMNS = 2 * CROP_TRIES + 16


# ---- colour operations on float images in [0, 1], shape [N, C, H, W]; factors have shape [N] ----

def _per_sample(f: torch.Tensor) -> torch.Tensor:
    return f.view(-1, 1, 1, 1)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma as one channel [N, 1, H, W]; a 1-channel image is already gray."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor * x + (1 - factor) * other, clamped (torchvision's _blend), as one lerp pass."""
    return torch.lerp(other.expand_as(x), x, _per_sample(factor)).clamp_(0, 1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * _per_sample(factor)).clamp_(0, 1)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, grayscale(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, grayscale(x), factor)


_HUE_OFFSETS = (5.0, 3.0, 1.0)  # where R, G, B sit on the hue hexagon, in sixths of a turn


def adjust_hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Shift HSV hue by factor (in turns), as RGB -> HSV -> RGB, but without materialising HSV.

    A hue shift keeps V = max and S = chroma / max, hence max, min and chroma, so only the hue is
    computed (in sixths, 0..6) and the closed-form HSV -> RGB gives each channel as
    max - chroma * clamp(min(k, 4 - k), 0, 1), k = (offset + hue) mod 6.
    """
    r, g, b = x.unbind(1)
    low, high = torch.aminmax(x, dim=1)
    chroma = high - low
    # Gray pixels (chroma 0) get 0 / eps = hue 0 and come back unchanged (chroma * anything = 0).
    hue = torch.where(high == r, g - b, torch.where(high == g, b - r + 2 * chroma, r - g + 4 * chroma))
    hue = hue.div_(chroma.clamp_min(1e-12)).add_(6 * factor.view(-1, 1, 1)).remainder_(6).unsqueeze(1)
    k = hue + torch.tensor(_HUE_OFFSETS, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = torch.where(k >= 6, k - 6, k)  # k < 12, so one wrap is the mod 6 (cheaper than a second remainder)
    profile = torch.minimum(k, 4 - k).clamp_(0, 1)
    return profile.mul_(chroma.unsqueeze(1)).neg_().add_(high.unsqueeze(1)).clamp_(0, 1)


def solarize(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= SOLARIZE_THRESHOLD, 1 - x, x)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per sample and reflect padding (as torchvision)."""
    n, c, h, w = x.shape
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (taps / sigma[:, None]) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # one kernel per (sample, channel)
    y = x.reshape(1, n * c, h, w)  # channels as conv groups, so each sample gets its own kernel
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), kernel[:, None, None, :], groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), kernel[:, None, :, None], groups=n * c)
    return y.view(n, c, h, w)


JITTER_OPS = {BRIGHTNESS: adjust_brightness, CONTRAST: adjust_contrast,
              SATURATION: adjust_saturation, HUE: adjust_hue}
COLOUR_ONLY = (SATURATION, HUE)  # no-ops on 1-channel images


# ---- geometry and conversion ----

def _to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [0, 1] on the images' device; float input is taken as already in [0, 1]."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32).mul_(1 / 255)
    return images.to(torch.float32)


def crop_resize_flip(x: torch.Tensor, box: torch.Tensor, flip: torch.Tensor, size: int) -> torch.Tensor:
    """Resample relative boxes (x0, y0, w, h) of float images to size x size, mirroring where `flip`.

    Sources no larger than the view are only ever upsampled: one bilinear grid_sample does crop, resize
    and flip (fastest on CPU). Larger sources go through roi_align, whose adaptive sampling averages
    ceil(scale)^2 points per output pixel, so downscaled crops are antialiased instead of aliased.
    """
    n, c, h, w = x.shape
    x0, y0, bw, bh = box.unbind(1)
    if max(h, w) <= size:
        theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
        theta[:, 0, 0] = torch.where(flip, -bw, bw)  # mirroring = negative x scale about the box centre
        theta[:, 0, 2] = 2 * x0 + bw - 1
        theta[:, 1, 1] = bh
        theta[:, 1, 2] = 2 * y0 + bh - 1
        grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    rois = torch.stack([torch.arange(n, device=x.device, dtype=x.dtype),
                        x0 * w, y0 * h, (x0 + bw) * w, (y0 + bh) * h], 1)
    out = roi_align(x, rois, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    return torch.where(_per_sample(flip), out.flip(-1), out)


def _normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    """[N, C, H, W] in [0, 1] -> (x - mean) / std as [N, 3, H, W]; a gray channel broadcasts to all three."""
    std = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    mean = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return torch.addcmul(-mean / std, x, 1 / std)  # one pass over the batch


def _apply_to_flagged(x: torch.Tensor, flags: torch.Tensor, op, *per_sample: torch.Tensor) -> None:
    """In place, x[i] = op(x[i], per_sample[i]...) for the flagged samples only: op runs once, on the subset."""
    chosen = flags.nonzero().squeeze(1)
    if chosen.numel():
        x.index_copy_(0, chosen, op(x[chosen], *(p[chosen] for p in per_sample)))


class ViewAugment:
    """One view's augmentation pipeline for a batch: RandomResizedCrop (+flip) → colour jitter@p (optionally
    random order per sample) → grayscale@p → Gaussian blur@p → solarize@p → normalise. Output float32
    [B, 3, size, size] (1-channel input is processed as gray and repeated to 3 channels at the end;
    saturation/hue/grayscale are then no-ops)."""

    def __init__(self, spec: AugmentSpec, size: int, mean: tuple[float, float, float],
                 std: tuple[float, float, float], view: int = 0):
        unresolved = [name for name, value in spec if value is None and not name.startswith("local_")]
        if unresolved:
            raise ValueError(f"AugmentSpec must be resolved before use; unset: {', '.join(unresolved)}")
        self.spec, self.size, self.mean, self.std, self.view = spec, size, tuple(mean), tuple(std), view
        self.blur_p = spec.blur_p[view] if size >= spec.min_blur_size else 0.0
        self.solarize_p = spec.solarize_p[view]
        scale = size / 224  # blur_sigma is in pixels of a 224 px image
        self.sigma_range = (spec.blur_sigma[0] * scale, spec.blur_sigma[1] * scale)
        self.blur_radius = max(1, int(0.1 * size) // 2)  # kernel side 2r+1 ~ 10% of the image (SimCLR, BYOL)
        # Ops with strength 0 are identities and are skipped rather than run with factor 1.
        self.jitter_ops = [op for op in JITTER_OPS if spec.jitter[op] > 0]

    def __repr__(self) -> str:
        return f"ViewAugment(size={self.size}, view={self.view}, spec={self.spec!r})"

    # -- parameters --

    def sample(self, n: int, generator: torch.Generator, device, aspect: float = 1.0,
               rows: tuple[int, int] = (0, 0)) -> dict[str, torch.Tensor]:
        """All per-sample random parameters of a batch, vectorised (crop boxes x0,y0,w,h in relative coords,
        flip flags, jitter factors, jitter order, gray/blur/solarize flags, blur sigma).

        `aspect` is the source images' width / height (boxes are relative, so it is needed to keep the crop's
        aspect ratio in crop_ratio for non-square sources); __call__ passes it from the images. `rows` =
        (offset, total): the batch is rows offset..offset+n of a global batch of `total` (one process's share
        under torchrun); the draws are the global batch's, so an image gets the same view at any world size.
        """
        s = self.spec
        offset, total = rows
        u = torch.rand(max(n + offset, total), _COLUMNS, generator=generator, device=device)[offset:offset + n]
        b, c, sat, hue = s.jitter
        low = torch.tensor([max(0.0, 1 - b), max(0.0, 1 - c), max(0.0, 1 - sat), -hue], device=device)
        high = torch.tensor([1 + b, 1 + c, 1 + sat, hue], device=device)
        order = (u[:, _ORDER].argsort(1) if s.jitter_random_order
                 else torch.arange(4, device=device).expand(n, 4).contiguous())
        return {
            "box": self._crop_boxes(u, aspect),
            "flip": u[:, _FLIP] < s.flip_p,
            "jitter": u[:, _JITTER] < s.jitter_p,
            "factors": low + (high - low) * u[:, _FACTORS],  # columns: brightness, contrast, saturation, hue
            "order": order,  # order[i, k] = the jitter op sample i applies k-th
            "gray": u[:, _GRAY] < s.gray_p,
            "blur": u[:, _BLUR] < self.blur_p,
            "sigma": self.sigma_range[0] + (self.sigma_range[1] - self.sigma_range[0]) * u[:, _SIGMA],
            "solarize": u[:, _SOLARIZE] < self.solarize_p,
        }

    def _crop_boxes(self, u: torch.Tensor, aspect: float) -> torch.Tensor:
        """RandomResizedCrop boxes: the first of CROP_TRIES candidates that fits, else torchvision's centre fallback."""
        (lo, hi), (rlo, rhi) = self.spec.crop_scale, self.spec.crop_ratio
        area = lo + (hi - lo) * u[:, _SCALE]
        ratio = torch.exp(math.log(rlo) + (math.log(rhi) - math.log(rlo)) * u[:, _LOG_RATIO])  # pixel w/h
        w, h = torch.sqrt(area * ratio / aspect), torch.sqrt(area * aspect / ratio)  # relative to image sides
        fits = (w <= 1) & (h <= 1)
        first = fits.int().argmax(1, keepdim=True)  # index of the first fitting candidate (0 if none fits)
        w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
        # Fallback: the whole image, cut down to the nearest allowed aspect ratio, centred.
        fallback_w, fallback_h = min(1.0, rhi / aspect), min(1.0, aspect / rlo)
        found = fits.any(1)
        w = torch.where(found, w, torch.full_like(w, fallback_w))
        h = torch.where(found, h, torch.full_like(h, fallback_h))
        x0 = torch.where(found, (1 - w) * u[:, _POSITION.start], (1 - w) / 2)
        y0 = torch.where(found, (1 - h) * u[:, _POSITION.start + 1], (1 - h) / 2)
        return torch.stack([x0, y0, w, h], 1)

    # -- application --

    def apply(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        x = crop_resize_flip(_to_unit_float(images), params["box"], params["flip"], self.size)
        self._jitter(x, params)
        if x.shape[1] == 3:
            _apply_to_flagged(x, params["gray"], lambda images: grayscale(images).expand_as(images))
        _apply_to_flagged(x, params["blur"], lambda images, sigma: gaussian_blur(images, sigma, self.blur_radius),
                          params["sigma"])
        _apply_to_flagged(x, params["solarize"], solarize)
        return _normalise(x, self.mean, self.std)

    def _jitter(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> None:
        """In place. At each of the 4 positions, run each op on the jittered samples that have it there:
        every selected sample gets every op once, in its own order, with one call per (position, op)."""
        ops = [op for op in self.jitter_ops if x.shape[1] == 3 or op not in COLOUR_ONLY]
        jittered, order, factors = params["jitter"], params["order"], params["factors"]
        for position in range(4) if ops else ():
            for op in ops:
                _apply_to_flagged(x, jittered & (order[:, position] == op), JITTER_OPS[op], factors[:, op])

    def __call__(self, images: torch.Tensor, generator: torch.Generator, rows: tuple[int, int] = (0, 0)) -> torch.Tensor:
        aspect = images.shape[-1] / images.shape[-2]
        return self.apply(images, self.sample(len(images), generator, images.device, aspect, rows))


def center_view(images: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    """Evaluation view: uint8 [B,C,H,W] → float normalised [B,3,size,size]: if H == size, just normalise; if
    the image is small (≤64 px) resize to size; otherwise resize the shorter side to size/0.875 and
    centre-crop size (the Resize 256 → CenterCrop 224 protocol)."""
    x = _to_unit_float(images)
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return _normalise(x, mean, std)
    if max(h, w) <= SMALL_EVAL_IMAGE:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return _normalise(x.clamp_(0, 1), mean, std)
    short = int(size / EVAL_CROP_FRACTION)
    new_h, new_w = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)  # as torchvision Resize
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    top, left = int(round((new_h - size) / 2)), int(round((new_w - size) / 2))
    return _normalise(x[..., top:top + size, left:left + size].clamp_(0, 1), mean, std)


def crop_flip_view(crop_scale, size, mean, std) -> ViewAugment:
    """Linear-probe training view: RandomResizedCrop(crop_scale) + flip only, no colour."""
    spec = AugmentSpec(crop_scale=tuple(crop_scale), jitter_p=0.0, jitter=(0.0, 0.0, 0.0, 0.0),
                       jitter_random_order=False, gray_p=0.0, blur_p=(0.0, 0.0), solarize_p=(0.0, 0.0))
    return ViewAugment(spec, size, mean, std)

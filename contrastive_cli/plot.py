"""A dependency-free PNG of covariance spectra (Pillow ships with torchvision): one panel per representation,
log10 eigenvalue against rank, with the healthy isotropic value 1/d as a dashed line."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

W, H, MARGIN = 460, 340, (62, 20, 34, 46)  # panel size; left, right, top, bottom margins
FLOOR = -12.0  # log10 of eigenvalues at or below 1e-12 (numerically zero)
COLOURS = {"backbone": (31, 119, 180), "projector": (214, 39, 40)}


def spectrum_plot(spectra: dict[str, list[float]], path: Path, title: str = "") -> None:
    image = Image.new("RGB", (W * len(spectra), H + 24), "white")
    draw = ImageDraw.Draw(image)
    try:  # Pillow's bundled scalable font (Pillow >= 10.1); the older bitmap font otherwise
        draw.font = ImageFont.load_default(size=12)
    except TypeError:
        pass
    draw.text((8, 4), title, fill="black")
    for i, (name, values) in enumerate(spectra.items()):
        _panel(draw, i * W, 24, name, values)
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG")
    tmp.replace(path)


def _panel(draw: ImageDraw.ImageDraw, x0: int, y0: int, name: str, values: list[float]) -> None:
    left, right, top, bottom = MARGIN
    d = len(values)
    logs = [max(FLOOR, math.log10(v)) if v > 0 else FLOOR for v in values]
    healthy = math.log10(1 / d)
    lo, hi = math.floor(min(logs + [healthy]) - 0.5), math.ceil(max(logs + [healthy]) + 0.5)
    px = lambda k: x0 + left + (W - left - right) * (k / max(1, d - 1))  # noqa: E731
    py = lambda v: y0 + top + (H - top - bottom) * (hi - v) / (hi - lo)  # noqa: E731
    draw.rectangle([px(0), py(hi), px(d - 1), py(lo)], outline="black")
    step = max(1, (hi - lo) // 6)
    for v in range(lo, hi + 1, step):
        draw.line([px(0) - 4, py(v), px(0), py(v)], fill="black")
        draw.text((x0 + 8, py(v) - 6), f"1e{v}", fill="black")
    for k in (0, d // 2, d - 1):
        draw.text((px(k) - 8, py(lo) + 6), str(k + 1), fill="black")
    for a in range(0, W - left - right, 12):  # dashed healthy reference
        x = x0 + left + a
        draw.line([x, py(healthy), min(x + 6, px(d - 1)), py(healthy)], fill=(90, 160, 90), width=2)
    colour = COLOURS.get(name, (0, 0, 0))
    draw.line([(px(k), py(v)) for k, v in enumerate(logs)] if d > 1 else [(px(0), py(logs[0]))] * 2, fill=colour, width=2)
    draw.text((px(0) + 8, y0 + top - 16), f"{name} ({d}-d): eigenvalues of cov(z/|z|)", fill=colour)
    draw.text((px(d - 1) - 130, py(healthy) - 16), f"healthy 1/d = {1 / d:.1e}", fill=(60, 130, 60))
    draw.text((px(0) + (W - left - right) // 2 - 12, py(lo) + 22), "rank", fill="black")

"""`export --embeddings --map tsne|umap`: the embeddings drawn in 2-D, one colour per label, as a PNG.

The features are L2-normalised first, so distances on the map follow the cosine similarity that the kNN evaluation
and `contrastive neighbours` rank by. Both projections are seeded (--seed): t-SNE with PCA initialisation, UMAP with
a random_state, which also makes it run on one thread (umap-learn's rule for reproducible results).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .errors import UserError
from .extras import require

NAMES = {"tsne": "t-SNE", "umap": "UMAP"}
MODULES = {"tsne": "sklearn.manifold", "umap": "umap"}
MIN_POINTS = 5  # fewer cannot be laid out (t-SNE's perplexity and UMAP's neighbours need a few each)
MAX_LEGEND = 20  # more classes get a colour bar of class indices instead of a legend of names


def require_map(method: str) -> None:
    """Import what --map needs, before any work: a missing package names the extra that brings it."""
    feature = f"--map {method}"
    require(MODULES[method], "map", feature, "leave --map out to write only the embeddings")
    require("matplotlib.figure", "map", feature, "leave --map out to write only the embeddings")


def project(method: str, features: torch.Tensor, seed: int) -> np.ndarray:
    """[N, 2] coordinates of the L2-normalised features."""
    x = F.normalize(features.float(), dim=1).numpy()
    n = len(x)
    with warnings.catch_warnings():  # umap: "n_jobs value 1 overridden to 1 by setting random_state" and the like
        warnings.simplefilter("ignore", category=UserWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        if method == "tsne":
            TSNE = require("sklearn.manifold", "map", "--map tsne").TSNE
            return TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3), init="pca", random_state=seed).fit_transform(x)
        umap = require("umap", "map", "--map umap")
        return umap.UMAP(n_components=2, n_neighbors=min(15, n - 1), random_state=seed,
                         init="spectral" if n > 20 else "random").fit_transform(x)


def draw_map(method: str, features: torch.Tensor, labels: Optional[torch.Tensor], classes: Optional[list[str]],
             path: Path, title: str, seed: int, write: Callable[[Path, Callable[[str], object]], None]) -> None:
    """Project, plot and write the map with `write(path, writer)` (export's atomic write)."""
    if len(features) < MIN_POINTS:
        raise UserError(f"--map needs at least {MIN_POINTS} embeddings to lay out, and there are {len(features)} "
                        "(the embeddings file was written)", "embed more images, or leave --map out")
    points = project(method, features, seed)
    matplotlib = require("matplotlib", "map", f"--map {method}")
    Figure = require("matplotlib.figure", "map", f"--map {method}").Figure
    fig = Figure(figsize=(8.5, 6.5), dpi=100, layout="constrained")
    ax = fig.subplots()
    size = float(np.clip(4000 / len(points), 2, 40))  # marker area: large for a few points, small for thousands
    order = np.random.default_rng(seed).permutation(len(points))  # no class drawn systematically on top
    x, y = points[order, 0], points[order, 1]
    if labels is None:
        ax.scatter(x, y, s=size, color="tab:blue", alpha=0.8, linewidths=0)
    else:
        label = labels.numpy()[order]
        present = sorted(set(label.tolist()))
        if len(present) <= MAX_LEGEND:
            colours = matplotlib.colormaps["tab10" if len(present) <= 10 else "tab20"]
            slot = {c: i for i, c in enumerate(present)}
            ax.scatter(x, y, s=size, c=[colours(slot[c]) for c in label.tolist()], alpha=0.85, linewidths=0)
            for c in present:  # legend proxies: one readable marker per class, whatever the point size
                name = classes[c] if classes and 0 <= c < len(classes) else str(c)
                ax.scatter([], [], s=40, color=colours(slot[c]), label=name)
            ax.legend(title="class", loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        else:
            drawn = ax.scatter(x, y, s=size, c=label, cmap="turbo", alpha=0.85, linewidths=0)
            fig.colorbar(drawn, ax=ax, label="class index" + (" (names in the embeddings' metadata)" if classes else ""))
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f"{NAMES[method]} 1")
    ax.set_ylabel(f"{NAMES[method]} 2")
    write(path, lambda tmp: fig.savefig(tmp, format="png"))

"""Relative location's spec and recipe (Doersch, Gupta & Efros 2015, "Unsupervised Visual Representation Learning by
Context Prediction"); the module is relloc.py."""

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from .fields import GridGap, GridJitter, GridPatch, MethodSpec, grid_problems, grid_recipe


def relloc_grid(image_size: int) -> tuple[int, int, int]:
    """(patch, gap, jitter) in px: the paper's 96 px patches, 48 px gaps and up to 7 px jitter, in proportion to the
    view side S: 4 patches' worth (3 patches + 2 half-patch gaps) + 2 jitters span S (28 px: 6, 3, 1)."""
    patch = int(image_size / (4 + 2 * 7 / 96))
    return patch, patch // 2, max(1, round(patch * 7 / 96))


class RelLocSpec(MethodSpec):
    paper, year = "Doersch et al. 2015 (relative location)", 2015.4
    name: Literal["relloc"] = "relloc"
    pretext: ClassVar[bool] = True
    vit_backbone: ClassVar[bool] = False  # the backbone encodes single small patches, as the paper's AlexNet towers
    grid_patch: GridPatch = None
    grid_gap: GridGap = None
    grid_jitter: GridJitter = None
    colour_dropping: Annotated[bool, Field(description=(
        "The paper's colour dropping: in each patch 2 of the 3 channels are replaced by Gaussian noise (1/100 of the "
        "kept channel's std), so chromatic aberration cannot give away where a patch lay in the lens. Only on "
        "colour data: grayscale views (Fashion-MNIST) carry no colour fringes and are left alone."))] = True
    relloc_patch_dim: Annotated[int, Field(ge=1, description=(
        "Width of the per-patch fc6 layer (Linear + ReLU on the pooled backbone features; the paper: 4096)."))] = 256
    relloc_pair_dim: Annotated[int, Field(ge=1, description=(
        "Width of the hidden layer on the concatenated (centre, neighbour) fc6 pair before the 8-way classifier "
        "(the paper: fc7 and fc8, 4096 each)."))] = 512

    @staticmethod
    def recipe(small: bool, vit: bool = False) -> dict:
        # Official cdoersch/deepcontext train.py: plain SGD, lr 1e-5 fixed on the loss summed over the batch, no
        # weight decay, for weeks on ImageNet. Ours, for runs of a few epochs: SGD momentum 0.9, lr 0.1 with a
        # cosine, wd 5e-4, no warm-up (a small-image adaptation).
        optim = {"optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4, "warmup_epochs": 0, "schedule": "cosine",
                 "exclude_bias_norm_wd": False}
        # The paper augments nothing beyond the grid's gaps, jitter and colour dropping (train.py also blurs a third
        # of the patches by down- and up-sampling). Ours: a mild random resized crop (60-100% of the area) for
        # variety on small datasets and the default flips; no colour jitter.
        augment = {"crop_scale": (0.6, 1.0), "jitter_p": 0.0, "jitter": (0.0, 0.0, 0.0, 0.0),
                   "jitter_random_order": False, "gray_p": 0.0, "blur_p": (0.0, 0.0), "solarize_p": (0.0, 0.0)}
        return {"optim": optim, "augment": augment}

    @staticmethod
    def sized_recipe(image_size: int) -> dict:
        return grid_recipe(relloc_grid(image_size))

    def check(self, run, data):
        return grid_problems(self, run.data.image_size, relloc_grid(run.data.image_size))

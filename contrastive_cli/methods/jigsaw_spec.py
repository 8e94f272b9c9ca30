"""Jigsaw's spec and recipe (Noroozi & Favaro 2016, "Unsupervised Learning of Visual Representations by Solving
Jigsaw Puzzles"); the module is jigsaw.py."""

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from .fields import GridGap, GridJitter, GridPatch, MethodSpec, grid_problems, grid_recipe


def jigsaw_grid(image_size: int) -> tuple[int, int, int]:
    """(patch, gap, jitter) in px: the paper's 225 px crop of 75 px cells, each holding a 64 px tile at a random
    place, in proportion to the view side S: cells of S // 3, tiles 64/75 of a cell (28 px: 7, 2, 1)."""
    cell = image_size // 3
    patch = cell * 64 // 75
    return patch, cell - patch, (cell - patch) // 2


class JigsawSpec(MethodSpec):
    paper, year = "Noroozi & Favaro 2016 (jigsaw)", 2016.25
    name: Literal["jigsaw"] = "jigsaw"
    pretext: ClassVar[bool] = True
    vit_backbone: ClassVar[bool] = False  # the backbone encodes single tiles, as the paper's context-free network
    grid_patch: GridPatch = None
    grid_gap: GridGap = None
    grid_jitter: GridJitter = None
    permutations: Annotated[int, Field(ge=2, le=1000, description=(
        "Size of the permutation set: the tile orders the network tells apart, chosen once (fixed seed) from the 9! "
        "by greedy maximal Hamming distance (the official code ships a set of 100; the paper's ablation goes up to "
        "1000; choosing 1000 takes about 10 s)."))] = 100
    jigsaw_tile_dim: Annotated[int, Field(ge=1, description=(
        "Width of the per-tile fc6 layer (Linear + ReLU on the pooled backbone features; the paper: 512, its code "
        "1024)."))] = 256
    jigsaw_hidden_dim: Annotated[int, Field(ge=1, description=(
        "Width of fc7 on the 9 concatenated fc6 tile features before the permutation classifier (the paper: "
        "4096)."))] = 1024

    @staticmethod
    def recipe(small: bool, vit: bool = False) -> dict:
        # Official solver_cfn_jps.prototxt: SGD momentum 0.9, lr 0.01, x0.1 every 100k of 350k iterations, wd 5e-4, on
        # a BN-free AlexNet. Ours, for a BN backbone and runs of a few epochs: lr 0.1 with a cosine, no warm-up.
        optim = {"optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4, "warmup_epochs": 0, "schedule": "cosine",
                 "exclude_bias_norm_wd": False}
        # The PyTorch reimplementation (bbrattoli/JigsawPuzzlePytorch, Dataset/JigsawImageLoader.py): 30% of the
        # images to grayscale (a no-op on grayscale data) and per-tile normalisation (jigsaw.py); its per-channel
        # colour jitter of the tiles is left out. The paper crops 225 px from the 256 px image; ours: a mild
        # random resized crop (60-100% of the area).
        augment = {"crop_scale": (0.6, 1.0), "jitter_p": 0.0, "jitter": (0.0, 0.0, 0.0, 0.0),
                   "jitter_random_order": False, "gray_p": 0.3, "blur_p": (0.0, 0.0), "solarize_p": (0.0, 0.0)}
        return {"optim": optim, "augment": augment}

    @staticmethod
    def sized_recipe(image_size: int) -> dict:
        return grid_recipe(jigsaw_grid(image_size))

    def check(self, run, data):
        return grid_problems(self, run.data.image_size, jigsaw_grid(run.data.image_size))

"""CPC v2's spec and recipe (Hénaff et al. 2020, no official code); the module is cpcv2.py."""

from typing import Annotated, ClassVar, Literal, Optional

from pydantic import Field

from .fields import MethodSpec

PatchNorm = Literal["ln", "bn"]
Directions = Literal["down", "vertical", "all"]
SMALL_PATCH, SMALL_STRIDE = 8, 4  # 28 px -> 6x6 grid, 32 px -> 7x7 (the paper's 64/32 on 256 px, scaled by 1/8)


def patch_grid(image_size: int, patch_size: int, stride: int) -> int:
    """Patches per side of the grid cut from a square view (the last incomplete column/row is left out)."""
    return (image_size - patch_size) // stride + 1 if image_size >= patch_size else 0


class CPCv2Spec(MethodSpec):
    paper, year = "Hénaff et al. 2020 (CPC v2)", 2019.4
    name: Literal["cpcv2"] = "cpcv2"
    vit_backbone: ClassVar[bool] = False  # the encoder runs a conv patch encoder over its grid of patches
    patch_size: Annotated[Optional[Annotated[int, Field(ge=4)]], Field(description=(
        "Side of the square patches the view is cut into, in pixels (recipe: 64 on large views, 8 below 64 px)."),
        json_schema_extra={"flag": "--cpc-patch-size"})] = None
    patch_stride: Annotated[Optional[Annotated[int, Field(ge=1)]], Field(description=(
        "Step between neighbouring patches in pixels; half the patch side overlaps them (recipe: 32, 4 below 64 px)."))] = None
    patch_norm: Annotated[PatchNorm, Field(description=(
        "Normalisation inside the patch encoder: ln (the paper: a per-patch layer norm, GroupNorm(1, C), so batch "
        "statistics cannot link patches) or bn (the encoder's batch norms, the paper's ablation)."))] = "ln"
    prediction_steps: Annotated[Optional[Annotated[int, Field(ge=1)]], Field(description=(
        "K: each context predicts the patches 1..K rows ahead (at most grid side - 1; recipe: 5, 3 below 64 px)."))] = None
    directions: Annotated[Directions, Field(description=(
        "Prediction directions, each with its own context network: down (top to bottom, CPC v1), vertical (+ bottom "
        "to top) or all (+ left to right and right to left, as in CPC v2)."))] = "all"
    context_dim: Annotated[int, Field(ge=1, description=(
        "Width of the masked-convolution context network (small: it runs on every patch of the grid)."))] = 64
    context_blocks: Annotated[int, Field(ge=1, description=(
        "Residual blocks of masked 3x3 convolutions in the context network (each looks 2 rows further up)."))] = 2
    patch_negatives: Annotated[int, Field(ge=0, description=(
        "Candidates besides the positive each prediction is scored against, drawn from all patches of the batch "
        "once per step (0: every patch of every image in the batch, the paper's)."))] = 0
    feature_pool: Annotated[Literal["mean", "grid"], Field(description=(
        "What the exported encoder gives per image: mean (the patch features averaged over the grid, the paper's "
        "linear evaluation) or grid (the G² patch features side by side, G²·d wide: keeps the layout, as the "
        "paper's downstream classifiers that take the whole grid of features)."))] = "mean"
    patch_jitter: Annotated[float, Field(ge=0, lt=1, description=(
        "Per-patch brightness and contrast jitter strength s: each patch's factors are drawn from U(1 ± s) (the "
        "paper's per-patch colour augmentations; 0: off). Applied with --patch-augment."))] = 0.4
    patch_augment: Annotated[bool, Field(description=(
        "Per-patch augmentation: each patch is flipped left-right with p 0.5 and, on colour data, keeps one of its "
        "three channels (the paper's colour dropping)."))] = True

    @staticmethod
    def recipe(small: bool, vit: bool = False) -> dict:
        # No official code: the 64/32 grid is [U] (protocols §2) and 8/4 its small-image scaling; the optimiser, lr,
        # wd, K and the crop/jitter values are assumptions [U] (Adam-family, as in the CPC v1 image experiments).
        optim = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4, "warmup_epochs": 2,
                 "schedule": "cosine", "exclude_bias_norm_wd": True}
        method = {"patch_size": SMALL_PATCH if small else 64, "patch_stride": SMALL_STRIDE if small else 32,
                  "prediction_steps": 3 if small else 5}
        # one view; colour dropping per patch stands in for the global grayscale
        augment = {"crop_scale": (0.2, 1.0) if small else (0.08, 1.0), "jitter_p": 0.8,
                   "jitter": (0.4, 0.4, 0.4, 0.1), "jitter_random_order": True, "gray_p": 0.0,
                   "blur_p": (0.0, 0.0), "solarize_p": (0.0, 0.0)}
        return {"optim": optim, "method": method, "augment": augment}

    def check(self, run, data):
        size = run.data.image_size
        grid = patch_grid(size, self.patch_size, self.patch_stride)
        if grid < 2:
            return [f"method.patch_size (--cpc-patch-size): {self.patch_size} px patches at stride {self.patch_stride} "
                    f"give a {grid}x{grid} grid on {size} px views; use smaller patches (e.g. --cpc-patch-size "
                    f"{max(4, size // 4)} --patch-stride {max(1, size // 8)}) so the grid has at least 2 rows"]
        if self.prediction_steps >= grid:
            return [f"method.prediction_steps (--prediction-steps): {self.prediction_steps} rows ahead do not fit "
                    f"the {grid}x{grid} patch grid of {size} px views; use at most {grid - 1}"]
        return []

"""Colorization's spec and recipe (Zhang, Isola & Efros 2016, "Colorful Image Colorization"); the module is
colorization.py. Split-brain (splitbrain_spec.py) shares the recipe and the colour check."""

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from .fields import MethodSpec


def colour_recipe(small: bool) -> dict:
    """The optimiser and augmentation of both colour-prediction tasks (colorization, split-brain)."""
    # train/solver.prototxt (colorization repo): Adam, betas (0.9, 0.99), weight decay 1e-3, lr 3e-5 at batch 40
    # (models/colorization_train_val_v2.prototxt), x0.1 after 225k of 500k iterations (pass --milestones 0.45).
    # Large images: that lr scaled linearly to the batch 256 that --lr is given at (~2e-4); our AdamW's beta2 is
    # 0.999 and its decay decoupled. Small images (our adaptation for runs of minutes): AdamW 1e-3, cosine.
    optim = {"optimizer": "adamw", "lr": 1e-3 if small else 2e-4, "weight_decay": 1e-3, "warmup_epochs": 0,
             "schedule": "cosine" if small else "step", "exclude_bias_norm_wd": False}
    # Colour is the target, so no colour augmentation: the code's random 176 px crop of 256 px images (~47% of the
    # area) and mirror; RandomResizedCrop over 30-100% of the area is our stand-in (small images keep more context).
    augment = {"crop_scale": (0.3, 1.0), "jitter_p": 0.0, "jitter": (0.0, 0.0, 0.0, 0.0),
               "jitter_random_order": False, "gray_p": 0.0, "blur_p": (0.0, 0.0), "solarize_p": (0.0, 0.0)}
    return {"optim": optim, "augment": augment}


def grayscale_problem(run, data, task: str) -> list[str]:
    """The one-line refusal of grayscale data for a task whose target (or one of whose inputs) is ab."""
    if data.channels != 1:
        return []
    return [f"data.source (--data): {run.data.source} is grayscale, but {task}; use a colour dataset (e.g. --data "
            "synthetic-colour, the embedded shapes with coloured shapes, or cifar10)"]


class ColorizationSpec(MethodSpec):
    paper, year = "Zhang et al. 2016 (colorization)", 2016.2
    name: Literal["colorization"] = "colorization"
    pretext: ClassVar[bool] = True
    needs_colour: ClassVar[bool] = True  # the target is the ab channels: grayscale has none
    vit_backbone: ClassVar[bool] = False  # a conv encoder on L, its last feature map decoded to a colour map
    colour_loss: Annotated[Literal["classification", "regression"], Field(description=(
        "How colorization predicts the ab channels from L: classification (the paper: a distribution over the "
        "in-gamut ab bins of side 10, soft-encoded targets, cross-entropy weighted by colour rarity) or regression "
        "(the paper's L2 baseline on ab, whose colours it finds desaturated; split-brain's paper finds its features "
        "weaker too)."))] = (
        "classification")
    colour_rebalance: Annotated[float, Field(ge=0, le=1, description=(
        "lambda of colorization's class rebalancing, w ~ 1/((1 - lambda) p + lambda/Q) for a pixel whose colour "
        "has probability p (estimated online over the pixels trained on): 0.5 in the paper; 1 turns rebalancing "
        "off. Classification only."))] = 0.5

    @staticmethod
    def recipe(small: bool, vit: bool = False) -> dict:
        return colour_recipe(small)

    def check(self, run, data):
        return grayscale_problem(run, data, "colorization predicts the ab (colour) channels from L and grayscale "
                                 "has no ab")

"""What method specs share, declared once: the base class with its recipe/check hooks, and the field types that
several methods use (projector, predictor, momentum, queue, memory bank, temperature), so that a flag has one
description whichever methods carry it.

No torch here: the specs are read by `--help`, which must stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal, Optional, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator


@dataclass(frozen=True)
class DataFacts:
    """What a method's check may need to know of the training data."""
    images: int
    channels: int = 3  # 1 for grayscale sources (their views are gray replicated to RGB), 3 for colour
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)  # the per-channel normalisation of the views the encoder gets
    std: tuple[float, ...] = (1.0, 1.0, 1.0)

    @classmethod
    def of(cls, data) -> "DataFacts":
        """The facts of an ImageSet."""
        return cls(len(data), data.channels, tuple(data.mean), tuple(data.std))


def admits_bool(annotation) -> bool:
    return annotation is bool or any(admits_bool(a) for a in get_args(annotation))


class StrictModel(BaseModel):
    """What every spec section refuses: unknown keys, numbers that are not finite (inf, nan: they would train on
    nothing and write invalid JSON), and yes/no values where a number is expected (YAML reads `lr: yes` as true,
    which pydantic would take as 1.0)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def no_yes_no_for_numbers(cls, data):
        for key, value in data.items() if isinstance(data, dict) else ():
            field = cls.model_fields.get(key)
            if isinstance(value, bool) and field is not None and not admits_bool(field.annotation):
                raise ValueError(f"{key}: {str(value).lower()} is a yes/no value (YAML reads yes, no, on and off as "
                                 "true and false), not a number; give a number")
        return data


class MethodSpec(StrictModel):
    """A method's typed fields. Subclasses set `name: Literal["<name>"] = "<name>"`; fields left None are filled
    from `recipe` once the image size is known (spec.resolve_pretrain)."""

    paper: ClassVar[str] = ""  # "Authors Year": shown in --method's help and the docs
    year: ClassVar[float] = 0  # orders --method choices along the field's lineage
    module: ClassVar[str] = ""  # set by the registry: methods/<module>.py holds the nn.Module
    needs_colour: ClassVar[bool] = False  # True: grayscale data is refused by check (e.g. CMC's L/ab views)
    vit_backbone: ClassVar[bool] = True  # False: the method builds a conv encoder of its own (CMC, CPC v2)
    multi_crop: ClassVar[bool] = False  # True: forward takes 2 global views + --local-crops local ones (SwAV, DINO)
    # True: a hand-designed pretext task (relative location, jigsaw, rotation, colorization, inpainting, split-brain),
    # judged by linear probe rather than kNN and listed apart in the history table
    pretext: ClassVar[bool] = False

    @classmethod
    def method_name(cls) -> str:
        return cls.model_fields["name"].default

    @staticmethod
    def recipe(small: bool, vit: bool = False) -> dict:
        """Paper defaults for the None fields: {'method': {...}, 'optim': {...}, 'augment': {...}, 'backbone': {...}};
        `small`: the view side is below SMALL_IMAGE px (the CIFAR-style variant); `vit`: the backbone is a Vision
        Transformer (recipes that differ by backbone family, e.g. MoCo v3's optimiser and heads)."""
        return {}

    @staticmethod
    def sized_recipe(image_size: int) -> dict:
        """Recipe values that scale with the view side in pixels (e.g. the patch grid of the context tasks), in
        recipe()'s format; applied after recipe() to the fields still None."""
        return {}

    def check(self, run, data: DataFacts) -> list[str]:
        """Problems of a resolved PretrainSpec `run` on `data` that only this method knows, one line each, naming
        the flag and the fix."""
        return []


def _opt(kind, description: str, **limits):
    """An optional field type: None until the recipe (or the user) fills it."""
    return Annotated[Optional[Annotated[kind, Field(**limits)]], Field(description=description)]


def _req(kind, description: str, **limits):
    return Annotated[kind, Field(description=description, **limits)]


Temperature = _opt(float, "Softmax temperature of the contrastive loss.", gt=0)
ProjHiddenDim = _req(int, "Hidden width of the projector MLP.", ge=1)
ProjDim = _req(int, "Output width of the projector (the embedding).", ge=1)
ProjLayers = _opt(int, "Number of Linear layers in the projector MLP.", ge=1)
# Barlow Twins and VICReg size their projector by the recipe: 8192 wide on ImageNet, narrower for small images
RecipeProjHiddenDim = _opt(int, "Hidden width of the projector MLP.", ge=1)
RecipeProjDim = _opt(int, "Output width of the projector (the embedding).", ge=1)
PredHiddenDim = _req(int, "Hidden width of the predictor MLP.", ge=1)
Momentum = _opt(float, "Momentum-encoder EMA coefficient (BYOL: the base value of its cosine schedule).", ge=0, le=1)
QueueSize = _opt(int, "Number of negative keys in the queue filled by the momentum encoder (MoCo; SimCLR v2's memory, "
                      "where 0 turns it off); any size up to the dataset's, the queue wraps around.", ge=0)
Symmetric = _req(bool, "Symmetrised loss (both view orders), as in MoCo's CIFAR demo (worth about 2x the epochs).")
BnSplits = _req(int, "ShuffleBN on one device: batch norm over this many sub-batches (as if on as many GPUs) and the "
                     "key batch shuffled across them, so BN statistics cannot leak which key is the positive (1: off).",
                ge=1)
Negatives = _opt(int, "Negatives drawn per positive from the memory bank for NCE (0: a full softmax over the whole "
                      "bank).", ge=0)
BankMomentum = _req(float, "Memory bank: an entry becomes normalise(m * entry + (1 - m) * new feature) when its image "
                           "is seen.", ge=0, lt=1)
HeadNorm = Literal["bn", "ln", "none"]
# Ablation knobs of the non-contrastive methods: the paper recipe is the default; turning one off reproduces the
# collapse the papers report (docs/inspect-collapse.md).
Predictor = _req(bool, "Ablation: use the predictor MLP (off: the online projection regresses the target directly, "
                       "which collapses).")
ProjNorm = _req(HeadNorm, "Ablation: normalisation in the projector MLP: bn (recipe), ln or none.")
PredNorm = _req(HeadNorm, "Ablation: normalisation in the predictor MLP's hidden layer: bn (recipe), ln or none.")


def queue_problems(queue_size: int, n_images: int, off_allowed: bool = False) -> list[str]:
    """A queue larger than the dataset holds several keys of the same image, some of them the positive's."""
    if queue_size == 0 and not off_allowed:
        return ["method.queue_size (--queue-size): this method needs a queue of negatives; use at least 1 "
                "(the recipe's size when unsure: drop the flag)"]
    if queue_size <= n_images:
        return []
    return [f"method.queue_size (--queue-size): the queue ({queue_size} keys) is larger than the dataset "
            f"({n_images} images), so it would hold several keys of the same image; use a queue of at most "
            f"{n_images} (or more data)"]


# The 3x3 patch grid of the context pretext tasks (relative location, jigsaw), cut by methods/grid.py; sized in
# proportion to the view side by their sized_recipe, checked by grid_problems.
GridPatch = _opt(int, "Side of each patch of the 3x3 grid cut from the view, in pixels [default: the paper's patch "
                      "in proportion to the view side; at 28 px: relloc 6, jigsaw 7].", ge=1)
GridGap = _opt(int, "Pixels between neighbouring patches of the 3x3 grid, so that low-level continuity across a "
                    "border cannot solve the task [default: the paper's gap in proportion to the view side; at 28 "
                    "px: relloc 3, jigsaw 2].", ge=0)
GridJitter = _opt(int, "Each patch of the 3x3 grid moves by up to ± this many pixels on each axis, independently "
                       "[default: the paper's jitter in proportion to the view side; at 28 px: 1].", ge=0)


def grid_recipe(sizes: tuple[int, int, int]) -> dict:
    """sized_recipe's dict of a (patch, gap, jitter) grid."""
    return {"method": dict(zip(("grid_patch", "grid_gap", "grid_jitter"), sizes))}


def grid_problems(spec: MethodSpec, image_size: int, sizes: tuple[int, int, int]) -> list[str]:
    """The problem, if any, of a grid frame (3 patches, 2 gaps, 2 jitters) wider than the view; `sizes`: the
    recipe's grid at this view side, suggested in the fix."""
    frame = 3 * spec.grid_patch + 2 * spec.grid_gap + 2 * spec.grid_jitter
    if spec.grid_patch >= 1 and frame <= image_size:
        return []
    return [f"method.grid_patch (--grid-patch, --grid-gap, --grid-jitter): the 3x3 grid of {spec.grid_patch} px "
            f"patches, {spec.grid_gap} px gaps and ±{spec.grid_jitter} px jitter spans {frame} px (3 x patch + 2 x "
            f"gap + 2 x jitter), more than the {image_size} px views; use smaller values (drop the flags for the "
            f"recipe's {' / '.join(map(str, sizes))} px) or a larger --image-size"]

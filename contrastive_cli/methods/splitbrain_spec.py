"""Split-brain autoencoders' spec and recipe (Zhang, Isola & Efros 2017); the module is splitbrain.py."""

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from .colorization_spec import colour_recipe, grayscale_problem
from .fields import MethodSpec


class SplitBrainSpec(MethodSpec):
    paper, year = "Zhang et al. 2017 (split-brain)", 2017.0
    name: Literal["splitbrain"] = "splitbrain"
    pretext: ClassVar[bool] = True
    needs_colour: ClassVar[bool] = True  # one half sees ab and the other predicts it: grayscale has none
    vit_backbone: ClassVar[bool] = False  # the conv encoder is split into an L half and an ab half (CMC's LabEncoder)
    l_bins: Annotated[int, Field(ge=2, le=1000, description=(
        "Bins of equal width over lightness L 0..100 that split-brain's ab half classifies each pixel's L into "
        "(its ab -> L prediction; the L half classifies ab into the in-gamut ab bins of colorization)."))] = 100

    @staticmethod
    def recipe(small: bool, vit: bool = False) -> dict:
        # No split-brain training code is public (the repository has the trained AlexNet only): colorization's
        # recipe (colorization_spec.colour_recipe), the paper's own starting point.
        return colour_recipe(small)

    def check(self, run, data):
        return grayscale_problem(run, data, "split-brain's halves predict L from ab and ab from L and grayscale has "
                                 "no ab")

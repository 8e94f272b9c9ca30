"""CMC's spec and recipe (Tian, Krishnan & Isola 2019); the module is cmc.py."""

from typing import ClassVar, Literal

from pydantic import Field

from .fields import BankMomentum, MethodSpec, Negatives, ProjDim, Temperature


class CMCSpec(MethodSpec):
    paper, year = "Tian et al. 2019 (CMC)", 2019.5
    needs_colour: ClassVar[bool] = True  # the views are the L and ab channels of Lab: grayscale has no ab
    name: Literal["cmc"] = "cmc"
    vit_backbone: ClassVar[bool] = False  # the encoder splits a conv net's channels into its L and ab halves
    contrast: Literal["nce", "softmax", "in-batch"] = Field("nce", description=(
        "How each view's features are contrasted with the other view's: 'nce' (the paper: NCE against a memory "
        "bank of the other view, --negatives samples), 'softmax' (the code's --softmax: cross-entropy over the "
        "same 1 + --negatives bank entries) or 'in-batch' (InfoNCE with the other images of the batch as "
        "negatives; no memory banks)."))
    width: float = Field(0.5, gt=0, le=4, description=(
        "Width of each view's encoder relative to the backbone (0.5: the paper's half-width ResNets, so the L "
        "and ab encoders together cost about one backbone; the code's v2 and v3 use 1 and 2)."))
    proj_dim: ProjDim = 128
    temperature: Temperature = None
    negatives: Negatives = None
    bank_momentum: BankMomentum = 0.5

    @staticmethod
    def recipe(small: bool, vit: bool = False) -> dict:
        # train_CMC.py: SGD lr 0.03 at batch 128 (= 0.06 at the 256 that --lr is given at), wd 1e-4, x0.1 at epochs
        # 120/160/200 of 240 (pass --milestones 0.5 0.667 0.833; the step default is 0.6 0.8), nce_k 16384,
        # nce_t 0.07. Crops: crop_low 0.2 (AlexNet), 0.08 for ResNets on ImageNet; no colour augmentation at all.
        # Small images (no official recipe): 4096 negatives (README text, and the bank of a 5-50k image set).
        optim = {"optimizer": "sgd", "lr": 0.06, "weight_decay": 1e-4, "warmup_epochs": 0, "schedule": "step",
                 "exclude_bias_norm_wd": False}
        method = {"temperature": 0.07, "negatives": 4096 if small else 16384}
        augment = {"crop_scale": (0.2, 1.0) if small else (0.08, 1.0), "jitter_p": 0.0, "jitter": (0.0, 0.0, 0.0, 0.0),
                   "jitter_random_order": False, "gray_p": 0.0, "blur_p": (0.0, 0.0), "solarize_p": (0.0, 0.0)}
        return {"optim": optim, "method": method, "augment": augment}

    def check(self, run, data):
        problems = []
        if data.channels == 1:
            problems.append(f"data.source (--data): {run.data.source} is grayscale, but CMC's two views are the L "
                            "and ab channels of Lab colour space and grayscale has no ab; use a colour dataset "
                            "(e.g. --data synthetic-colour, the embedded shapes with coloured shapes, or cifar10)")
        if self.contrast != "in-batch" and self.negatives == 0:
            problems.append("method.negatives (--negatives): CMC samples its negatives from the memory banks; use "
                            "at least 1 (the recipe: 16384, 4096 for small images)")
        return problems

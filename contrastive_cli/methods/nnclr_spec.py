"""NNCLR's spec and recipe (Dwibedi et al. 2021, "With a Little Help from My Friends: Nearest-Neighbor Contrastive
Learning of Visual Representations"); the module is nnclr.py."""

from typing import Literal, Optional

from pydantic import Field

from .fields import MethodSpec, PredHiddenDim, ProjDim, ProjHiddenDim, Temperature


class NNCLRSpec(MethodSpec):
    paper, year = "Dwibedi et al. 2021 (NNCLR)", 2021.04
    name: Literal["nnclr"] = "nnclr"
    temperature: Temperature = None
    proj_hidden_dim: ProjHiddenDim = 2048
    proj_dim: ProjDim = 256
    pred_hidden_dim: PredHiddenDim = 4096
    support_size: Optional[int] = Field(None, ge=1, description=(
        "Size of the support set: a FIFO queue of past projections (of the first view) in which each view's "
        "nearest neighbour is looked up and used as its positive; at most the number of training images "
        "[default: the recipe's, 98304 (the paper's) from 64 px up, 8192 below]."))

    @staticmethod
    def recipe(small: bool, vit: bool = False) -> dict:
        # Paper: LARS at batch 4096, 1000 epochs, warm-up 10 + cosine, wd 1e-6, tau 0.1, support set 98304,
        # BYOL's augmentations. LARS is not offered: plain SGD with the small-batch lr of the other methods here.
        # Small images: a support set of 8192 (lightly's CIFAR example uses 4096; solo-learn 65536, which is more
        # than CIFAR-10's 50000 images), so that it fits a 10k-image subset; the check keeps it within the data.
        optim = {"optimizer": "sgd", "lr": 0.3, "weight_decay": 1e-5 if small else 1e-6, "warmup_epochs": 10,
                 "schedule": "cosine", "exclude_bias_norm_wd": True}
        method = {"temperature": 0.1, "support_size": 8192 if small else 98304}
        augment = {"crop_scale": (0.08, 1.0), "jitter_p": 0.8, "jitter": (0.4, 0.4, 0.2, 0.1),
                   "jitter_random_order": True, "gray_p": 0.2, "blur_p": (1.0, 0.1), "solarize_p": (0.0, 0.2)}
        return {"optim": optim, "method": method, "augment": augment}

    def check(self, run, data):
        if self.support_size <= data.images:
            return []
        return [f"method.support_size (--support-size): the support set ({self.support_size} projections) is larger "
                f"than the dataset ({data.images} images), so it would hold several projections of the same image; "
                f"use at most {data.images} (or more data)"]

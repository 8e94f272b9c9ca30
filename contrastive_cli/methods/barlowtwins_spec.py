"""Barlow Twins' spec and recipe (Zbontar et al. 2021); the module is barlowtwins.py."""

from typing import Literal

from pydantic import Field

from .fields import MethodSpec, ProjLayers, RecipeProjDim, RecipeProjHiddenDim


class BarlowTwinsSpec(MethodSpec):
    paper, year = "Zbontar et al. 2021 (Barlow Twins)", 2021.03
    name: Literal["barlowtwins"] = "barlowtwins"
    proj_hidden_dim: RecipeProjHiddenDim = None  # recipe: 8192 on ImageNet, 2048 for small images
    proj_dim: RecipeProjDim = None
    proj_layers: ProjLayers = None  # recipe: 3 ("8192-8192-8192")
    redundancy_weight: float = Field(0.0051, ge=0, description=(
        "Barlow Twins' lambda: weight of the redundancy-reduction term (the squared off-diagonal cross-correlations) "
        "against the invariance term (the diagonal's distance to 1); 0 leaves invariance alone."))

    @staticmethod
    def recipe(small: bool, vit: bool = False) -> dict:
        # Official main.py: LARS, lr 0.2 x B/256 for weights and 0.0048 x B/256 for biases and BN, wd 1e-6 (the paper
        # says 1.5e-6), biases and BN excluded from wd, warm-up 10 epochs + cosine, 1000 epochs at batch 2048.
        # That is the large recipe. Small images (no paper recipe): the loss is unscaled (a sum over d² entries), so
        # SGD's step grows with the projector width and needed lr <= 0.003; AdamW, which like LARS takes steps of a
        # set size whatever the gradient's scale, learnt faster and without dimensional collapse at lr 1e-3
        # (measured on Fashion-MNIST: docs/methods.md#barlow-twins-barlowtwins). Small images: solo-learn's CIFAR config
        # (2048-2048-2048, wd 1e-4, asymmetric augmentation without blur). No ViT recipe in the paper or the code.
        optim = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4} if small else \
            {"optimizer": "lars", "lr": 0.2, "bias_lr_ratio": 0.024,  # 0.0048 / 0.2
             "weight_decay": 1e-6}
        optim |= {"warmup_epochs": 10, "schedule": "cosine", "exclude_bias_norm_wd": True}
        width = 2048 if small else 8192
        method = {"proj_hidden_dim": width, "proj_dim": width, "proj_layers": 3}
        # main.py's two pipelines (BYOL's): crop 0.08-1, bicubic, jitter (0.4, 0.4, 0.2, 0.1) @ 0.8 in torchvision's
        # random order, gray 0.2, blur 1.0 / 0.1, solarize 0 / 0.2
        augment = {"crop_scale": (0.08, 1.0), "jitter_p": 0.8, "jitter": (0.4, 0.4, 0.2, 0.1),
                   "jitter_random_order": True, "gray_p": 0.2, "blur_p": (0.0, 0.0) if small else (1.0, 0.1),
                   "solarize_p": (0.0, 0.2)}
        return {"optim": optim, "method": method, "augment": augment}

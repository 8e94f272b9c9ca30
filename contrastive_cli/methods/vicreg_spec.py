"""VICReg's spec and recipe (Bardes et al. 2022); the module is vicreg.py."""

from typing import Literal

from pydantic import Field

from .fields import MethodSpec, ProjLayers, RecipeProjDim, RecipeProjHiddenDim


class VICRegSpec(MethodSpec):
    paper, year = "Bardes et al. 2022 (VICReg)", 2021.05
    name: Literal["vicreg"] = "vicreg"
    proj_hidden_dim: RecipeProjHiddenDim = None  # the "expander": recipe 8192 on ImageNet, 2048 for small images
    proj_dim: RecipeProjDim = None
    proj_layers: ProjLayers = None  # recipe: 3 ("8192-8192-8192")
    invariance_weight: float = Field(25.0, ge=0, description=(
        "VICReg's lambda: weight of the invariance term, the mean squared error between the two views' embeddings."))
    variance_weight: float = Field(25.0, ge=0, description=(
        "VICReg's mu: weight of the variance term, the hinge max(0, 1 - std) on every embedding dimension "
        "(0: the paper's collapsing ablation)."))
    covariance_weight: float = Field(1.0, ge=0, description=(
        "VICReg's nu: weight of the covariance term, the squared off-diagonal covariances divided by the dimension."))

    @staticmethod
    def recipe(small: bool, vit: bool = False) -> dict:
        # Official main_vicreg.py: LARS, base lr 0.2 x B/256 (README: 0.3 at batch 512 for 100 epochs), wd 1e-6,
        # biases and BN excluded from wd, warm-up 10 epochs + cosine, 1000 epochs at batch 2048: the large recipe.
        # Small images (no paper recipe): SGD, whose lr 0.03-0.1 all learnt on Fashion-MNIST (the loss is a few tens:
        # means, and a sum / d; docs/methods.md#vicreg-vicreg), and solo-learn's CIFAR config (2048-2048-2048
        # expander, wd 1e-4, crop 0.2-1, no blur, solarize 0.1 on both views). No ViT recipe in the paper or the code.
        optim = {"optimizer": "sgd", "lr": 0.1, "weight_decay": 1e-4} if small else \
            {"optimizer": "lars", "lr": 0.2, "weight_decay": 1e-6}
        optim |= {"warmup_epochs": 10, "schedule": "cosine", "exclude_bias_norm_wd": True}
        width = 2048 if small else 8192
        method = {"proj_hidden_dim": width, "proj_dim": width, "proj_layers": 3}
        # augmentations.py: Barlow Twins' (BYOL's) two pipelines
        augment = ({"crop_scale": (0.2, 1.0), "blur_p": (0.0, 0.0), "solarize_p": (0.1, 0.1)} if small else
                   {"crop_scale": (0.08, 1.0), "blur_p": (1.0, 0.1), "solarize_p": (0.0, 0.2)})
        augment.update({"jitter_p": 0.8, "jitter": (0.4, 0.4, 0.2, 0.1), "jitter_random_order": True, "gray_p": 0.2})
        return {"optim": optim, "method": method, "augment": augment}

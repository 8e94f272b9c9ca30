"""SimSiam's spec and recipe (Chen & He 2021); the module is simsiam.py."""

from typing import Literal

from pydantic import Field

from .fields import MethodSpec, PredHiddenDim, ProjLayers, Predictor, PredNorm, ProjDim, ProjHiddenDim, ProjNorm


class SimSiamSpec(MethodSpec):
    paper, year = "Chen & He 2021", 2020.4
    name: Literal["simsiam"] = "simsiam"
    proj_hidden_dim: ProjHiddenDim = 2048
    proj_dim: ProjDim = 2048
    pred_hidden_dim: PredHiddenDim = 512
    proj_layers: ProjLayers = None  # recipe: 3 on ImageNet, 2 for small images
    fix_pred_lr: bool = Field(True, description="Keep the predictor's lr constant (not decayed).")
    stop_gradient: bool = Field(True, description=(
        "Ablation: stop the gradient through the target branch (off: the paper's collapsing variant)."))
    predictor: Predictor = True
    proj_norm: ProjNorm = "bn"
    pred_norm: PredNorm = "bn"

    @staticmethod
    def recipe(small: bool, vit: bool = False) -> dict:
        # Official code: SGD lr 0.05 x B/256, wd 1e-4, cosine, no warm-up, MoCo v2 augmentation.
        # CIFAR (paper appendix): lr 0.03 x B/256, wd 5e-4, 2-layer projector.
        optim = {"optimizer": "sgd", "lr": 0.03 if small else 0.05, "weight_decay": 5e-4 if small else 1e-4,
                 "warmup_epochs": 0, "schedule": "cosine", "exclude_bias_norm_wd": False}
        augment = {"crop_scale": (0.2, 1.0), "jitter_p": 0.8, "jitter": (0.4, 0.4, 0.4, 0.1),
                   "jitter_random_order": True, "gray_p": 0.2, "blur_p": (0.5, 0.5), "solarize_p": (0.0, 0.0)}
        return {"optim": optim, "method": {"proj_layers": 2 if small else 3}, "augment": augment}

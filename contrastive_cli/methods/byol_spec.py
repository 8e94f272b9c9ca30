"""BYOL's spec and recipe (Grill et al. 2020); the module is byol.py."""

from typing import Literal

from .fields import MethodSpec, Momentum, PredHiddenDim, Predictor, PredNorm, ProjDim, ProjHiddenDim, ProjNorm


class BYOLSpec(MethodSpec):
    paper, year = "Grill et al. 2020", 2020.3
    name: Literal["byol"] = "byol"
    proj_hidden_dim: ProjHiddenDim = 4096
    proj_dim: ProjDim = 256
    pred_hidden_dim: PredHiddenDim = 4096
    momentum: Momentum = None
    predictor: Predictor = True
    proj_norm: ProjNorm = "bn"
    pred_norm: PredNorm = "bn"

    @staticmethod
    def recipe(small: bool, vit: bool = False) -> dict:
        # Paper: LARS (eta 0.001, biases and BN excluded), base lr 0.45 (<=100 epochs; 0.2 for 1000), wd 1e-6,
        # warm-up 10 epochs + cosine, tau_base 0.99. Small images (no paper recipe): SGD at 0.2, wd 1e-5 (solo-learn's
        # CIFAR wd), measured; LARS at 0.45 learns too slowly in short runs (docs/distributed.md#lars).
        optim = {"optimizer": "sgd", "lr": 0.2, "weight_decay": 1e-5} if small else \
            {"optimizer": "lars", "lr": 0.45, "weight_decay": 1e-6}
        optim |= {"warmup_epochs": 10, "schedule": "cosine", "exclude_bias_norm_wd": True}
        method = {"momentum": 0.99}
        augment = {"crop_scale": (0.08, 1.0), "jitter_p": 0.8, "jitter": (0.4, 0.4, 0.2, 0.1),
                   "jitter_random_order": True, "gray_p": 0.2, "blur_p": (1.0, 0.1), "solarize_p": (0.0, 0.2)}
        return {"optim": optim, "method": method, "augment": augment, "runtime": {"sync_bn": True}}

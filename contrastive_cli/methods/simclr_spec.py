"""SimCLR's spec and recipe (Chen et al. 2020); the module is simclr.py."""

from typing import Literal

from .fields import MethodSpec, ProjDim, ProjHiddenDim, Temperature


class SimCLRSpec(MethodSpec):
    paper, year = "Chen et al. 2020", 2020.1
    name: Literal["simclr"] = "simclr"
    temperature: Temperature = None
    proj_hidden_dim: ProjHiddenDim = 2048
    proj_dim: ProjDim = 128

    @staticmethod
    def recipe(small: bool, vit: bool = False) -> dict:
        # lr 0.3 x B/256 with warm-up + cosine, wd 1e-6 (v1 code; LARS there, SGD here); CIFAR: tau 0.5, jitter strength 0.5.
        s = 0.5 if small else 1.0
        optim = {"optimizer": "sgd", "lr": 0.3, "weight_decay": 1e-6, "warmup_epochs": 10,
                 "schedule": "cosine", "exclude_bias_norm_wd": True}
        method = {"temperature": 0.5 if small else 0.1}
        augment = {"crop_scale": (0.08, 1.0), "jitter_p": 0.8, "jitter": (0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s),
                   "jitter_random_order": True, "gray_p": 0.2, "blur_p": (0.5, 0.5), "solarize_p": (0.0, 0.0)}
        return {"optim": optim, "method": method, "augment": augment, "runtime": {"sync_bn": True}}

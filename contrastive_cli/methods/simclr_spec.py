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
        # LARS (eta 0.001, biases and BN excluded), lr 0.3 x B/256 with 10 warm-up epochs + cosine, wd 1e-6 (v1 code).
        # Small images: SGD at the same lr and wd. The CIFAR README's LARS (lr 1.0, wd 1e-4) learns as well on
        # Fashion-MNIST in 15 epochs but far less in the 30-epoch synthetic quickstart (docs/distributed.md#lars).
        # CIFAR: tau 0.5, jitter strength 0.5.
        s = 0.5 if small else 1.0
        optim = {"optimizer": "sgd" if small else "lars", "lr": 0.3, "weight_decay": 1e-6, "warmup_epochs": 10,
                 "schedule": "cosine", "exclude_bias_norm_wd": True}
        method = {"temperature": 0.5 if small else 0.1}
        augment = {"crop_scale": (0.08, 1.0), "jitter_p": 0.8, "jitter": (0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s),
                   "jitter_random_order": True, "gray_p": 0.2, "blur_p": (0.5, 0.5), "solarize_p": (0.0, 0.0)}
        return {"optim": optim, "method": method, "augment": augment, "runtime": {"sync_bn": True}}

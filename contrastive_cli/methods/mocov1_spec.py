"""MoCo v1's spec and recipe (He et al. 2020, "Momentum Contrast for Unsupervised Visual Representation Learning");
the module is mocov1.py."""

from typing import Literal

from .fields import BnSplits, MethodSpec, Momentum, ProjDim, QueueSize, Symmetric, Temperature, queue_problems
from .mocov2_spec import bn_split_problems


class MoCoV1Spec(MethodSpec):
    paper, year = "He et al. 2019 (MoCo v1)", 2019.9
    name: Literal["mocov1"] = "mocov1"
    temperature: Temperature = None
    proj_dim: ProjDim = 128
    queue_size: QueueSize = None
    momentum: Momentum = None
    symmetric: Symmetric = False
    bn_splits: BnSplits = 8

    @staticmethod
    def recipe(small: bool, vit: bool = False) -> dict:
        # Official main_moco.py without --mlp/--aug-plus/--cos: lr 0.03, wd 1e-4, x0.1 at epochs 120 and 160 of 200,
        # T 0.07, K 65536, m 0.999. Small images: the CIFAR demo's K 4096, m 0.99, wd 5e-4 (v1 settings otherwise).
        optim = {"optimizer": "sgd", "lr": 0.03, "weight_decay": 5e-4 if small else 1e-4,
                 "warmup_epochs": 0, "schedule": "step", "exclude_bias_norm_wd": False}
        method = {"temperature": 0.07, "queue_size": 4096 if small else 65536, "momentum": 0.99 if small else 0.999}
        # v1 augmentation: crop 0.2-1, grayscale 0.2, ColorJitter(0.4, 0.4, 0.4, 0.4) always (random order), flip;
        # no blur. (torchvision applies the grayscale before the jitter there; here it follows it.)
        augment = {"crop_scale": (0.2, 1.0), "jitter_p": 1.0, "jitter": (0.4, 0.4, 0.4, 0.4),
                   "jitter_random_order": True, "gray_p": 0.2, "blur_p": (0.0, 0.0), "solarize_p": (0.0, 0.0)}
        return {"optim": optim, "method": method, "augment": augment}

    def check(self, run, data):
        return bn_split_problems(run.optim.batch_size, self.bn_splits) + queue_problems(self.queue_size, data.images)

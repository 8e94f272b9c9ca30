"""MoCo v2's spec and recipe (He et al. 2020; Chen et al. 2020); the module is mocov2.py."""

from typing import Literal

from .fields import BnSplits, MethodSpec, Momentum, ProjDim, ProjHiddenDim, QueueSize, Symmetric, Temperature, queue_problems


class MoCoV2Spec(MethodSpec):
    paper, year = "Chen et al. 2020 (MoCo v2)", 2020.2
    name: Literal["mocov2"] = "mocov2"
    temperature: Temperature = None
    proj_hidden_dim: ProjHiddenDim = 2048
    proj_dim: ProjDim = 128
    queue_size: QueueSize = None
    momentum: Momentum = None
    symmetric: Symmetric = False
    bn_splits: BnSplits = 8

    @staticmethod
    def recipe(small: bool, vit: bool = False) -> dict:
        # ImageNet: official code with --mlp --moco-t 0.2 --aug-plus --cos; small images: the CIFAR demo.
        optim = {"optimizer": "sgd", "lr": 0.03, "weight_decay": 5e-4 if small else 1e-4,
                 "warmup_epochs": 0, "schedule": "cosine", "exclude_bias_norm_wd": False}
        method = {"temperature": 0.1 if small else 0.2, "queue_size": 4096 if small else 65536,
                  "momentum": 0.99 if small else 0.999}
        augment = {"crop_scale": (0.08, 1.0) if small else (0.2, 1.0), "jitter_p": 0.8,
                   "jitter": (0.4, 0.4, 0.4, 0.1), "jitter_random_order": True, "gray_p": 0.2,
                   "blur_p": (0.5, 0.5), "solarize_p": (0.0, 0.0)}
        return {"optim": optim, "method": method, "augment": augment}

    def check(self, run, data):
        return bn_split_problems(run.optim.batch_size, self.bn_splits) + queue_problems(self.queue_size, data.images)


def bn_split_problems(batch_size: int, splits: int) -> list[str]:
    return [] if batch_size % splits == 0 else [
        f"method.bn_splits (--bn-splits): the batch size ({batch_size}) must be a multiple of the BN splits ({splits})"]

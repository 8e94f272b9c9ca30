"""RotNet's spec and recipe (Gidaris, Singh & Komodakis 2018); the module is rotation.py."""

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from .fields import MethodSpec


class RotationSpec(MethodSpec):
    paper, year = "Gidaris et al. 2018 (RotNet)", 2018.2
    name: Literal["rotation"] = "rotation"
    pretext: ClassVar[bool] = True
    rotation_head_hidden_dim: Annotated[int, Field(ge=0, description=(
        "Hidden width of the 4-way rotation classifier on the pooled features: 0 is a linear classifier (the "
        "paper's head on its NIN/ResNet networks), N > 0 an MLP Linear(N) -> BN -> ReLU -> Linear(4), which takes "
        "over the task-specific top layers the paper finds worse for features than the middle ones."))] = 0

    @staticmethod
    def recipe(small: bool, vit: bool = False) -> dict:
        # FeatureLearningRotNet config/CIFAR10_RotNet_NIN4blocks.py: SGD momentum 0.9, nesterov, lr 0.1 at batch 128
        # (= 0.2 at the 256 that --lr is given at), wd 5e-4, lr x0.2 at epochs 30/60/80 of 100. Ours: plain
        # momentum (no Nesterov option) and the step schedule's x0.1 at 60%/80% (--milestones) instead.
        optim = {"optimizer": "sgd", "lr": 0.2, "weight_decay": 5e-4, "warmup_epochs": 0, "schedule": "step",
                 "exclude_bias_norm_wd": False}
        if vit:  # the paper trains no ViT: our adaptation, the AdamW recipe ViTs train with (MoCo v3, DINO)
            optim = {"optimizer": "adamw", "lr": 5e-4, "weight_decay": 0.05, "warmup_epochs": 10,
                     "schedule": "cosine", "exclude_bias_norm_wd": True}
        # RotNet's CIFAR loader: random crop with 4 px padding + horizontal flip, no colour augmentation (ImageNet:
        # a 224 crop of the 256 resize). RandomResizedCrop from 60-100% of the area is our stand-in for both.
        augment = {"crop_scale": (0.6, 1.0), "jitter_p": 0.0, "jitter": (0.0, 0.0, 0.0, 0.0),
                   "jitter_random_order": False, "gray_p": 0.0, "blur_p": (0.0, 0.0), "solarize_p": (0.0, 0.0)}
        return {"optim": optim, "augment": augment}

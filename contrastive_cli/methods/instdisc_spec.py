"""InstDisc's spec and recipe (Wu et al. 2018); the module is instdisc.py."""

from typing import Literal

from .fields import BankMomentum, MethodSpec, Negatives, ProjDim, Temperature


class InstDiscSpec(MethodSpec):
    paper, year = "Wu et al. 2018 (InstDisc)", 2018.1
    name: Literal["instdisc"] = "instdisc"
    temperature: Temperature = None
    proj_dim: ProjDim = 128
    negatives: Negatives = None
    bank_momentum: BankMomentum = 0.5

    @staticmethod
    def recipe(small: bool, vit: bool = False) -> dict:
        # lemniscate.pytorch f7cfe29. ImageNet (main.py): lr 0.03 at batch 256, wd 1e-4, x0.1 at epochs 120 and 160
        # of 200, nce-k 4096, nce-t 0.07. CIFAR (cifar.py): lr 0.03 at batch 128 (0.06 at 256 under the linear rule
        # the CLI applies), wd 5e-4, the same steps, nce-t 0.1. Both: ColorJitter(0.4 x 4) on every image (torchvision
        # shuffles the four operations), grayscale 0.2, no blur.
        optim = {"optimizer": "sgd", "lr": 0.06 if small else 0.03, "weight_decay": 5e-4 if small else 1e-4,
                 "warmup_epochs": 0, "schedule": "step", "exclude_bias_norm_wd": False}
        # CIFAR README: `python cifar.py --nce-k 0 --nce-t 0.1 --lr 0.03`, the full softmax over the bank (LinearAverage):
        # with N = 50k, K = 4096 noise draws would be 8% of the bank; on smaller sets NCE's noise term dominates.
        method = {"temperature": 0.1 if small else 0.07, "negatives": 0 if small else 4096}
        augment = {"crop_scale": (0.2, 1.0), "jitter_p": 1.0, "jitter": (0.4, 0.4, 0.4, 0.4),
                   "jitter_random_order": True, "gray_p": 0.2, "blur_p": (0.0, 0.0), "solarize_p": (0.0, 0.0)}
        return {"optim": optim, "method": method, "augment": augment}

    # check: the bank has one entry per training image by construction, and the K noise entries are i.i.d. draws
    # (with replacement) from the noise distribution, so any K is a valid NCE noise ratio, even one above the bank.

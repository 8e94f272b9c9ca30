"""InvaSpread's spec and recipe (Ye et al. 2019); the module is invaspread.py."""

from typing import Literal

from .fields import MethodSpec, ProjDim, Temperature


class InvaSpreadSpec(MethodSpec):
    paper, year = "Ye et al. 2019 (InvaSpread)", 2019.3
    name: Literal["invaspread"] = "invaspread"
    temperature: Temperature = None
    proj_dim: ProjDim = 128

    @staticmethod
    def recipe(small: bool, vit: bool = False) -> dict:
        # mangye16/Unsupervised_Embedding_Learning 29de398, demo_seen.py: the same values for CIFAR-10 (32 px) and
        # STL-10 (96 px). SGD lr 0.03 at batch 128 (0.06 at 256 under the linear rule the CLI applies), wd 5e-4,
        # steps at epochs 120/160/200 (x0.1, x0.05, x0.01; here the shared x0.1 steps at 60 % / 80 %), --batch-t 0.1;
        # ColorJitter(0.4 x 4) on every image (torchvision shuffles the four operations), grayscale 0.2, flip.
        optim = {"optimizer": "sgd", "lr": 0.06, "weight_decay": 5e-4, "warmup_epochs": 0, "schedule": "step",
                 "exclude_bias_norm_wd": False}
        method = {"temperature": 0.1}
        augment = {"crop_scale": (0.2, 1.0), "jitter_p": 1.0, "jitter": (0.4, 0.4, 0.4, 0.4),
                   "jitter_random_order": True, "gray_p": 0.2, "blur_p": (0.0, 0.0), "solarize_p": (0.0, 0.0)}
        return {"optim": optim, "method": method, "augment": augment}

"""MoCo v3's spec and recipe (Chen, Xie & He 2021, "An Empirical Study of Training Self-Supervised Vision
Transformers"); the module is mocov3.py."""

from typing import Literal, Optional

from pydantic import Field

from .fields import MethodSpec, Momentum, PredHiddenDim, ProjDim, ProjHiddenDim, ProjLayers, Temperature


class MoCoV3Spec(MethodSpec):
    paper, year = "Chen, Xie & He 2021 (MoCo v3)", 2021.04
    name: Literal["mocov3"] = "mocov3"
    temperature: Temperature = None
    proj_hidden_dim: ProjHiddenDim = 4096
    proj_dim: ProjDim = 256
    pred_hidden_dim: PredHiddenDim = 4096
    proj_layers: ProjLayers = None  # recipe: 2 for ResNets, 3 for ViTs (official moco-v3 builder)
    momentum: Momentum = None
    freeze_patch_embed: Optional[bool] = Field(None, description=(
        "ViT only: keep the patch projection at its random initialisation (MoCo v3's --stop-grad-conv1, which "
        "stabilises ViT training) [default: on for ViT backbones, as the official ViT recipe]."))

    @staticmethod
    def recipe(small: bool, vit: bool = False) -> dict:
        # Official moco-v3 CONFIG.md. ResNet-50: LARS lr 0.6 x B/256 at B=4096 (100 epochs), wd 1e-6, warm-up 10,
        # cosine, tau 1.0, m 0.99 -> 1 (cosine), crop-min 0.2. Small images (no paper recipe): SGD at 0.3, wd 1e-5,
        # measured; LARS at 0.6 learns more slowly in short runs (docs/distributed.md#lars). ViT: AdamW
        # lr 1.5e-4 x B/256, wd 0.1 on every parameter, warm-up 40 epochs (the loop caps it at a tenth of the
        # run), tau 0.2, --stop-grad-conv1, fixed 2-D sin-cos position embeddings, crops from 0.08 of the area.
        if vit:
            optim = {"optimizer": "adamw", "lr": 1.5e-4, "weight_decay": 0.1, "warmup_epochs": 40,
                     "schedule": "cosine", "exclude_bias_norm_wd": False}
        else:
            optim = {"optimizer": "sgd", "lr": 0.3, "weight_decay": 1e-5} if small else \
                {"optimizer": "lars", "lr": 0.6, "weight_decay": 1e-6}
            optim |= {"warmup_epochs": 10, "schedule": "cosine", "exclude_bias_norm_wd": True}
        method = {"temperature": 0.2 if vit else 1.0, "proj_layers": 3 if vit else 2, "momentum": 0.99,
                  "freeze_patch_embed": vit}
        augment = {"crop_scale": (0.08, 1.0) if vit else (0.2, 1.0), "jitter_p": 0.8, "jitter": (0.4, 0.4, 0.2, 0.1),
                   "jitter_random_order": True, "gray_p": 0.2, "blur_p": (1.0, 0.1), "solarize_p": (0.0, 0.2)}
        recipe = {"optim": optim, "method": method, "augment": augment, "runtime": {"sync_bn": not vit}}
        if vit:
            recipe["backbone"] = {"pos_embed": "sincos"}
        return recipe

    def check(self, run, data):
        if self.freeze_patch_embed and not run.backbone.is_vit:
            return [f"method.freeze_patch_embed (--freeze-patch-embed): only a Vision Transformer has a patch "
                    f"projection to freeze, but the backbone is {run.backbone.name}; drop the flag (or use "
                    f"--no-freeze-patch-embed) or choose a vit_* backbone"]
        return []

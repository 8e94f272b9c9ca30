"""Context Encoders' spec and recipe (Pathak et al. 2016); the module is inpainting.py."""

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from .fields import MethodSpec


class InpaintingSpec(MethodSpec):
    paper, year = "Pathak et al. 2016 (Context Encoders)", 2016.3
    name: Literal["inpainting"] = "inpainting"
    pretext: ClassVar[bool] = True
    vit_backbone: ClassVar[bool] = False  # the decoder starts from the backbone's last spatial feature map
    inpaint_mask: Annotated[Literal["central", "blocks"], Field(description=(
        "The hidden region: central (the centre square, half the side: 1/4 of the image) or blocks (four random, "
        "possibly overlapping squares of 1/6 to 1/4 of the side, at most 1/4 of the image together; the paper's "
        "random blocks, which it finds as good for features as its random regions and much better than the "
        "central square, whose fixed boundary the features latch onto)."))] = "blocks"
    adversarial_weight: Annotated[float, Field(ge=0, lt=1, description=(
        "Weight of the adversarial loss against the reconstruction's (1 - weight), with a small conv "
        "discriminator judging the completed image (the paper's joint loss: 0.001; 0: off, reconstruction only)."))] = 0.0

    @staticmethod
    def recipe(small: bool, vit: bool = False) -> dict:
        # context-encoder train.lua: Adam lr 2e-4, beta1 0.5, batch 64 (DCGAN's). Ours: AdamW 1e-3 at batch 256 (the
        # linearly scaled 8e-4, rounded), beta1 --optimizer-momentum 0.9, wd 1e-4 and a cosine schedule (the code
        # keeps the lr constant).
        optim = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4, "warmup_epochs": 2, "schedule": "cosine",
                 "exclude_bias_norm_wd": True}
        # the code: a random 128 px crop of the image resized to 350 px, flipped; no colour augmentation. Ours:
        # RandomResizedCrop from 20-100% of the area (a 13% crop of a 28-32 px image is a few pixels).
        augment = {"crop_scale": (0.2, 1.0), "jitter_p": 0.0, "jitter": (0.0, 0.0, 0.0, 0.0),
                   "jitter_random_order": False, "gray_p": 0.0, "blur_p": (0.0, 0.0), "solarize_p": (0.0, 0.0)}
        return {"optim": optim, "augment": augment}

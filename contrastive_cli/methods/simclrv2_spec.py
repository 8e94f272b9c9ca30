"""SimCLR v2's spec and recipe (Chen et al. 2020, "Big Self-Supervised Models are Strong Semi-Supervised
Learners"); the module is simclrv2.py."""

from typing import Literal

from pydantic import Field

from .fields import MethodSpec, Momentum, ProjDim, ProjLayers, QueueSize, Temperature, queue_problems


class SimCLRv2Spec(MethodSpec):
    paper, year = "Chen et al. 2020 (SimCLR v2)", 2020.5
    name: Literal["simclrv2"] = "simclrv2"
    temperature: Temperature = None
    proj_layers: ProjLayers = 3
    proj_dim: ProjDim = 128
    keep_proj_layers: int = Field(1, ge=0, description=(
        "Projector layers moved into the exported encoder, so that evaluations and fine-tuning start from the middle "
        "of the head (v2's ft_proj_selector; 1: the paper's fine-tuning point; 0: the plain backbone, "
        "torchvision-loadable)."))
    queue_size: QueueSize = None  # the recipe: 0, off as in the released code
    momentum: Momentum = None

    @staticmethod
    def recipe(small: bool, vit: bool = False) -> dict:
        # tf2 README: lr 0.3 x B/256 (= 0.075 sqrt(B) at 4096), wd 1e-4, warm-up 10 epochs + cosine, tau 0.1; LARS
        # there, SGD here. CIFAR command: tau 0.5, colour strength 0.5, no blur. The memory's momentum is MoCo's.
        s = 0.5 if small else 1.0
        optim = {"optimizer": "sgd", "lr": 0.3, "weight_decay": 1e-4, "warmup_epochs": 10,
                 "schedule": "cosine", "exclude_bias_norm_wd": True}
        method = {"temperature": 0.5 if small else 0.1, "momentum": 0.99 if small else 0.999, "queue_size": 0}
        augment = {"crop_scale": (0.08, 1.0), "jitter_p": 0.8, "jitter": (0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s),
                   "jitter_random_order": True, "gray_p": 0.2, "blur_p": (0.0, 0.0) if small else (0.5, 0.5),
                   "solarize_p": (0.0, 0.0)}
        return {"optim": optim, "method": method, "augment": augment}

    def check(self, run, data):
        problems = []
        if self.keep_proj_layers >= self.proj_layers:
            problems.append(
                f"method.keep_proj_layers (--keep-proj-layers): {self.keep_proj_layers} of the {self.proj_layers} "
                f"projector layers would leave no layer for the loss; keep at most {self.proj_layers - 1}")
        problems += queue_problems(self.queue_size, data.images, off_allowed=True)
        return problems

"""SwAV's spec and recipe (Caron et al. 2020); the module is swav.py."""

from typing import ClassVar, Literal, Optional

from pydantic import Field

from .fields import MethodSpec, ProjDim, ProjHiddenDim, Temperature


class SwAVSpec(MethodSpec):
    paper, year = "Caron et al. 2020", 2020.6
    multi_crop: ClassVar[bool] = True
    name: Literal["swav"] = "swav"
    temperature: Temperature = None
    proj_hidden_dim: ProjHiddenDim = 2048
    proj_dim: ProjDim = 128
    prototypes: Optional[int] = Field(None, ge=2, description=(
        "Number of prototypes K, the clusters the codes assign images to (SwAV: 3000 on ImageNet; of the order "
        "of 10x the classes on small data)."))
    sinkhorn_epsilon: float = Field(0.05, gt=0, description=(
        "Entropy weight ε of the Sinkhorn-Knopp codes exp(scores / ε): lower gives sharper codes (the SwAV README's "
        "fix when training collapses at the start is 0.03)."))
    sinkhorn_iterations: int = Field(3, ge=1, description="Sinkhorn-Knopp iterations per step.")
    freeze_prototypes_epochs: float = Field(1.0, ge=0, description=(
        "Keep the prototypes fixed (their gradients zeroed) for this many epochs from the start (SwAV's "
        "freeze_prototypes_niters: 313 iterations, one epoch at its batch 4096)."))
    swav_queue_size: Optional[int] = Field(None, ge=0, description=(
        "Projections of past batches, per global crop, whose scores join the batch's in the Sinkhorn-Knopp "
        "equal partition, so small batches are assigned among more samples (0: off; SwAV: 3840 at batch 256). "
        "Used once full; at most the number of images."))
    swav_queue_start: Optional[int] = Field(None, ge=0, description=(
        "Epoch (counted from 0) from which the queue fills; a run that ends sooner never uses it (SwAV: 15)."))
    equipartition: bool = Field(True, description=(
        "Ablation: codes by Sinkhorn-Knopp under the equal-partition constraint (off: a plain softmax of "
        "scores / ε per image, which collapses: every image goes to the same prototype)."))

    @staticmethod
    def recipe(small: bool, vit: bool = False) -> dict:
        # Official main_swav.py + scripts/swav_200ep_bs256_pretrain.sh (batch 256: lr 0.6 -> 0.0006 cosine, no warm-up,
        # wd 1e-6, queue 3840 from epoch 15, prototypes frozen for the first epoch); LARC there, plain SGD here.
        # The paper has no ViT recipe: the ResNet one serves both.
        optim = {"optimizer": "sgd", "lr": 0.6, "weight_decay": 1e-6, "warmup_epochs": 0,
                 "schedule": "cosine", "exclude_bias_norm_wd": False}
        method = {"temperature": 0.1, "prototypes": 100 if small else 3000,
                  "swav_queue_size": 0 if small else 3840, "swav_queue_start": 15}
        # multicropdataset.py: 2 x RRC(224, 0.14-1) + 6 x RRC(96, 0.05-0.14), colour distortion of strength 1 in
        # random order (torchvision ColorJitter), gray 0.2, blur 0.5 on every crop, no solarisation
        augment = {"crop_scale": (0.14, 1.0), "local_crops": 6, "local_crop_scale": (0.05, 0.14),
                   "jitter_p": 0.8, "jitter": (0.8, 0.8, 0.8, 0.2), "jitter_random_order": True,
                   "gray_p": 0.2, "blur_p": (0.5, 0.5), "solarize_p": (0.0, 0.0)}
        return {"optim": optim, "method": method, "augment": augment}

    def check(self, run, data):
        problems = []
        if self.swav_queue_size > data.images:
            problems.append(
                f"method.swav_queue_size (--swav-queue-size): the queue ({self.swav_queue_size} projections per crop) "
                f"is longer than the dataset ({data.images} images), so it would hold projections of the same images "
                f"from older epochs; use at most {data.images}, or 0 to turn it off")
        if self.sinkhorn_epsilon < 0.02:
            problems.append(
                f"method.sinkhorn_epsilon (--sinkhorn-epsilon): {self.sinkhorn_epsilon} is too small for float32 "
                "Sinkhorn-Knopp (exp(-2/ε) underflows and a prototype's mass becomes 0/0); use at least 0.02")
        return problems

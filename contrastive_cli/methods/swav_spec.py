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
        "Number of prototypes K, the clusters the codes assign images to (SwAV: 3000); more than --proj-dim, "
        "so that no projection can score every prototype alike."))
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
        # main_swav.py + scripts/swav_200ep_bs256_pretrain.sh (batch 256): 3000 prototypes, tau 0.1, eps 0.05, 3 Sinkhorn
        # iterations, queue 3840 from epoch 15, prototypes frozen for the first epoch (5005 iterations), wd 1e-6, no
        # warm-up, cosine from lr 0.6 under LARC (LARS here, biases and BN neither adapted nor decayed). Small images
        # (no paper recipe): SGD at 0.1, wd 5e-4, measured (SGD at 0.6 gave a nearly one-dimensional projection;
        # LARS at 0.6 learns too slowly in short runs, docs/distributed.md#lars). The paper has no ViT recipe.
        optim = {"optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4} if small else \
            {"optimizer": "lars", "lr": 0.6, "weight_decay": 1e-6}
        optim |= {"warmup_epochs": 0, "schedule": "cosine", "exclude_bias_norm_wd": False}
        # small: no queue; started early in short runs it disturbed training (measured), and the official start,
        # epoch 15 of 200, is past the end of a short small-data run
        method = {"temperature": 0.1, "prototypes": 3000, "swav_queue_size": 0 if small else 3840,
                  "swav_queue_start": 15}
        # multicropdataset.py: 2 x RRC(224, 0.14-1) + 6 x RRC(96, 0.05-0.14), colour distortion of strength 1 in
        # random order (torchvision ColorJitter), gray 0.2, blur 0.5 on every crop, no solarisation. Small images:
        # 2 local crops of half the side (14 px at 28 px, from a 6-10 px patch); 4 measured no better and cost more.
        augment = {"crop_scale": (0.14, 1.0), "local_crops": 2 if small else 6, "local_crop_scale": (0.05, 0.14),
                   "jitter_p": 0.8, "jitter": (0.8, 0.8, 0.8, 0.2), "jitter_random_order": True,
                   "gray_p": 0.2, "blur_p": (0.5, 0.5), "solarize_p": (0.0, 0.0)}
        return {"optim": optim, "method": method, "augment": augment, "runtime": {"sync_bn": True}}

    def check(self, run, data):
        problems = []
        if self.prototypes <= self.proj_dim:
            # K unit prototypes in a d-dim space leave d - K directions orthogonal to all of them: a projection there
            # scores every prototype 0, predicts the uniform code and sits at the ln K plateau (measured: K 100 < 128
            # kept 40-65 % of z outside the prototypes' span, K 16 collapsed outright)
            problems.append(
                f"method.prototypes (--prototypes): {self.prototypes} prototypes do not span the {self.proj_dim}-dim "
                f"projection, so projections orthogonal to every prototype give every image the uniform code (SwAV's "
                f"collapse at ln K); use more prototypes than --proj-dim (e.g. {10 * self.proj_dim})")
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

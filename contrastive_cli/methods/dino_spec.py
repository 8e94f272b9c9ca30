"""DINO's spec and recipe (Caron et al. 2021); the module is dino.py."""

from typing import ClassVar, Literal, Optional

from pydantic import Field

from .fields import DataFacts, MethodSpec, Momentum, ProjHiddenDim


class DINOSpec(MethodSpec):
    paper, year = "Caron et al. 2021 (DINO)", 2021.04
    name: Literal["dino"] = "dino"
    multi_crop: ClassVar[bool] = True
    out_dim: Optional[int] = Field(None, ge=2, description=(
        "DINO head: width K of the output distribution (the weight-normalised last layer, 256 -> K) [recipe: "
        "65536 on ImageNet, 4096 below 64 px]."))
    proj_hidden_dim: ProjHiddenDim = 2048
    bottleneck_dim: int = Field(256, ge=1, description=(
        "DINO head: width of the L2-normalised bottleneck before the last layer."))
    head_bn: Optional[bool] = Field(None, description=(
        "DINO head: batch norm after its hidden Linear layers [recipe: off (the paper), on below 64 px]."))
    norm_last_layer: bool = Field(True, description=(
        "DINO head: fix the weight-norm gain g of the last layer at 1, so its rows stay unit vectors (off: g is "
        "trained; better for ViT-S in the paper, less stable)."))
    freeze_last_layer: float = Field(1.0, ge=0, description=(
        "Epochs at the start during which the last layer of the DINO head gets no update."))
    student_temp: float = Field(0.1, gt=0, description="Temperature of the student's softmax.")
    teacher_temp: Optional[float] = Field(None, gt=0, description=(
        "Temperature of the teacher's softmax after its warm-up (sharpening: lower than the student's)."))
    warmup_teacher_temp: float = Field(0.04, gt=0, description="Teacher temperature at the start of its warm-up.")
    warmup_teacher_temp_epochs: Optional[int] = Field(None, ge=0, description=(
        "Epochs of the linear teacher-temperature warm-up from --warmup-teacher-temp to --teacher-temp (0: none)."))
    center_momentum: float = Field(0.9, ge=0, lt=1, description=(
        "EMA coefficient of the centre c subtracted from the teacher's output: c <- m c + (1 - m) batch mean."))
    momentum: Momentum = None
    clip_grad: float = Field(3.0, ge=0, description=(
        "Clip each parameter's gradient to this L2 norm before the step (0: off)."))
    centering: bool = Field(True, description=(
        "Ablation: subtract the centre from the teacher's output (off: one dimension comes to dominate, "
        "a collapse to one-hot outputs)."))
    sharpening: bool = Field(True, description=(
        "Ablation: sharpen the teacher with --teacher-temp (off: the teacher's temperature is the student's, "
        "a collapse to uniform outputs)."))

    @staticmethod
    def recipe(small: bool, vit: bool = False) -> dict:
        # facebookresearch/dino main_dino.py defaults (the ViT recipe): AdamW lr 5e-4 x B/256, 10 warm-up epochs,
        # cosine; weight decay cosine 0.04 -> 0.4, none on biases and norms; teacher momentum 0.996 -> 1; teacher
        # temperature 0.04 (the README's longer runs: 0.07 after 30 warm-up epochs); crops 2 x 0.4-1 + 8 x 0.05-0.4.
        # ResNet-50 (README): SGD lr 0.03, weight decay 1e-4 throughout, crops 0.14-1 and 0.05-0.14.
        if vit:
            optim = {"optimizer": "adamw", "lr": 5e-4, "weight_decay": 0.04, "weight_decay_end": 0.4}
        else:
            optim = {"optimizer": "sgd", "lr": 0.03, "weight_decay": 1e-4, "weight_decay_end": 1e-4}
        # the ResNet crops are smaller; below 64 px a 5-14 % crop is 6-12 px, less than a part of the object, so small
        # images keep the default crops
        crops = ({"crop_scale": (0.14, 1.0), "local_crop_scale": (0.05, 0.14)} if not (vit or small) else
                 {"crop_scale": (0.4, 1.0), "local_crop_scale": (0.05, 0.4)})
        optim.update({"warmup_epochs": 10, "schedule": "cosine", "exclude_bias_norm_wd": True})
        # Small images (solo-learn's CIFAR config [S]): K = 4096 prototypes for 10-100 classes of 32 px images.
        # Six local crops instead of eight: each small-image local crop is half the view's side, so six cost
        # about 1.5 global views, which keeps a CPU epoch near BYOL's.
        # BN in the head below 64 px (lightly's CIFAR-10 DINO benchmark [S]): a CNN's pooled post-ReLU features share
        # a large common component, which without BN maps every image to nearly one bottleneck direction; from there
        # the teacher's output is near uniform and the small-CNN runs measured drift into the uniform collapse.
        method = {"out_dim": 4096 if small else 65536, "head_bn": small, "teacher_temp": 0.04,
                  "warmup_teacher_temp_epochs": 0, "momentum": 0.996}
        augment = {**crops, "local_crops": 6 if small else 8, "jitter_p": 0.8, "jitter": (0.4, 0.4, 0.2, 0.1),
                   "jitter_random_order": True, "gray_p": 0.2, "blur_p": (1.0, 0.1), "solarize_p": (0.0, 0.2)}
        return {"optim": optim, "method": method, "augment": augment}

    def check(self, run, data: DataFacts) -> list[str]:
        problems = []
        if self.warmup_teacher_temp_epochs > run.optim.epochs:
            problems.append(f"method.warmup_teacher_temp_epochs (--warmup-teacher-temp-epochs): "
                            f"{self.warmup_teacher_temp_epochs} is longer than the run ({run.optim.epochs} epochs); "
                            f"use at most {run.optim.epochs}")
        return problems

"""Run specs: the single source of truth for defaults, validation, CLI flags and docs.

Every field's description becomes its `--help` text and its line in docs/; a field's CLI flag is
`--field-name` unless `json_schema_extra={"flag": ...}` names another. Fields whose default is
`None` are filled from the method's recipe (methods/<name>.py) once the image size is known, and
the resolved spec is what gets printed, written next to the outputs and embedded in checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional, Union

from pydantic import Field, ValidationError, field_validator, model_validator

from .errors import SpecError
from .methods import SPECS
from .methods.fields import DataFacts, StrictModel

DATASET_NAMES = ("synthetic", "synthetic-colour", "cifar10", "cifar100", "stl10", "mnist", "fashion-mnist", "svhn")
SMALL_IMAGE = 64  # views below this side get the small-image adaptations (CIFAR-style recipes)


def flag(name: str) -> dict:
    return {"flag": name}


class Spec(StrictModel):
    """A spec section: unknown keys, non-finite numbers and yes/no values for numbers are refused (StrictModel)."""


Probability = Annotated[float, Field(ge=0.0, le=1.0)]
ViewProbabilities = tuple[Probability, Probability]


CLASSES = ("Keep only these classes, by name or index, comma-separated (e.g. 0,1,2,3,4 or Sandal,Bag); "
           "labels become 0..k-1 in the order given.")


class DataSpec(Spec):
    source: str = Field("synthetic", json_schema_extra=flag("--data"), description=(
        "Dataset: a folder (ImageFolder layout, an ImageNet-style root with train/ and val/, or a flat "
        "folder of unlabeled images), a torchvision name (cifar10, cifar100, stl10, mnist, fashion-mnist, "
        "svhn), 'synthetic', the embedded procedurally generated dataset, or 'synthetic-colour', its variant with "
        "coloured shapes (for methods whose views are colour channels, such as CMC)."))
    root: Optional[Path] = Field(None, json_schema_extra=flag("--data-root"), description=(
        "Folder holding torchvision datasets [default: ~/.cache/contrastive/datasets]; fashion-mnist is "
        "also found in /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist)."))
    download: bool = Field(False, description="Let torchvision download a named dataset into --data-root.")
    image_size: Optional[int] = Field(None, ge=8, le=1024, description=(
        "Side of the views in pixels [default: the dataset's native size; 224 for folders]."))
    subset: Optional[int] = Field(None, ge=2, description=(
        "Use a seeded random subset of N training images (for quick runs)."))
    strict: bool = Field(False, description=(
        "Stop at the first unreadable image file instead of skipping and counting it."))
    classes: Optional[list[str]] = Field(None, description=CLASSES + " [default: all classes]")

    @field_validator("source")
    @classmethod
    def _not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must name a dataset or a folder")
        return v

    @field_validator("classes", mode="before")
    @classmethod
    def _class_list(cls, v):
        """'0,1,2' (one flag), ['0,1', '2'] (repeated flags) or [0, 1, 2] (a config file) -> ['0', '1', '2']."""
        if v is None:
            return v
        items = [str(part).strip() for item in ([v] if isinstance(v, (str, int)) else v)
                 for part in (item.split(",") if isinstance(item, str) else [item])]
        if not items or not all(items):
            raise ValueError("must list class names or indices, comma-separated (e.g. 0,1,2 or Sandal,Bag)")
        if len(set(items)) < len(items):
            raise ValueError(f"lists a class twice ({', '.join(items)})")
        return items


class AugmentSpec(Spec):
    """Batched view augmentation; unset values come from the method's recipe."""

    crop_scale: Optional[tuple[float, float]] = Field(None, description=(
        "RandomResizedCrop area range (min max) as fractions of the image."))
    crop_ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="RandomResizedCrop aspect-ratio range.")
    flip_p: Probability = Field(0.5, description="Probability of a horizontal flip.")
    jitter_p: Optional[Probability] = Field(None, description="Probability of colour jitter.")
    jitter: Optional[tuple[float, float, float, float]] = Field(None, description=(
        "Colour-jitter strengths: brightness contrast saturation hue."))
    jitter_random_order: Optional[bool] = Field(None, description=(
        "Apply the four jitter operations in a random order per image (SimCLR, BYOL)."))
    gray_p: Optional[Probability] = Field(None, description="Probability of converting a view to grayscale.")
    blur_p: Optional[ViewProbabilities] = Field(None, description=(
        "Probability of Gaussian blur for view 1 and view 2."))
    blur_sigma: tuple[float, float] = Field((0.1, 2.0), description="Gaussian blur sigma range (pixels at 224 px).")
    solarize_p: Optional[ViewProbabilities] = Field(None, description=(
        "Probability of solarization for view 1 and view 2."))
    min_blur_size: int = Field(SMALL_IMAGE, ge=0, description=(
        "Views smaller than this many pixels are never blurred (small-image adaptation)."))
    local_crops: Optional[int] = Field(None, ge=0, description=(
        "Multi-crop (SwAV, DINO): this many small local crops per image besides the two global views, each "
        "--local-crop-size px from --local-crop-scale of the image; the encoder runs the views of one size "
        "together [default: the method's recipe, else 0]."))
    local_crop_size: Optional[int] = Field(None, ge=4, description=(
        "Side of the local crops in pixels [default: 96/224 of the view side (half of it below 64 px), rounded "
        "to a multiple of a ViT's patch size]."))
    local_crop_scale: Optional[tuple[float, float]] = Field(None, description=(
        "RandomResizedCrop area range of the local crops (min max) [default: the recipe's, else 0.05 0.4]."))
    local_blur_p: Probability = Field(0.5, description="Probability of Gaussian blur for the local crops.")

    @model_validator(mode="after")
    def _ranges(self) -> "AugmentSpec":
        if self.crop_scale is not None:
            lo, hi = self.crop_scale
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1 (got {lo} {hi})")
        lo, hi = self.crop_ratio
        if not 0 < lo <= hi:
            raise ValueError(f"crop_ratio must satisfy 0 < min <= max (got {lo} {hi})")
        if self.jitter is not None:
            if min(self.jitter) < 0 or self.jitter[3] > 0.5:
                raise ValueError("jitter strengths must be >= 0 and hue <= 0.5")
        if self.local_crop_scale is not None:
            lo, hi = self.local_crop_scale
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"local_crop_scale must satisfy 0 < min <= max <= 1 (got {lo} {hi})")
        lo, hi = self.blur_sigma
        if not 0 < lo <= hi:
            raise ValueError(f"blur_sigma must satisfy 0 < min <= max (got {lo} {hi})")
        return self


VIT_NAMES = ("vit_tiny", "vit_small", "vit_base")
BACKBONE_NAMES = ("resnet18", "resnet34", "resnet50", "small_cnn", *VIT_NAMES)
TIMM_PREFIX = "timm:"  # --backbone timm:NAME
TORCHVISION_WEIGHTS = {"resnet18": "resnet18", "resnet34": "resnet34", "resnet50": "resnet50",
                       "vit_base": "vit_b_16"}  # --init torchvision: the torchvision model whose weights fit ours
PICKLES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".tar")


class BackboneSpec(Spec):
    name: str = Field("resnet18", json_schema_extra=flag("--backbone"), description=(
        "Encoder: torchvision ResNet-18/34/50, a Vision Transformer (torchvision's VisionTransformer at the "
        "DeiT/DINO sizes: tiny 192 wide, small 384, base 768; 12 blocks; the CLS token is the feature), a "
        "small CNN for fast tests, or timm:NAME, any model of timm (pip install 'contrastive[timm]') without its "
        "classifier, its pooled feature the encoder's; timm models with a patch embedding count as ViTs "
        f"(docs/pretrain.md#timm-models). Choices: {', '.join(BACKBONE_NAMES)}, timm:NAME."))
    stem: Literal["imagenet", "small"] = Field("imagenet", description=(
        "ResNet stem: 'imagenet' (7x7 stride-2 conv + max-pool) or 'small' (3x3 stride-1 conv, no "
        "max-pool, the CIFAR recipe; about 16x the compute at 32 px)."))
    patch_size: Optional[int] = Field(None, ge=1, description=(
        "ViT: side of the square patches in pixels; the view side (and the local crops') must be a multiple "
        "[default: 16 from 64 px up; below, the divisor of the side nearest side/8, e.g. 4 at 28 or 32 px; "
        "a timm ViT keeps its own from 64 px up]."))
    pos_embed: Optional[Literal["learned", "sincos"]] = Field(None, description=(
        "ViT position embeddings: 'learned' (DINO, torchvision) or fixed 2-D 'sincos' (MoCo v3) [default: the "
        "method's recipe, else learned; a timm ViT keeps its own]; interpolated when evaluated at another image "
        "size."))
    depth: Optional[int] = Field(None, ge=1, description=(
        "ViT: number of transformer blocks [default: 12, the named model's; a timm ViT's own]; fewer make a "
        "cheaper model for small data and quick runs."))
    init: Optional[str] = Field(None, description=(
        "Start the backbone from pretrained weights: a .safetensors file (an exported backbone, a run's "
        "checkpoint, or a torchvision or timm state dict; classifier keys fc.*, head.*, heads.* are dropped, any "
        "other key must match), 'torchvision' (torchvision's ImageNet weights of resnet18/34/50 or vit_base) or "
        "'timm' (the timm model's default pretrained weights), both only from the local cache: nothing is "
        "downloaded. Loaded once before the first step (a resumed run continues from its checkpoint) and recorded "
        "in the checkpoint with the file's sha256 [default: random initialisation]."))

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v in BACKBONE_NAMES:
            return v
        if not v.startswith(TIMM_PREFIX):
            raise ValueError(f"unknown backbone; choose one of {', '.join(BACKBONE_NAMES)}, or timm:NAME for a "
                             "timm model")
        if not v.removeprefix(TIMM_PREFIX):
            raise ValueError("timm: needs a model name after it, e.g. timm:resnet50 or timm:vit_small_patch16_224")
        from .models import check_timm_name  # imports timm: only for timm names
        check_timm_name(v.removeprefix(TIMM_PREFIX))
        return v

    @field_validator("init")
    @classmethod
    def _safetensors_only(cls, v: Optional[str]) -> Optional[str]:
        if v is None or v in ("torchvision", "timm"):
            return v
        if not v.strip():
            raise ValueError("must be a .safetensors file, 'torchvision' or 'timm'")
        if v.lower().endswith(PICKLES):  # torch.load of a user's file could run any code in it
            raise ValueError(
                f"{v} is a pickled PyTorch file, and pickles are never loaded (they can run code); convert it once "
                f"to safetensors: python -c \"import torch, safetensors.torch as st; "
                f"st.save_file(torch.load('{v}', weights_only=True), 'w.safetensors')\" and pass --init w.safetensors")
        return v

    @property
    def timm_name(self) -> Optional[str]:
        """NAME of timm:NAME, else None."""
        return self.name.removeprefix(TIMM_PREFIX) if self.name.startswith(TIMM_PREFIX) else None

    @property
    def is_vit(self) -> bool:
        """Our ViTs and timm models with a patch embedding: they get the methods' transformer recipes and
        heads, and a patch size that divides the views."""
        if self.timm_name:
            from .models import timm_facts
            return timm_facts(self.timm_name).vit
        return self.name in VIT_NAMES


def default_patch_size(size: int) -> int:
    """16 px patches for ImageNet-class views; on small views the divisor giving a grid nearest 8x8."""
    if size >= SMALL_IMAGE:
        return 16
    return min((p for p in range(1, size + 1) if size % p == 0), key=lambda p: (abs(p - size / 8), p))


class OptimSpec(Spec):
    epochs: int = Field(100, ge=1, description="Number of epochs.")
    batch_size: int = Field(256, ge=2, description="Images per step (each gives one view per branch).")
    accumulate_steps: int = Field(1, ge=1, description=(
        "Split each step's batch into this many micro-batches, run one after another with their gradients summed "
        "into one optimiser step: the memory of batch/N with the step count, lr and augmentations of the whole "
        "batch. Not the same loss where images meet in the batch: in-batch negatives, batch norm and batch "
        "statistics (Barlow Twins, VICReg, Sinkhorn, DINO's centre) see one micro-batch, queues and banks are fed "
        "per micro-batch; use more processes (torchrun) for those."))
    optimizer: Optional[Literal["sgd", "adamw", "lars"]] = Field(None, description=(
        "Optimiser: SGD with momentum, AdamW, or LARS (SGD with momentum whose step for each weight matrix is "
        "scaled by the trust ratio eta x |w| / |g + wd w|; biases and norm weights are neither adapted nor decayed, "
        "as SimCLR, BYOL and Barlow Twins use it for large batches)."))
    lars_eta: float = Field(0.001, gt=0, le=1, description=(
        "LARS trust coefficient eta (0.001 in SimCLR, BYOL and Barlow Twins; solo-learn uses 0.02 on CIFAR)."))
    lr: Optional[float] = Field(None, gt=0, description=(
        "Learning rate at batch size 256; the rate used is lr x batch_size / 256."))
    weight_decay: Optional[float] = Field(None, ge=0, description="Weight decay.")
    weight_decay_end: Optional[float] = Field(None, ge=0, description=(
        "Weight decay at the end of training, reached by a cosine from --weight-decay, per step (DINO: 0.04 to "
        "0.4) [default: the recipe's, else --weight-decay throughout]."))
    optimizer_momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (AdamW beta1).")
    warmup_epochs: Optional[float] = Field(None, ge=0, description=(
        "Linear warm-up epochs before the schedule (the recipe's value takes at most a tenth of the run)."))
    schedule: Optional[Literal["cosine", "step", "constant"]] = Field(None, description=(
        "Learning-rate schedule after warm-up."))
    milestones: tuple[float, ...] = Field((0.6, 0.8), description=(
        "For the step schedule: fractions of training at which the lr is multiplied by 0.1."))
    exclude_bias_norm_wd: Optional[bool] = Field(None, description=(
        "Exclude biases and normalisation parameters from weight decay."))
    bias_lr_ratio: Optional[float] = Field(None, gt=0, description=(
        "The lr of biases and normalisation parameters as a fraction of --lr, where they are excluded from weight "
        "decay (Barlow Twins: 0.0048 / 0.2) [default: the recipe's, else 1]."))

    @field_validator("milestones")
    @classmethod
    def _fractions(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < m < 1 for m in v) or list(v) != sorted(v):
            raise ValueError("milestones must be increasing fractions between 0 and 1")
        return v


class RuntimeSpec(Spec):
    device: str = Field("auto", description="'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:N' or 'mps'.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description=(
        "Seed for initialisation, data order and augmentation (0 to 2^32 - 1, as NumPy's)."))
    workers: Optional[int] = Field(None, ge=0, description=(
        "Data-loader worker processes for folder datasets [default: min(4, CPU cores)]."))
    amp: Optional[bool] = Field(None, description="Mixed precision (bf16) on CUDA [default: on for CUDA; no effect on CPU].")
    out: Optional[Path] = Field(None, description="Run directory [default: runs/<method>-<backbone>-<data>].")
    checkpoint_every: int = Field(10, ge=1, description="Write a checkpoint every N epochs (and at the end).")
    sync_bn: Optional[bool] = Field(None, description=(
        "Under torchrun: batch norm over the global batch of all processes (SyncBatchNorm) instead of each "
        "process's share [default: recipe: on for SimCLR, BYOL, SwAV and MoCo v3 on a ResNet, as their papers; "
        "no effect on one process]."))
    gather: bool = Field(True, description=(
        "Under torchrun: losses see the global batch, as in the papers (in-batch negatives gathered from every "
        "process, MoCo keys gathered before the queue, batch statistics of a loss reduced); --no-gather leaves "
        "each process's loss to its own share, an ablation (docs/distributed.md)."))
    log: list[Literal["tensorboard", "wandb", "mlflow"]] = Field([], description=(
        "Also send the records of metrics.jsonl to a tracker: 'tensorboard' (event files in <run>/tensorboard), "
        "'wandb' (offline with WANDB_MODE=offline) or 'mlflow' (a SQLite store <run>/mlflow.db unless "
        "--mlflow-uri); repeat the flag for several. A resumed run continues the same tracker run "
        "(docs/pretrain.md#trackers)."))
    wandb_project: str = Field("contrastive", description="--log wandb: the W&B project.")
    mlflow_uri: Optional[str] = Field(None, description=(
        "--log mlflow: the tracking URI (a server, or sqlite:///PATH) [default: sqlite:///<run>/mlflow.db]."))
    benchmark: Optional[int] = Field(None, ge=1, json_schema_extra=flag("--benchmark"), description=(
        "Measure instead of training: after warm-up, time STEPS training steps and STEPS model-only steps "
        "(forward, backward and optimiser step of the same networks on one batch of views already augmented "
        "and on the device), alternating in blocks, and print both throughputs, their ratio, the shares of "
        "data wait and augmentation, and peak memory. Nothing is written (see docs/performance.md)."))

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu", "cuda", "mps") and not (v.startswith("cuda:") and v[5:].isdigit()):
            raise ValueError("must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
        return v


class CollapseThresholds(Spec):
    """When embeddings count as collapsed (docs/inspect-collapse.md); shared by inspect-collapse and the monitor."""

    min_spread: float = Field(0.02, gt=0, le=1, description=(
        "Complete collapse below this spread, 1 - |mean of z/|z||^2 (0: every image has the same embedding, "
        "1: evenly spread)."))
    min_rank_share: float = Field(0.027, gt=0, le=1, description=(
        "Dimensional collapse below this effective rank (RankMe), as a fraction of min(images, d)."))
    max_entropy_share: float = Field(0.95, gt=0, le=1, description=(
        "Outputs that are probability distributions over K (DINO's teacher): complete collapse to uniform above "
        "this mean entropy, as a fraction of log K."))
    min_marginal_share: float = Field(0.25, ge=0, lt=1, description=(
        "Outputs that are probability distributions over K: complete collapse to one-hot on the same outputs below "
        "this entropy of the mean distribution, as a fraction of log K."))


class MonitorSpec(CollapseThresholds):
    images: int = Field(2048, ge=0, json_schema_extra=flag("--monitor-images"), description=(
        "Collapse monitor: every epoch, the std of normalised embeddings and the effective rank of the backbone "
        "and projector outputs on a fixed batch of this many images (0: off)."))
    patience: int = Field(2, ge=1, json_schema_extra=flag("--collapse-patience"), description=(
        "Collapse monitor: warn (and stop, with --stop-on-collapse) once the embeddings have been below the "
        "thresholds for this many epochs in a row; a single early dip is logged but not alarmed."))
    stop_on_collapse: bool = Field(False, description=(
        "End the run, with a checkpoint, when the monitor sees collapse (exit code 4)."))
    eval_every: Optional[int] = Field(None, ge=0, description=(
        "Online evaluation: weighted kNN of the encoder every this many epochs (and after the last), on fixed "
        "subsets of the data's labelled train split (bank) and test split (queries); 0: off [default: every epoch "
        "when the data has labelled train and test splits and the subsets, sized to cost about 5% of an epoch, "
        "hold at least 500 bank images; else off]."))
    knn_bank: Optional[int] = Field(None, ge=1, description=(
        "Online kNN: bank images from the train split [default: sized to about 5% of an epoch, at most 10000]."))
    knn_queries: Optional[int] = Field(None, ge=1, description=(
        "Online kNN: query images from the test split [default: a quarter of the bank, at most 2000]."))
    knn_k: tuple[int, ...] = Field((20, 200), min_length=1, description="Online kNN: neighbours voting (each k).")
    knn_temperature: float = Field(0.1, gt=0, description="Online kNN: temperature T of the vote weights exp(s/T).")


# ---- methods: each method's spec lives beside its module (methods/<name>_spec.py), found by the registry ----

METHOD_SPECS = SPECS
MethodSpec = Annotated[Union[tuple(SPECS.values())], Field(discriminator="name")]


class PretrainSpec(Spec):
    kind: Literal["pretrain"] = "pretrain"
    method: MethodSpec = Field(default_factory=lambda: SPECS["mocov2"]())
    data: DataSpec = Field(default_factory=DataSpec)
    backbone: BackboneSpec = Field(default_factory=BackboneSpec)
    augment: AugmentSpec = Field(default_factory=AugmentSpec)
    optim: OptimSpec = Field(default_factory=OptimSpec)
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec)
    monitor: MonitorSpec = Field(default_factory=MonitorSpec)


class PlotSpec(Spec):
    kind: Literal["plot"] = "plot"
    runs: list[Path] = Field(..., min_length=1, description=(
        "Run directories (or their metrics.jsonl files); several are overlaid in one colour each."))
    out: Optional[Path] = Field(None, json_schema_extra={"section": "Output"}, description=(
        "PNG to write [default: <run>/curves.png for one run, ./curves.png for several]."))


class EvalRuntimeSpec(Spec):
    device: str = RuntimeSpec.model_fields["device"]
    seed: int = RuntimeSpec.model_fields["seed"]
    workers: Optional[int] = RuntimeSpec.model_fields["workers"]
    batch_size: int = Field(512, ge=1, json_schema_extra=flag("--feature-batch-size"), description=(
        "Images per forward pass when computing features."))

    _device = field_validator("device")(RuntimeSpec._device.__func__)


class EvalDataSpec(DataSpec):
    source: Optional[str] = Field(None, json_schema_extra=flag("--data"), description=(
        "Labeled dataset to evaluate on [default: the checkpoint's pretraining data]; same forms as "
        "pretrain's --data."))
    subset: Optional[int] = Field(None, ge=2, description=(
        "Use a seeded random subset of N training (bank) images."))
    test_subset: Optional[int] = Field(None, ge=1, description="Use a seeded random subset of N test images.")
    classes: Optional[list[str]] = Field(None, description=CLASSES + (
        " [default: the checkpoint's classes when --data is not given, else all classes]"))
    image_size: Optional[int] = Field(None, ge=8, le=1024, description=(
        "Side of the views in pixels [default: the checkpoint's image size]."))

    @field_validator("source")
    @classmethod
    def _not_empty(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not v.strip():
            raise ValueError("must name a dataset or a folder")
        return v


class KnnSpec(Spec):
    kind: Literal["knn-eval"] = "knn-eval"
    checkpoint: Path = Field(..., description="Pretrain or transfer checkpoint (.safetensors).")
    data: EvalDataSpec = Field(default_factory=EvalDataSpec)
    k: list[Annotated[int, Field(ge=1)]] = Field([200], description=(
        "Number of neighbours; repeat the flag to evaluate several k at once."))
    temperature: float = Field(0.1, gt=0, json_schema_extra=flag("--temperature"), description=(
        "Temperature T of the vote weights exp(similarity / T)."))
    runtime: EvalRuntimeSpec = Field(default_factory=EvalRuntimeSpec)


class InspectDataSpec(EvalDataSpec):
    subset: Optional[int] = Field(2048, ge=2, json_schema_extra=flag("--images"), description=(
        "Number of images inspected (a seeded random subset of the test split, or of the whole dataset when it "
        "has none); all of them when there are fewer."))
    test_subset: Optional[int] = Field(None, exclude=True, json_schema_extra={"flag": None})
    image_size: Optional[int] = Field(None, exclude=True, json_schema_extra={"flag": None})  # views: the checkpoint's


class InspectSpec(Spec):
    kind: Literal["inspect-collapse"] = "inspect-collapse"
    checkpoint: Path = Field(..., description="Checkpoint (.safetensors).")
    data: InspectDataSpec = Field(default_factory=InspectDataSpec)
    thresholds: CollapseThresholds = Field(default_factory=CollapseThresholds)
    fail_on_collapse: bool = Field(False, description="Exit with code 1 when any representation collapsed.")
    report: Optional[Path] = Field(None, description=(
        "Where to write the JSON report; the spectrum plot goes next to it as .png "
        "[default: <checkpoint>.collapse.json]."))
    force: bool = Field(False, description=(
        "Replace an output that is another run's checkpoint (never the input checkpoint itself)."))
    runtime: EvalRuntimeSpec = Field(default_factory=EvalRuntimeSpec)


class ProbeOptimSpec(OptimSpec):
    """MoCo v1/v2 linear classification protocol."""
    epochs: int = Field(100, ge=1, description="Number of epochs.")
    batch_size: int = Field(256, ge=2, description="Images per step of the classifier.")
    optimizer: Literal["sgd", "adamw"] = Field("sgd", description="Optimiser.")
    lr: float = Field(30.0, gt=0, description="Learning rate at batch size 256; the rate used is lr x batch_size / 256.")
    weight_decay: float = Field(0.0, ge=0, description="Weight decay.")
    weight_decay_end: Optional[float] = Field(None, exclude=True, json_schema_extra={"flag": None})  # pretrain only
    warmup_epochs: float = Field(0.0, ge=0, description="Linear warm-up epochs before the schedule.")
    schedule: Literal["cosine", "step", "constant"] = Field("step", description="Learning-rate schedule after warm-up.")
    exclude_bias_norm_wd: bool = Field(False, description="Exclude the classifier bias from weight decay.")


class LinearProbeSpec(Spec):
    kind: Literal["linear-probe"] = "linear-probe"
    checkpoint: Path = Field(..., description="Pretrain or transfer checkpoint (.safetensors).")
    data: EvalDataSpec = Field(default_factory=EvalDataSpec)
    optim: ProbeOptimSpec = Field(default_factory=ProbeOptimSpec)
    crop_scale: tuple[float, float] = Field((0.08, 1.0), description=(
        "RandomResizedCrop area range of the training views (MoCo protocol)."))
    cached: bool = Field(False, description=(
        "Fast path: compute features of the centre view once and train the classifier on them "
        "(no augmentation)."))
    out: Optional[Path] = Field(None, description="Where to write the probe [default: next to the checkpoint].")
    force: bool = Field(False, description=(
        "Replace an output that is another run's checkpoint (never the input checkpoint itself)."))
    runtime: EvalRuntimeSpec = Field(default_factory=EvalRuntimeSpec)

    @model_validator(mode="after")
    def _crop_range(self) -> "LinearProbeSpec":
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1 (got {lo} {hi})")
        return self


class ExportDataSpec(DataSpec):
    source: Optional[str] = Field(None, json_schema_extra=flag("--data"), description=(
        "With --embeddings: the dataset to compute features of [default: the checkpoint's pretraining data]; "
        "same forms as pretrain's --data. Unlabeled folders are fine."))
    split: Literal["train", "test"] = Field("train", description=(
        "With --embeddings: which split of --data to compute features of."))
    subset: Optional[int] = Field(None, ge=1, description=(
        "With --embeddings: a seeded random subset of N images of the split."))
    image_size: Optional[int] = Field(None, ge=8, le=1024, description=(
        "With --embeddings: side of the centre view in pixels [default: the checkpoint's image size]."))

    _not_empty = field_validator("source")(EvalDataSpec._not_empty.__func__)


EXPORT_FORMATS = ("safetensors", "torchscript", "onnx", "csv")
EXPORT = {"section": "Export"}  # the --help panel and docs section of the export options


class ExportSpec(Spec):
    kind: Literal["export"] = "export"
    checkpoint: Path = Field(..., description="Checkpoint (.safetensors) whose backbone is exported.")
    format: Literal[EXPORT_FORMATS] = Field("safetensors", json_schema_extra=EXPORT, description=(
        "Backbone: 'safetensors' (weights with torchvision key names, timm's for timm:NAME backbones, loadable "
        "with strict=True), 'torchscript' or 'onnx' (dynamic batch axis). With --embeddings: 'safetensors' or "
        "'csv'."))
    embeddings: bool = Field(False, json_schema_extra=EXPORT, description=(
        "Write the backbone features of a dataset (--data, --split) instead of the backbone."))
    out: Optional[Path] = Field(None, json_schema_extra=EXPORT, description=(
        "Output file [default: next to the checkpoint: <stem>.backbone.safetensors, <stem>.torchscript.pt, "
        "<stem>.onnx, or <stem>.embeddings.<split>.safetensors / .csv]."))
    map: Optional[Literal["tsne", "umap"]] = Field(None, json_schema_extra=EXPORT, description=(
        "With --embeddings: also draw the embeddings (L2-normalised) in 2-D, one colour per label with the class "
        "names in the legend, as a PNG next to the embeddings file: 'tsne' (scikit-learn's t-SNE) or 'umap' "
        "(umap-learn), both seeded with --seed; needs pip install 'contrastive[map]'."))
    map_out: Optional[Path] = Field(None, json_schema_extra=EXPORT, description=(
        "Where to write the --map PNG [default: <out stem>.map.png, next to the embeddings file]."))
    data: ExportDataSpec = Field(default_factory=ExportDataSpec)
    force: bool = Field(False, description=(
        "Replace an output that is another run's checkpoint (never the input checkpoint itself)."))
    runtime: EvalRuntimeSpec = Field(default_factory=EvalRuntimeSpec)

    @model_validator(mode="after")
    def _format_fits(self) -> "ExportSpec":
        if self.embeddings and self.format not in ("safetensors", "csv"):
            raise ValueError(f"--embeddings writes 'safetensors' or 'csv', not {self.format!r}; "
                             "drop --format or pass one of those")
        if not self.embeddings and self.format == "csv":
            raise ValueError("--format csv is for --embeddings; a backbone exports as safetensors, torchscript or onnx")
        if not self.embeddings and self.data.model_fields_set:
            flags = sorted({"source": "--data", "root": "--data-root"}.get(k, "--" + k.replace("_", "-"))
                           for k in self.data.model_fields_set)
            raise ValueError(f"{', '.join(flags)} {'applies' if len(flags) == 1 else 'apply'} only to --embeddings; "
                             "add --embeddings or drop them")
        if self.map and not self.embeddings:
            raise ValueError(f"--map {self.map} draws a map of dataset embeddings; add --embeddings or drop --map")
        if self.map_out is not None and not self.map:
            raise ValueError("--map-out names the file of the embeddings map; add --map tsne or --map umap")
        if self.map_out is not None and self.map_out.suffix.lower() != ".png":
            raise ValueError(f"--map-out {self.map_out} must be a .png file")
        if self.map_out is not None and self.out is not None and self.map_out == self.out:
            raise ValueError("--map-out and --out name the same file; give the map another name")
        return self


TRANSFER_MIN_STEPS = 300  # default fine-tuning length for small (few-shot) training sets


class TransferDataSpec(EvalDataSpec):
    source: Optional[str] = Field(None, json_schema_extra=flag("--data"), description=(
        "Labeled target dataset to fine-tune and test on [default: the checkpoint's data]; same forms as "
        "pretrain's --data."))
    subset: Optional[int] = Field(None, ge=2, description="Train on a seeded random subset of N training images.")


class TransferOptimSpec(OptimSpec):
    """Fine-tuning: SGD momentum 0.9, cosine schedule, the backbone at a fraction of the head's lr."""
    epochs: Optional[int] = Field(None, ge=1, description=(
        "Number of epochs, the same for the scratch baseline [default: the fewest that make at least "
        f"{TRANSFER_MIN_STEPS} steps, so a few-shot set gets as many updates as a large one gets in an epoch]."))
    batch_size: int = Field(64, ge=2, description=(
        "Images per step; a training set smaller than this is one batch."))
    optimizer: Literal["sgd", "adamw"] = Field("sgd", description="Optimiser.")
    lr: float = Field(0.5, gt=0, description=(
        "Head learning rate at batch size 256; the rate used is lr x batch_size / 256."))
    weight_decay: float = Field(5e-4, ge=0, description="Weight decay (backbone and head).")
    weight_decay_end: Optional[float] = Field(None, exclude=True, json_schema_extra={"flag": None})  # pretrain only
    warmup_epochs: float = Field(0.0, ge=0, description="Linear warm-up epochs before the schedule.")
    schedule: Literal["cosine", "step", "constant"] = Field("cosine", description="Learning-rate schedule after warm-up.")
    exclude_bias_norm_wd: bool = Field(False, description="Exclude biases and normalisation parameters from weight decay.")
    backbone_lr_scale: float = Field(0.1, gt=0, description=(
        "The pretrained backbone's learning rate as a fraction of the head's, so fine-tuning adjusts the "
        "representation instead of overwriting it (the scratch baseline trains every layer at the full rate)."))


class TransferSpec(Spec):
    kind: Literal["transfer"] = "transfer"
    checkpoint: Path = Field(..., description="Pretraining (or transfer) checkpoint (.safetensors).")
    data: TransferDataSpec = Field(default_factory=TransferDataSpec)
    shots: Optional[int] = Field(None, ge=1, description=(
        "Train on K labeled images per class, drawn with --seed (the same seed gives the same images) "
        "[default: the whole train split]."))
    freeze: bool = Field(False, description=(
        "Train only a linear head on the frozen backbone (eval mode, BN statistics frozen) instead of "
        "fine-tuning every layer."))
    baseline: Optional[Literal["scratch"]] = Field(None, description=(
        "Also train the same model from random initialisation with the same budget (epochs, steps, data, "
        "augmentation, schedule; every layer at the full lr) and report the gain of pretraining."))
    crop_scale: tuple[float, float] = Field((0.2, 1.0), description=(
        "RandomResizedCrop area range of the training views (plus a horizontal flip)."))
    out: Optional[Path] = Field(None, description=(
        "Where to write the fine-tuned model [default: next to the checkpoint, "
        "<name>.transfer-<target>.safetensors]."))
    optim: TransferOptimSpec = Field(default_factory=TransferOptimSpec)
    force: bool = Field(False, description=(
        "Replace an output that is another run's checkpoint (never the input checkpoint itself)."))
    runtime: EvalRuntimeSpec = Field(default_factory=EvalRuntimeSpec)

    @model_validator(mode="after")
    def _checks(self) -> "TransferSpec":
        if self.shots is not None and self.data.subset is not None:
            raise ValueError("--shots and --subset both choose the training images; pass only one")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1 (got {lo} {hi})")
        return self


class NeighboursDataSpec(DataSpec):
    source: Optional[str] = Field(None, json_schema_extra=flag("--gallery"), description=(
        "The images to search: a folder (flat, class subfolders or an ImageNet-style root) or a named dataset "
        "(synthetic, fashion-mnist, cifar10, ...) [default: the checkpoint's own data]."))
    split: Literal["all", "train", "test"] = Field("all", description=(
        "Which split of --gallery to search: 'all' (every image: both splits of a named dataset, every file of a "
        "folder), 'train' or 'test' (docs/data.md#splits)."))
    subset: Optional[int] = Field(None, ge=1, description="Search a seeded random subset of N gallery images.")
    classes: Optional[list[str]] = Field(None, description=CLASSES + (
        " [default: the checkpoint's classes when --gallery is not given, else all classes]"))
    image_size: Optional[int] = Field(None, exclude=True, json_schema_extra={"flag": None})  # the checkpoint's

    _not_empty = field_validator("source")(EvalDataSpec._not_empty.__func__)


NEIGHBOURS = {"section": "Neighbours"}  # the --help panel and docs section of the neighbours options


class NeighboursSpec(Spec):
    kind: Literal["neighbours"] = "neighbours"
    checkpoint: Path = Field(..., description="Pretrain or transfer checkpoint (.safetensors) whose encoder embeds.")
    query: Path = Field(..., json_schema_extra=NEIGHBOURS, description=(
        "The query: an image file, or a folder of images (every image below it, in sorted order)."))
    k: int = Field(5, ge=1, json_schema_extra={**NEIGHBOURS, "aliases": ["-k"]}, description=(
        "Number of neighbours shown for each query, most similar first."))
    sheet: Optional[Path] = Field(None, json_schema_extra=NEIGHBOURS, description=(
        "Also write a contact sheet PNG: one row per query, the query then its k neighbours, each captioned "
        "with its cosine similarity and class."))
    data: NeighboursDataSpec = Field(default_factory=NeighboursDataSpec)
    runtime: EvalRuntimeSpec = Field(default_factory=EvalRuntimeSpec)

    @model_validator(mode="after")
    def _png(self) -> "NeighboursSpec":
        if self.sheet is not None and self.sheet.suffix.lower() != ".png":
            raise ValueError(f"--sheet {self.sheet} must be a .png file")
        return self


def format_validation_error(err: ValidationError, flag_of: dict[tuple, str] | None = None) -> list[str]:
    """One line per problem: 'optim.lr (--lr): Input should be greater than 0 (got -1)'."""
    lines = []
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"] if not (isinstance(p, str) and p in METHOD_SPECS and
                                                     len(e["loc"]) > 1 and e["loc"][0] == "method"))
        path = ".".join(loc) or "spec"
        field = loc[:-1] if loc and loc[-1].isdigit() else loc  # augment.jitter.0: the first value of --jitter
        where = f"{path} ({flag_of[field]})" if flag_of and field in flag_of else path
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "union_tag_invalid":
            where = f"{path} (--method)" if path == "method" else where
            msg = f"unknown method {e['ctx']['tag']!r}; choose one of {e['ctx']['expected_tags']}"
            lines.append(f"{where}: {msg}")
            continue
        got = e.get("input")
        shown = "" if isinstance(got, (dict, list)) or got is None or e["type"] in ("missing",) else f" (got {got!r})"
        lines.append(f"{where}: {msg}{shown}")
    return lines


def validate(model: type[Spec], data: dict, flag_of: dict[tuple, str] | None = None) -> Spec:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_validation_error(err, flag_of)) from None


def resolve_pretrain(spec: PretrainSpec, image_size: int, n_images: int, channels: int = 3) -> PretrainSpec:
    """Fill the None fields from the method's recipe (small-image variant below SMALL_IMAGE px, ViT variant for
    ViT backbones) and check what needs the data: the result is the concrete spec that is printed, saved and
    embedded in checkpoints."""
    recipe = type(spec.method).recipe(small=image_size < SMALL_IMAGE, vit=spec.backbone.is_vit)
    for section, values in type(spec.method).sized_recipe(image_size).items():
        recipe.setdefault(section, {}).update(values)
    data = spec.model_dump()
    data["data"]["image_size"] = image_size
    for section in ("method", "optim", "augment", "backbone", "runtime"):
        for key, value in recipe.get(section, {}).items():
            if data[section].get(key) is None:
                data[section][key] = value
    optim, augment, backbone = data["optim"], data["augment"], data["backbone"]
    if spec.optim.warmup_epochs is None:  # the recipe's warm-up (10 of 100+ epochs) takes at most a tenth of a short run
        optim["warmup_epochs"] = min(optim["warmup_epochs"], optim["epochs"] / 10)
    if spec.backbone.timm_name and spec.backbone.is_vit:  # its own positions and depth, not the recipe's
        backbone["patch_size"] = backbone["patch_size"] or timm_patch_size(spec.backbone.timm_name, image_size)
        backbone["pos_embed"] = spec.backbone.pos_embed
    elif spec.backbone.is_vit:
        backbone["patch_size"] = backbone["patch_size"] or default_patch_size(image_size)
        backbone["pos_embed"] = backbone["pos_embed"] or "learned"
        backbone["depth"] = backbone["depth"] or 12
    if optim["weight_decay_end"] is None:
        optim["weight_decay_end"] = optim["weight_decay"]
    optim["bias_lr_ratio"] = optim["bias_lr_ratio"] or 1.0
    augment["local_crops"] = augment["local_crops"] or 0
    data["runtime"]["sync_bn"] = bool(data["runtime"]["sync_bn"])  # off unless the recipe or the flag turns it on
    augment["local_crop_scale"] = augment["local_crop_scale"] or (0.05, 0.4)
    if augment["local_crop_size"] is None:
        side = image_size // 2 if image_size < SMALL_IMAGE else round(image_size * 96 / 224)
        patch = backbone["patch_size"] or 1
        augment["local_crop_size"] = max(patch, side // patch * patch)
    resolved = validate(PretrainSpec, data)
    problems = resolved.method.check(resolved, DataFacts(n_images, channels)) + generic_problems(resolved, n_images)
    if problems:
        raise SpecError(problems)
    return resolved


def generic_problems(s: PretrainSpec, n_images: int) -> list[str]:
    """What no single method owns: batch and warm-up against the data and the run, multi-crop, ViT geometry."""
    problems = []
    if s.optim.batch_size > n_images:
        problems.append(f"optim.batch_size (--batch-size): {s.optim.batch_size} is larger than the "
                        f"{n_images} training images; use a smaller batch size or more data")
    if s.optim.warmup_epochs >= s.optim.epochs:
        problems.append(f"optim.warmup_epochs (--warmup-epochs): {s.optim.warmup_epochs} must be "
                        f"shorter than the run ({s.optim.epochs} epochs)")
    if s.augment.local_crops and not type(s.method).multi_crop:
        users = ", ".join(name for name, m in SPECS.items() if m.multi_crop) or "none yet"
        problems.append(f"augment.local_crops (--local-crops): {s.method.name} takes two views and has no use for "
                        f"local crops (multi-crop methods: {users}); drop --local-crops")
    b = s.backbone
    if (b.is_vit or b.timm_name) and not type(s.method).vit_backbone:
        problems.append(f"backbone.name (--backbone): {s.method.name} builds a convolutional encoder of its own and "
                        f"cannot use {'a timm model' if b.timm_name else 'a Vision Transformer'}; choose "
                        "resnet18/34/50 or small_cnn")
    if b.timm_name:
        problems += timm_problems(b)
    problems += init_problems(s)
    if b.is_vit:
        sides = {"data.image_size (--image-size)": s.data.image_size}
        if s.augment.local_crops:
            sides["augment.local_crop_size (--local-crop-size)"] = s.augment.local_crop_size
        for where, side in sides.items():
            if b.patch_size and side % b.patch_size:
                problems.append(f"{where}: {side} px is not a multiple of the ViT patch size ({b.patch_size} px); "
                                f"choose a side or a --patch-size that divides it")
        if "stem" in b.model_fields_set and b.stem != "imagenet":
            problems.append("backbone.stem (--stem): the stem is a ResNet option; a ViT's input layer is set by "
                            "--patch-size")
    else:
        if b.name == "small_cnn" and b.stem != "imagenet":
            problems.append("backbone.stem (--stem): the stem is a ResNet option; the small CNN has one input layer "
                            "for every image size; drop --stem or choose a resnet* backbone")
        for field in ("patch_size", "pos_embed", "depth"):
            if getattr(b, field) is not None:
                problems.append(f"backbone.{field} (--{field.replace('_', '-')}): a ViT option, but the backbone is "
                                f"{b.name}; drop it or choose a vit_* backbone")
    return problems


def timm_patch_size(name: str, image_size: int) -> Optional[int]:
    """A timm ViT's default patch: ours (default_patch_size) on small views, where its own 14 or 16 px would leave
    a grid of a few patches, if it takes a patch_size; its own otherwise."""
    from .models import timm_facts
    facts = timm_facts(name)
    return default_patch_size(image_size) if image_size < SMALL_IMAGE and "patch_size" in facts.takes \
        else facts.patch_size


def timm_problems(b: BackboneSpec) -> list[str]:
    """Our options that a timm model has no constructor argument for."""
    from .models import timm_facts
    facts, problems = timm_facts(b.timm_name), []
    if not facts.vit and b.stem != "imagenet":
        problems.append(f"backbone.stem (--stem): the stem is an option of the torchvision ResNets; {b.name} keeps "
                        "its own; drop --stem")
    if facts.vit and b.pos_embed is not None:
        problems.append(f"backbone.pos_embed (--pos-embed): {b.name} keeps its own position embeddings; drop "
                        "--pos-embed")
    for field, given in (("patch_size", b.patch_size != facts.patch_size), ("depth", b.depth is not None)):
        if facts.vit and given and field not in facts.takes:
            problems.append(f"backbone.{field} (--{field.replace('_', '-')}): {b.name} takes no {field} argument; "
                            f"drop --{field.replace('_', '-')} or choose a timm model that does (e.g. a vit_*)")
    return problems


def init_problems(s: PretrainSpec) -> list[str]:
    """--init against the backbone and the method (the file itself is read when the run is built)."""
    b, where = s.backbone, "backbone.init (--init)"
    if b.init is None:
        return []
    if not type(s.method).vit_backbone:
        return [f"{where}: {s.method.name} builds an encoder of its own, which no pretrained weights fit; drop --init"]
    if b.init == "torchvision" and b.name not in TORCHVISION_WEIGHTS:
        return [f"{where}: torchvision has pretrained weights for {', '.join(TORCHVISION_WEIGHTS)}, not {b.name}; "
                "pass a weights file (--init PATH.safetensors)" + (" or --init timm" if b.timm_name else "")]
    if b.init == "timm" and not b.timm_name:
        return [f"{where}: 'timm' loads a timm model's pretrained weights, but the backbone is {b.name}; use "
                "--backbone timm:NAME" + (", or --init torchvision" if b.name in TORCHVISION_WEIGHTS else "")
                + ", or pass a weights file (--init PATH.safetensors)"]
    return []

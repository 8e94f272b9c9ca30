"""Run specs: the single source of truth for defaults, validation, CLI flags and docs.

Every field's description becomes its `--help` text and its line in docs/; a field's CLI flag is
`--field-name` unless `json_schema_extra={"flag": ...}` names another. Fields whose default is
`None` are filled from the method's recipe (methods/<name>.py) once the image size is known, and
the resolved spec is what gets printed, written next to the outputs and embedded in checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import SpecError

DATASET_NAMES = ("synthetic", "cifar10", "cifar100", "stl10", "mnist", "fashion-mnist", "svhn")
SMALL_IMAGE = 64  # views below this side get the small-image adaptations (CIFAR-style recipes)


def flag(name: str) -> dict:
    return {"flag": name}


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


Probability = Annotated[float, Field(ge=0.0, le=1.0)]
ViewProbabilities = tuple[Probability, Probability]


class DataSpec(Spec):
    source: str = Field("synthetic", json_schema_extra=flag("--data"), description=(
        "Dataset: a folder (ImageFolder layout, an ImageNet-style root with train/ and val/, or a flat "
        "folder of unlabeled images), a torchvision name (cifar10, cifar100, stl10, mnist, fashion-mnist, "
        "svhn) or 'synthetic', the embedded procedurally generated dataset."))
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

    @field_validator("source")
    @classmethod
    def _not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must name a dataset or a folder")
        return v


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
        lo, hi = self.blur_sigma
        if not 0 < lo <= hi:
            raise ValueError(f"blur_sigma must satisfy 0 < min <= max (got {lo} {hi})")
        return self


class BackboneSpec(Spec):
    name: Literal["resnet18", "resnet34", "resnet50", "small_cnn"] = Field(
        "resnet18", json_schema_extra=flag("--backbone"), description=(
            "Encoder: torchvision ResNet-18/34/50, or a small CNN for fast tests."))
    stem: Literal["imagenet", "small"] = Field("imagenet", description=(
        "ResNet stem: 'imagenet' (7x7 stride-2 conv + max-pool) or 'small' (3x3 stride-1 conv, no "
        "max-pool, the CIFAR recipe; about 16x the compute at 32 px)."))


class OptimSpec(Spec):
    epochs: int = Field(100, ge=1, description="Number of epochs.")
    batch_size: int = Field(256, ge=2, description="Images per step (each gives one view per branch).")
    optimizer: Optional[Literal["sgd", "adamw"]] = Field(None, description="Optimiser.")
    lr: Optional[float] = Field(None, gt=0, description=(
        "Learning rate at batch size 256; the rate used is lr x batch_size / 256."))
    weight_decay: Optional[float] = Field(None, ge=0, description="Weight decay.")
    optimizer_momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (AdamW beta1).")
    warmup_epochs: Optional[float] = Field(None, ge=0, description=(
        "Linear warm-up epochs before the schedule (the recipe's value takes at most a tenth of the run)."))
    schedule: Optional[Literal["cosine", "step", "constant"]] = Field(None, description=(
        "Learning-rate schedule after warm-up."))
    milestones: tuple[float, ...] = Field((0.6, 0.8), description=(
        "For the step schedule: fractions of training at which the lr is multiplied by 0.1."))
    exclude_bias_norm_wd: Optional[bool] = Field(None, description=(
        "Exclude biases and normalisation parameters from weight decay."))

    @field_validator("milestones")
    @classmethod
    def _fractions(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < m < 1 for m in v) or list(v) != sorted(v):
            raise ValueError("milestones must be increasing fractions between 0 and 1")
        return v


class RuntimeSpec(Spec):
    device: str = Field("auto", description="'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:N' or 'mps'.")
    seed: int = Field(0, ge=0, description="Seed for initialisation, data order and augmentation.")
    workers: Optional[int] = Field(None, ge=0, description=(
        "Data-loader worker processes for folder datasets [default: min(4, CPU cores)]."))
    amp: Optional[bool] = Field(None, description="Mixed precision (bf16) on CUDA [default: on for CUDA; no effect on CPU].")
    out: Optional[Path] = Field(None, description="Run directory [default: runs/<method>-<backbone>-<data>].")
    checkpoint_every: int = Field(10, ge=1, description="Write a checkpoint every N epochs (and at the end).")
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


# ---- methods: one sub-spec each, fields default to None where the recipe depends on image size ----

Temperature = Annotated[float, Field(gt=0)]
TEMPERATURE = "Softmax temperature of the contrastive loss."
Dim = Annotated[int, Field(ge=1)]


class SimCLRSpec(Spec):
    name: Literal["simclr"] = "simclr"
    temperature: Optional[Temperature] = Field(None, description=TEMPERATURE)
    proj_hidden_dim: Dim = Field(2048, description="Hidden width of the projector MLP.")
    proj_dim: Dim = Field(128, description="Output width of the projector (the embedding).")


class MoCoV2Spec(Spec):
    name: Literal["mocov2"] = "mocov2"
    temperature: Optional[Temperature] = Field(None, description=TEMPERATURE)
    proj_hidden_dim: Dim = Field(2048, description="Hidden width of the projector MLP.")
    proj_dim: Dim = Field(128, description="Output width of the projector (the embedding).")
    queue_size: Optional[int] = Field(None, ge=1, description=(
        "MoCo: number of negative keys in the queue (a multiple of the batch size)."))
    momentum: Optional[float] = Field(None, ge=0, le=1, description=(
        "Momentum-encoder EMA coefficient (BYOL: the base value of its cosine schedule)."))
    symmetric: bool = Field(False, description="MoCo: symmetrised loss (both view orders), as in the CIFAR demo.")
    bn_splits: int = Field(8, ge=1, description=(
        "MoCo: ShuffleBN on one device: batch norm over this many sub-batches (as if on as many GPUs) and the "
        "key batch shuffled across them, so BN statistics cannot leak which key is the positive (1: off)."))


class BYOLSpec(Spec):
    name: Literal["byol"] = "byol"
    proj_hidden_dim: Dim = Field(4096, description="Hidden width of the projector MLP.")
    proj_dim: Dim = Field(256, description="Output width of the projector (the embedding).")
    pred_hidden_dim: Dim = Field(4096, description="Hidden width of the predictor MLP.")
    momentum: Optional[float] = Field(None, ge=0, le=1, description=(
        "Momentum-encoder EMA coefficient (BYOL: the base value of its cosine schedule)."))


class SimSiamSpec(Spec):
    name: Literal["simsiam"] = "simsiam"
    proj_hidden_dim: Dim = Field(2048, description="Hidden width of the projector MLP.")
    proj_dim: Dim = Field(2048, description="Output width of the projector (the embedding).")
    pred_hidden_dim: Dim = Field(512, description="Hidden width of the predictor MLP.")
    proj_layers: Optional[Annotated[int, Field(ge=1)]] = Field(None, description=(
        "SimSiam: number of Linear layers in the projector (3 on ImageNet, 2 for small images)."))
    fix_pred_lr: bool = Field(True, description="SimSiam: keep the predictor's lr constant (not decayed).")


MethodSpec = Annotated[Union[SimCLRSpec, MoCoV2Spec, BYOLSpec, SimSiamSpec], Field(discriminator="name")]
METHOD_SPECS: dict[str, type[Spec]] = {
    "simclr": SimCLRSpec, "mocov2": MoCoV2Spec, "byol": BYOLSpec, "simsiam": SimSiamSpec}


class PretrainSpec(Spec):
    kind: Literal["pretrain"] = "pretrain"
    method: MethodSpec = Field(default_factory=lambda: MoCoV2Spec())
    data: DataSpec = Field(default_factory=DataSpec)
    backbone: BackboneSpec = Field(default_factory=BackboneSpec)
    augment: AugmentSpec = Field(default_factory=AugmentSpec)
    optim: OptimSpec = Field(default_factory=OptimSpec)
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec)

    @model_validator(mode="after")
    def _queue_fits_batch(self) -> "PretrainSpec":
        q = getattr(self.method, "queue_size", None)
        b = self.optim.batch_size
        if q is not None and q < b:
            raise ValueError(f"queue_size ({q}) must be at least the batch size ({b})")
        if q is not None and q % b:
            raise ValueError(f"queue_size ({q}) must be a multiple of the batch size ({b})")
        return self


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

    @field_validator("source")
    @classmethod
    def _not_empty(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not v.strip():
            raise ValueError("must name a dataset or a folder")
        return v


class KnnSpec(Spec):
    kind: Literal["knn-eval"] = "knn-eval"
    checkpoint: Path = Field(..., description="Pretraining checkpoint (.safetensors).")
    data: EvalDataSpec = Field(default_factory=EvalDataSpec)
    k: list[Annotated[int, Field(ge=1)]] = Field([200], description=(
        "Number of neighbours; repeat the flag to evaluate several k at once."))
    temperature: float = Field(0.1, gt=0, json_schema_extra=flag("--temperature"), description=(
        "Temperature T of the vote weights exp(similarity / T)."))
    runtime: EvalRuntimeSpec = Field(default_factory=EvalRuntimeSpec)


class ProbeOptimSpec(OptimSpec):
    """MoCo v1/v2 linear classification protocol."""
    epochs: int = Field(100, ge=1, description="Number of epochs.")
    batch_size: int = Field(256, ge=2, description="Images per step of the classifier.")
    optimizer: Literal["sgd", "adamw"] = Field("sgd", description="Optimiser.")
    lr: float = Field(30.0, gt=0, description="Learning rate at batch size 256; the rate used is lr x batch_size / 256.")
    weight_decay: float = Field(0.0, ge=0, description="Weight decay.")
    warmup_epochs: float = Field(0.0, ge=0, description="Linear warm-up epochs before the schedule.")
    schedule: Literal["cosine", "step", "constant"] = Field("step", description="Learning-rate schedule after warm-up.")
    exclude_bias_norm_wd: bool = Field(False, description="Exclude the classifier bias from weight decay.")


class LinearProbeSpec(Spec):
    kind: Literal["linear-probe"] = "linear-probe"
    checkpoint: Path = Field(..., description="Pretraining checkpoint (.safetensors).")
    data: EvalDataSpec = Field(default_factory=EvalDataSpec)
    optim: ProbeOptimSpec = Field(default_factory=ProbeOptimSpec)
    crop_scale: tuple[float, float] = Field((0.08, 1.0), description=(
        "RandomResizedCrop area range of the training views (MoCo protocol)."))
    cached: bool = Field(False, description=(
        "Fast path: compute features of the centre view once and train the classifier on them "
        "(no augmentation)."))
    out: Optional[Path] = Field(None, description="Where to write the probe [default: next to the checkpoint].")
    runtime: EvalRuntimeSpec = Field(default_factory=EvalRuntimeSpec)


def format_validation_error(err: ValidationError, flag_of: dict[tuple, str] | None = None) -> list[str]:
    """One line per problem: 'optim.lr (--lr): Input should be greater than 0 (got -1)'."""
    lines = []
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"] if not (isinstance(p, str) and p in METHOD_SPECS and
                                                     len(e["loc"]) > 1 and e["loc"][0] == "method"))
        path = ".".join(loc) or "spec"
        where = f"{path} ({flag_of[loc]})" if flag_of and loc in flag_of else path
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


def resolve_pretrain(spec: PretrainSpec, image_size: int, n_images: int) -> PretrainSpec:
    """Fill the None fields from the method's recipe (small-image variant below SMALL_IMAGE px) and check what
    needs the data: the result is the concrete spec that is printed, saved and embedded in checkpoints."""
    from .methods import METHODS
    method_cls = METHODS[spec.method.name]
    recipe = method_cls.recipe(small=image_size < SMALL_IMAGE)
    data = spec.model_dump()
    data["data"]["image_size"] = image_size
    for section in ("method", "optim", "augment"):
        for key, value in recipe.get(section, {}).items():
            if data[section].get(key) is None:
                data[section][key] = value
    optim = data["optim"]
    if spec.optim.warmup_epochs is None:  # the recipe's warm-up (10 of 100+ epochs) takes at most a tenth of a short run
        optim["warmup_epochs"] = min(optim["warmup_epochs"], optim["epochs"] / 10)
    resolved = validate(PretrainSpec, data)
    problems = method_cls.check(resolved)
    if resolved.optim.batch_size > n_images:
        problems.append(f"optim.batch_size (--batch-size): {resolved.optim.batch_size} is larger than the "
                        f"{n_images} training images; use a smaller batch size or more data")
    q = getattr(resolved.method, "queue_size", None)
    if q is not None and q > n_images >= resolved.optim.batch_size:
        problems.append(f"method.queue_size (--queue-size): the queue ({q} keys) is larger than the dataset "
                        f"({n_images} images), so it would hold several keys of the same image; use a queue of "
                        f"at most {n_images // resolved.optim.batch_size * resolved.optim.batch_size}")
    if resolved.optim.warmup_epochs >= resolved.optim.epochs:
        problems.append(f"optim.warmup_epochs (--warmup-epochs): {resolved.optim.warmup_epochs} must be "
                        f"shorter than the run ({resolved.optim.epochs} epochs)")
    if problems:
        raise SpecError(problems)
    return resolved

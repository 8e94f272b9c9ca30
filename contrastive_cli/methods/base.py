"""The torch half of the method layer: the Method interface with its small hooks, how methods and encoders are
built from a spec, and the parts several methods share (momentum encoders, the key queue, the memory bank).

A method is an nn.Module holding its encoder (`self.backbone`) and heads. The training loop knows no method: it
builds one with build_method and only calls the hooks below. Every hook has a default, so a method overrides only
what it changes:

  views(augment, size, mean, std)        the augmentation pipelines of a step (any number, any sizes)
  forward(views, indices, progress)      -> {'loss': ..., other scalars logged to metrics.jsonl and the bar}
  parameter_groups()                     optimiser groups (e.g. SimSiam's fixed-lr predictor)
  before_optimizer_step(progress)        between backward and the step (e.g. freezing prototypes)
  after_step(progress)                   after the step: EMA of momentum_pairs() by default
  exported_encoder()                     the network that checkpoints export and evaluations use
  embeddings(x)                          the representations the collapse monitor and inspect-collapse judge
  encoder_info(spec, data) / build_encoder(**kwargs)   how to (re)build that encoder, recorded in checkpoints
"""

from __future__ import annotations

import copy
import importlib
import math
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import ViewAugment
from ..losses import gather, global_mean, my_rows, gathered_world
from ..models import TIMM_PREFIX, build_backbone, timm_facts
from . import SPECS
from .fields import DataFacts


class Method(nn.Module):
    name: ClassVar[str] = ""
    # names of embeddings() outputs that are probability distributions: the collapse checks judge them by entropy
    distributions: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, spec, encoder: nn.Module, feature_dim: int, data: DataFacts):
        """`spec`: the resolved PretrainSpec; `encoder`: built from encoder_info(spec, data), `feature_dim` wide;
        `data`: the training data's facts (data.images: memory banks have one entry per image)."""
        super().__init__()
        self.spec = spec.method
        self.backbone = encoder
        self.feature_dim = feature_dim

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def encoder_info(cls, spec, data: DataFacts) -> dict:
        """What checkpoints record to rebuild the exported encoder without the method's training state: a plain
        backbone by default. A method with an encoder of its own returns {'method': cls.name, 'name': ...,
        'kwargs': {...}} (JSON values) and defines `build_encoder(**kwargs) -> (module, feature_dim)`. The encoder
        takes views normalised with data.mean / data.std, as every evaluation feeds it."""
        return backbone_info(spec)

    # ---- training hooks ----------------------------------------------------------------------
    def views(self, augment, size: int, mean, std) -> list[Callable]:
        """The augmentation pipelines of one step, one per view, each (uint8 batch, generator) -> tensor: the two
        global views, then augment.local_crops local ones (multi-crop, for methods whose spec sets multi_crop)."""
        return [ViewAugment(augment, size, mean, std, view=v) for v in (0, 1)] + local_views(augment, mean, std)

    # forward(views, indices=None, progress=0.0) -> {"loss": ..., **scalars} is each method's own.

    def parameter_groups(self) -> list[dict]:
        """Optimiser groups; by default one group of every trainable parameter. A group may set fixed_lr=True."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def before_optimizer_step(self, progress: float) -> None:
        """Called after backward, before the optimiser step (gradients can still be changed)."""

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, momentum) module pairs updated by EMA after each step."""
        return []

    def momentum(self, progress: float) -> float:
        """EMA coefficient at `progress` in [0, 1] of training (constant unless the method schedules it)."""
        return self.spec.momentum

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        pairs = self.momentum_pairs()
        if pairs:
            m = self.momentum(progress)
            for online, target in pairs:
                ema_update(online, target, m)

    # ---- what evaluation, export and diagnostics read -----------------------------------------
    def exported_encoder(self) -> nn.Module:
        """The encoder saved as `backbone.*` in checkpoints and used by every evaluation (DINO: the teacher)."""
        return self.backbone

    def embeddings(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named representations of a batch for the collapse diagnostics: the encoder's features and, where the
        method has a projector, the embedding its loss sees."""
        h = self.exported_encoder()(x)
        head = getattr(self, "projector", None)
        return {"backbone": h, **({"projector": head(h)} if isinstance(head, nn.Module) else {})}


# ---- the registry's torch half -----------------------------------------------------------------


def method_class(name: str) -> type[Method]:
    """The Method subclass named `name` in methods/<module>.py, the module its spec was found beside."""
    module = importlib.import_module(f"{__package__}.{SPECS[name].module}")
    for obj in vars(module).values():
        if isinstance(obj, type) and issubclass(obj, Method) and obj.name == name:
            return obj
    raise ImportError(f"{module.__name__} defines no Method subclass with name = {name!r}")


def backbone_info(spec) -> dict:
    """The record of a plain backbone: its name and the build_backbone arguments of its family (for timm:NAME,
    timm.create_model's: the image size and the ViT geometry where the model takes them)."""
    b = spec.backbone
    if b.timm_name:
        takes = timm_facts(b.timm_name).takes
        # dynamic_img_size: evaluations may run at another --image-size, as our ViTs interpolate their positions
        kwargs = {"img_size": spec.data.image_size, "patch_size": b.patch_size, "depth": b.depth,
                  "dynamic_img_size": True}
        return {"name": b.name, "kwargs": {k: v for k, v in kwargs.items() if k in takes and v is not None}}
    if b.is_vit:
        return {"name": b.name, "kwargs": {"image_size": spec.data.image_size, "patch_size": b.patch_size,
                                           "pos_embed": b.pos_embed, "depth": b.depth}}
    return {"name": b.name, "kwargs": {"stem": b.stem}}


def build_encoder(info: dict) -> tuple[nn.Module, int]:
    """The encoder a checkpoint's `backbone` record describes (Method.encoder_info), at random initialisation."""
    if "method" in info:
        return method_class(info["method"]).build_encoder(**info["kwargs"])
    return build_backbone(info["name"], **info["kwargs"])


def encoder_record(spec, data: DataFacts, feature_dim: int) -> dict:
    """encoder_info plus what readers need without rebuilding it; 'torchvision' / 'timm': the keys load into
    torchvision's model / into timm.create_model(name, num_classes=0, **kwargs)."""
    info = method_class(spec.method.name).encoder_info(spec, data)
    plain = "method" not in info
    return {**info, "feature_dim": feature_dim, "torchvision": plain and info["name"].startswith(("resnet", "vit_")),
            "timm": plain and info["name"].startswith(TIMM_PREFIX)}


def build_method(spec, data: DataFacts, init: bool = False) -> Method:
    """The method of a resolved PretrainSpec for training on `data` (DataFacts.of(image_set)); `init`: its backbone
    starts from spec.backbone.init (a new run; a resumed one loads its checkpoint instead), recorded in
    method.init_record."""
    cls = method_class(spec.method.name)
    info = cls.encoder_info(spec, data)
    encoder, dim = build_encoder(info)
    record = None
    if init and spec.backbone.init:  # before the method copies the backbone into its momentum encoders
        from ..weights import initialise
        # a method's own encoder holds the plain backbone as .backbone (SimCLRv2 keeping projector layers)
        record = initialise(encoder.backbone if "method" in info else encoder, spec.backbone.init, backbone_info(spec))
    method = cls(spec, encoder, dim, data)
    method.init_record = record
    return method


# ---- shared parts --------------------------------------------------------------------------------


def local_views(augment, mean, std) -> list[ViewAugment]:
    """Multi-crop's local crops (SwAV, DINO): the global pipeline at local_crop_size px from local_crop_scale of the
    image, blurred with local_blur_p and never solarised (DINO's local transform)."""
    if not augment.local_crops:
        return []
    local = augment.model_copy(update={"crop_scale": augment.local_crop_scale, "solarize_p": (0.0, 0.0),
                                       "blur_p": (augment.local_blur_p,) * 2})
    return [ViewAugment(local, augment.local_crop_size, mean, std, view=0) for _ in range(augment.local_crops)]


def encode_crops(encoder: nn.Module, views: list[torch.Tensor]) -> torch.Tensor:
    """Features of all views in order, [sum of batches, d]: consecutive views of one resolution go through the
    encoder together (DINO's MultiCropWrapper), so multi-crop costs two forward passes, not 2 + N."""
    features, start = [], 0
    while start < len(views):
        end = start + 1
        while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
            end += 1
        features.append(encoder(torch.cat(views[start:end])))
        start = end
    return torch.cat(features)



def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen copy of `module` to be updated by EMA only (MoCo key encoder, BYOL target)."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(online: nn.Module, target: nn.Module, m: float) -> None:
    """θ_target ← m·θ_target + (1−m)·θ_online on parameters only: as in the MoCo and BYOL code, the target's
    BN buffers keep the running statistics of its own forward passes."""
    t_params = [p for p in target.parameters()]
    o_params = [p.detach() for p in online.parameters()]
    torch._foreach_lerp_(t_params, o_params, 1.0 - m)


def cosine_momentum(base: float, progress: float) -> float:
    """BYOL / MoCo v3 schedule: τ = 1 − (1 − τ_base)·(cos(π·progress) + 1)/2, from τ_base up to 1."""
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


class KeyQueue(nn.Module):
    """MoCo's FIFO queue of L2-normalised keys; its buffers are saved in checkpoints. Pushes of any length wrap
    around the end, so a short batch (skipped files) or a size that is no multiple of the batch is fine."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, keys: torch.Tensor) -> None:
        """Replace the oldest len(keys) entries (the newest `size` of them, if more)."""
        size = len(self.keys)
        keys = keys[-size:]
        slots = (self.ptr + torch.arange(len(keys), device=self.keys.device)) % size  # no host sync
        self.keys[slots] = keys.to(self.keys.dtype)
        self.ptr.copy_((self.ptr + len(keys)) % size)


class MemoryBank(nn.Module):
    """InstDisc's memory bank: one feature per training image, refreshed as images are seen, and the NCE scores of
    features against sampled entries. Saved in checkpoints, so resume is exact.

    lemniscate.pytorch: entries start uniform in ±1/sqrt(d/3); after a step the seen image's entry becomes
    normalise(m·entry + (1−m)·feature); scores are exp(v·f/τ)/Z with Z fixed at the first step to N × the mean
    exp(v·f/τ) of that step's samples (a Monte-Carlo estimate of the partition function)."""

    def __init__(self, n_images: int, dim: int):
        super().__init__()
        stdv = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("features", torch.rand(n_images, dim).mul_(2 * stdv).sub_(stdv))
        self.register_buffer("z", torch.full((), -1.0))  # NCE normalising constant; < 0 until the first step

    def sample(self, indices: torch.Tensor, negatives: int) -> torch.Tensor:
        """[B, 1+K] bank rows: each image's own entry first, then K drawn uniformly (with replacement, as in the
        official code) from the CPU generator, which checkpoints save."""
        batch = len(indices) * gathered_world()  # drawn for the global batch, so a
        noise = torch.randint(0, len(self.features), (batch, negatives))[my_rows(batch, len(indices))]  # row's
        return torch.cat([indices[:, None], noise.to(indices.device)], dim=1)  # noise is the same at any world size

    def nce_scores(self, f: torch.Tensor, rows: torch.Tensor, temperature: float) -> torch.Tensor:
        """P(i|f) = exp(v_i·f/τ)/Z for the sampled rows [B, 1+K]; Z is estimated once, at the first call.

        When the B·(1+K) sampled rows outnumber the bank, one [B, N] product and a gather give the same numbers
        faster (7x on a 10k bank with K 4096, 2 CPU cores) than gathering B·(1+K) rows of d floats."""
        if rows.numel() > len(self.features):
            dots = (f @ self.snapshot().T).gather(1, rows)
        else:
            dots = torch.bmm(self.features[rows], f.unsqueeze(2)).squeeze(2)  # indexing copies: safe from update
        scores = dots.div(temperature).exp()
        self.z.copy_(torch.where(self.z < 0, global_mean(scores) * len(self.features), self.z))  # no host sync
        return scores / self.z

    def snapshot(self) -> torch.Tensor:
        """The bank as a constant for autograd: a product saves its operand for backward, which must not see the
        in-place update that follows the loss (detach() alone shares the version counter)."""
        return self.features.detach().clone()

    @torch.no_grad()
    def update(self, f: torch.Tensor, indices: torch.Tensor, momentum: float) -> None:
        """The entries of the global batch's images (gathered under torchrun, so every process's bank stays the same)."""
        f, indices = gather(f.detach()), gather(indices)
        entries = self.features[indices] * momentum + f.detach().to(self.features.dtype) * (1 - momentum)
        self.features[indices] = F.normalize(entries, dim=1)

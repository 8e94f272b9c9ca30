"""What methods share: the Method interface with its small hooks, momentum encoders and the key queue.

A method is an nn.Module holding the backbone and its heads. The training loop only calls:
  views(augment, size, mean, std) -> the view pipelines of a step (hook: multi-crop methods return more),
  forward(views, indices) -> dict with 'loss' (indices: dataset positions, for memory-bank methods),
  parameter_groups() -> optimiser groups (hook: e.g. SimSiam's fixed-lr predictor),
  after_step(progress) -> e.g. the EMA update of momentum encoders (hook: momentum_pairs()),
and `recipe(small)` gives the paper's defaults, `check(spec)` rejects spec combinations that cannot work.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


class Method(nn.Module):
    name: str = ""

    def __init__(self, spec, backbone: nn.Module, feature_dim: int):
        super().__init__()
        self.spec = spec
        self.backbone = backbone
        self.feature_dim = feature_dim

    # ---- hooks -----------------------------------------------------------------------------
    @staticmethod
    def recipe(small: bool) -> dict:
        """Paper defaults for the None fields of the spec: {'method': {...}, 'optim': {...}, 'augment': {...}}."""
        return {}

    @staticmethod
    def check(spec) -> list[str]:
        """Problems with a resolved PretrainSpec that only this method knows about."""
        return []

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, momentum) module pairs updated by EMA after each step."""
        return []

    def momentum(self, progress: float) -> float:
        """EMA coefficient at `progress` in [0, 1] of training (constant unless the method schedules it)."""
        return self.spec.momentum

    def parameter_groups(self) -> list[dict]:
        """Optimiser groups; by default one group of every trainable parameter."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    @staticmethod
    def views(augment, size: int, mean, std) -> list:
        """The augmentation pipelines of one step, one per view: two views by default."""
        from ..augment import ViewAugment
        return [ViewAugment(augment, size, mean, std, view=v) for v in (0, 1)]

    # forward(views, indices=None) -> {"loss": ...} is each method's own (nn.Module requires it).

    # ---- shared behaviour ------------------------------------------------------------------
    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        pairs = self.momentum_pairs()
        if pairs:
            m = self.momentum(progress)
            for online, target in pairs:
                ema_update(online, target, m)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features used by the evaluations."""
        return self.backbone(x)


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
    """MoCo's FIFO queue of L2-normalised keys; its buffers are saved in checkpoints."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.register_buffer("keys", nn.functional.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, keys: torch.Tensor) -> None:
        """Replace the oldest len(keys) entries (size is a multiple of the batch, so no wrap inside a push)."""
        n, start = len(keys), int(self.ptr)
        self.keys[start:start + n] = keys.to(self.keys.dtype)
        self.ptr.fill_((start + n) % len(self.keys))

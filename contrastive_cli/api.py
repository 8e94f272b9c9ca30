"""The Python API: the commands' engine as functions, for notebooks and scripts (docs/api.md).

    import contrastive_cli as contrastive
    run = contrastive.pretrain(method="simclr", data="synthetic", epochs=1)
    encoder = contrastive.load_encoder(run["checkpoint"])
    features = contrastive.embed(encoder, images)          # [N, feature_dim]
    contrastive.knn_eval(run["checkpoint"], k=[20, 200])

Keyword arguments are the command's flags with dashes as underscores (`batch_size=64` is `--batch-size 64`), so the
same pydantic spec validates them with the same messages; a whole spec (a PretrainSpec, a dict in its shape, or a
YAML/JSON file) can be given first, and keywords override it, as flags override --config. Bad input raises
`contrastive_cli.UserError` with the message the command would print.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import nn

from .errors import UserError
from .spec import KnnSpec, LinearProbeSpec, PretrainSpec, Spec

SpecLike = Union[Spec, dict, str, Path, None]


def build_spec(model: type[Spec], spec: SpecLike = None, flags: Optional[dict[str, Any]] = None,
               skip: tuple[str, ...] = ("kind",)) -> Spec:
    """A validated spec from a spec, a dict or a config file, with flags (as keywords) on top."""
    from .flags import collect, merge
    config = _config(spec)
    by_name = {f.param: f for f in collect(model, skip=skip)}
    unknown = [k for k in flags or {} if k not in by_name]
    if unknown:
        close = {k: difflib.get_close_matches(k, by_name, n=2) for k in unknown}
        raise UserError(f"Unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} for "
                        f"{model.__name__}" + "".join(f" ({k}: did you mean {' or '.join(v)}?)"
                                                      for k, v in close.items() if v),
                        "pass the command's flags with dashes as underscores (e.g. batch_size=64); "
                        "docs/reference.md lists them")
    given = {by_name[k]: (tuple(v) if isinstance(v, list) else v) for k, v in (flags or {}).items() if v is not None}
    return merge(model, config, given)


def pretrain(spec: SpecLike = None, /, *, resume: Union[str, Path, None] = None, **flags) -> dict:
    """Train as `contrastive pretrain` does (quietly); returns {'checkpoint', 'run_dir', 'step', 'metrics', 'curves'}
    with the last epoch's record. `resume=RUN_DIR` continues a run (only the resumable flags may be given again)."""
    from . import distributed
    from .curves import run_curves
    from .train import prepare, train
    run = prepare(build_spec(PretrainSpec, spec, flags), Path(resume) if resume is not None else None)
    metrics = train(run) if run.step < run.total_steps else run.last_metrics
    return {"checkpoint": run.checkpoint_path, "run_dir": run.dir, "step": run.step, "metrics": metrics,
            "curves": run_curves(run.dir) if distributed.is_main() else None}


class Encoder(nn.Module):
    """A checkpoint's frozen backbone with its preprocessing: `encoder(images)` takes images as the evaluations see
    them (uint8 [N, C, H, W], or float in [0, 1]; 1 or 3 channels; any size: the centre view at the checkpoint's
    image size is taken) and returns pooled features [N, feature_dim]. `encoder.backbone` is the bare network,
    which expects `encoder.preprocess(images)`."""

    def __init__(self, backbone: nn.Module, meta: dict):
        super().__init__()
        self.backbone, self.meta = backbone, meta
        self.image_size, self.normalize, self.feature_dim = meta["image_size"], meta["normalize"], meta["feature_dim"]

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        from .augment import center_view
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        device = next(self.backbone.parameters()).device
        return center_view(images.to(device), self.image_size, self.normalize["mean"], self.normalize["std"])

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.preprocess(images))


def load_encoder(checkpoint: Union[str, Path], device: str = "cpu") -> Encoder:
    """The encoder of a pretrain or transfer checkpoint (or run directory), frozen, in eval mode."""
    from .checkpoint import resolve_path
    from .evaluate import eval_device, load_encoder as load
    backbone, meta = load(resolve_path(Path(checkpoint)), eval_device(device))
    return Encoder(backbone, meta).eval()


def embed(encoder: Union[Encoder, str, Path], images, *, split: str = "test", subset: Optional[int] = None,
          batch_size: int = 256) -> torch.Tensor:
    """Features [N, feature_dim] (CPU, float32) of `images`: a tensor [N, C, H, W] (uint8, or float in [0, 1]), a list
    of PIL images, or a dataset (a named one such as 'fashion-mnist' or a folder; its `split`, a seeded `subset`),
    in order. `encoder` may be a checkpoint path."""
    if not isinstance(encoder, Encoder):
        encoder = load_encoder(encoder)
    if isinstance(images, (str, Path)):
        from .data import open_dataset
        from .evaluate import features
        data = open_dataset(str(images), split, subset=subset, image_size=encoder.image_size)
        device = next(encoder.backbone.parameters()).device
        return features(encoder.backbone, data, encoder.image_size, encoder.normalize, device, batch_size, 0)[0]
    if isinstance(images, (list, tuple)):
        return torch.cat([encoder(pil_tensor(image)).cpu() for image in images]) if images else \
            torch.empty(0, encoder.feature_dim)
    return torch.cat([encoder(chunk).float().cpu() for chunk in torch.as_tensor(images).split(batch_size)])


def pil_tensor(image) -> torch.Tensor:
    """A PIL image as uint8 [1, 3, H, W]."""
    return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1).unsqueeze(0)


def knn_eval(checkpoint: Union[str, Path], spec: SpecLike = None, /, **flags) -> dict:
    """Weighted kNN accuracy, as `contrastive knn-eval --json`: {'results': [{'k', 'top1', 'top5'}, ...], ...}."""
    from .evaluate import knn_eval as run
    return run(build_spec(KnnSpec, {**_config(spec), "checkpoint": str(checkpoint)}, flags, ("kind", "checkpoint")))


def linear_probe(checkpoint: Union[str, Path], spec: SpecLike = None, /, **flags) -> dict:
    """The linear probe, as `contrastive linear-probe --json`."""
    from .evaluate import linear_probe as run
    return run(build_spec(LinearProbeSpec, {**_config(spec), "checkpoint": str(checkpoint)}, flags,
                          ("kind", "checkpoint")))


def _config(spec: SpecLike) -> dict:
    from .flags import load_config
    if isinstance(spec, Spec):
        return spec.model_dump(mode="json", exclude_unset=True)
    return load_config(Path(spec)) if isinstance(spec, (str, Path)) else dict(spec or {})

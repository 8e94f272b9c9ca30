"""`contrastive pretrain`: the training loop, its optimiser and schedule, checkpoints and resume.

Exact resume by construction: the data order of an epoch is drawn from (seed, epoch) and the augmentation
of a step from (seed, step), so a resumed run only needs the module/optimiser state and the step counter.
"""

from __future__ import annotations

import json
import math
import signal
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from . import checkpoint as ckpt
from .data import ImageSet, native_size, open_dataset
from .errors import UserError
from .methods import METHODS, Method
from .models import backbone_info, build_backbone
from .spec import PretrainSpec, resolve_pretrain

# ---- runtime -----------------------------------------------------------------------------------


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} was asked for but CUDA is not available on this machine",
                        "use --device cpu or --device auto")
    return torch.device(name)


def default_workers(workers: Optional[int]) -> int:
    import os
    return min(4, os.cpu_count() or 1) if workers is None else workers


def autocast(device: torch.device, amp: Optional[bool]):
    if device.type == "cuda" and amp is not False:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def build_method(spec: PretrainSpec) -> Method:
    backbone, dim = build_backbone(spec.backbone.name, spec.backbone.stem)
    return METHODS[spec.method.name](spec.method, backbone, dim)


# ---- optimisation ------------------------------------------------------------------------------


def decay_groups(params: list, lr: float, o, **extra) -> list[dict]:
    """Parameter groups at `lr`: all of `params` with weight decay, or, when the recipe excludes biases and norm
    weights from decay (o.exclude_bias_norm_wd), the matrices with it and the vectors without."""
    split = ([p for p in params if p.ndim > 1], [p for p in params if p.ndim <= 1]) \
        if o.exclude_bias_norm_wd else (params, [])
    return [{"params": ps, "weight_decay": wd, "base_lr": lr, "lr": lr, "fixed_lr": False, **extra}
            for ps, wd in zip(split, (o.weight_decay, 0.0)) if ps]


def param_groups(method: Method, spec: PretrainSpec) -> list[dict]:
    """The method's groups, each split into decayed and non-decayed (biases, norm weights) when the recipe says so."""
    o = spec.optim
    lr = o.lr * o.batch_size / 256  # linear scaling rule
    groups = []
    for group in method.parameter_groups():
        groups += decay_groups(group.pop("params"), lr, o, fixed_lr=bool(group.pop("fixed_lr", False)))
    return groups


def fused(device: torch.device) -> dict:
    """fused=True where this torch has fused SGD/AdamW kernels for the device: one pass over all parameters
    instead of a loop of small ops (on 2 CPU cores, 26 instead of 56 ms per ResNet-18 step; docs/performance.md)."""
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices
    except ImportError:  # older torch: the per-parameter loop
        return {}
    return {"fused": True} if device.type in _get_fused_kernels_supported_devices() else {}


def make_optimizer(groups: list[dict], o, device: torch.device) -> torch.optim.Optimizer:
    """The spec's optimiser (SGD with momentum, or AdamW) over `groups`, fused where the device has the kernels."""
    if o.optimizer == "adamw":
        return torch.optim.AdamW(groups, betas=(o.optimizer_momentum, 0.999), **fused(device))
    return torch.optim.SGD(groups, momentum=o.optimizer_momentum, **fused(device))


def build_optimizer(method: Method, spec: PretrainSpec, device: torch.device) -> torch.optim.Optimizer:
    return make_optimizer(param_groups(method, spec), spec.optim, device)


def lr_factor(step: int, total: int, warmup: int, schedule: str, milestones=(0.6, 0.8)) -> float:
    """Multiplier of the base lr at `step`: linear warm-up, then cosine to 0, step decay (x0.1 per milestone) or constant."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "step":
        return 0.1 ** sum(step >= m * total for m in milestones)
    return 1.0


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> float:
    for g in optimizer.param_groups:
        g["lr"] = g["base_lr"] if g["fixed_lr"] else g["base_lr"] * factor
    return optimizer.param_groups[0]["lr"]


# ---- checkpoint state ----------------------------------------------------------------------------


def state_tensors(method: Method, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    tensors = {f"backbone.{k}": v for k, v in method.backbone.state_dict().items()}
    tensors.update({f"method.{k}": v for k, v in method.state_dict().items() if not k.startswith("backbone.")})
    for i, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            tensors[f"optim.{i}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    tensors["rng.torch"] = torch.get_rng_state()
    return tensors


def load_state(method: Method, optimizer: Optional[torch.optim.Optimizer], tensors: dict[str, torch.Tensor]) -> None:
    state = {f"backbone.{k}": v for k, v in ckpt.strip(tensors, "backbone.").items()}
    state.update(ckpt.strip(tensors, "method."))
    method.load_state_dict(state, strict=True)
    if optimizer is not None:
        saved = optimizer.state_dict()
        per_param: dict[int, dict] = {}
        for key, value in ckpt.strip(tensors, "optim.").items():
            i, name = key.split(".", 1)
            per_param.setdefault(int(i), {})[name] = value
        saved["state"] = per_param
        optimizer.load_state_dict(saved)
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])


# ---- the loop ------------------------------------------------------------------------------------


@dataclass
class Run:
    spec: PretrainSpec
    dir: Path
    data: ImageSet
    method: Method
    optimizer: torch.optim.Optimizer
    device: torch.device
    step: int = 0
    last_metrics: dict = field(default_factory=dict)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.data) // self.spec.optim.batch_size  # drop_last: every step sees a full batch

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.spec.optim.epochs

    @property
    def checkpoint_path(self) -> Path:
        return self.dir / ckpt.CHECKPOINT_NAME

    def save(self) -> Path:
        s = self.spec
        meta = {
            "kind": "pretrain", "spec": s.model_dump(mode="json"), "method": s.method.name,
            "backbone": backbone_info(s.backbone.name, s.backbone.stem, self.method.feature_dim),
            "feature_dim": self.method.feature_dim, "image_size": s.data.image_size,
            "normalize": {"mean": list(self.data.mean), "std": list(self.data.std)},
            "data": {"name": self.data.name, "fingerprint": self.data.fingerprint, "images": len(self.data)},
            "step": self.step, "epoch": self.step / max(1, self.steps_per_epoch),
            "complete": self.step >= self.total_steps, "metrics": self.last_metrics,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        return ckpt.save(self.checkpoint_path, state_tensors(self.method, self.optimizer), meta)


class TrainingStopped(UserError):
    """Training stopped on purpose (Ctrl-C) or by a problem (non-finite loss); carries the exit code."""

    def __init__(self, problem: str, fix: str, exit_code: int):
        super().__init__(problem, fix)
        self.exit_code = exit_code


@contextmanager
def interrupt_flag():
    """First Ctrl-C sets a flag checked between steps (so the checkpoint is consistent); a second one aborts."""
    flag = {"set": False}
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        if flag["set"]:
            raise KeyboardInterrupt
        flag["set"] = True

    try:
        signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: no handler, Ctrl-C behaves as usual
        previous = None
    try:
        yield flag
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def prepare(spec: PretrainSpec, resume: Optional[Path] = None, reporter=None) -> Run:
    """Open the data, resolve the spec, build everything; nothing is written before all checks pass."""
    tensors = None
    if resume is not None:
        tensors, meta = ckpt.load(resume)
        saved = PretrainSpec.model_validate(meta["spec"])
        spec = saved.model_copy(update={"runtime": saved.runtime.model_copy(update={
            k: getattr(spec.runtime, k) for k in ("device", "workers", "amp") if spec.runtime.model_fields_set & {k}})})
        run_dir = Path(meta["path"]).parent
    d = spec.data
    image_size = d.image_size or native_size(d.source, d.root)
    data = open_dataset(d.source, "pretrain", root=d.root, download=d.download, strict=d.strict,
                        subset=d.subset, seed=spec.runtime.seed, image_size=image_size, classes=d.classes)
    spec = resolve_pretrain(spec, image_size, len(data))
    if resume is not None and data.fingerprint != meta["data"]["fingerprint"]:
        raise UserError(f"The data of {d.source} differs from the data this run was started on "
                        f"(fingerprint {data.fingerprint} vs {meta['data']['fingerprint']})",
                        "resume with the same dataset, or start a new run")
    device = pick_device(spec.runtime.device)
    torch.manual_seed(spec.runtime.seed)
    method = build_method(spec).to(device)
    optimizer = build_optimizer(method, spec, device)
    if resume is None:
        run_dir = new_run_dir(spec)
    run = Run(spec, run_dir, data, method, optimizer, device)
    if tensors is not None:
        load_state(method, optimizer, {k: v.to(device) if not k.startswith("rng.") else v for k, v in tensors.items()})
        run.step = int(meta["step"])
        run.last_metrics = meta.get("metrics", {})
    return run


def new_run_dir(spec: PretrainSpec) -> Path:
    out = spec.runtime.out
    if out is not None:
        if (out / ckpt.CHECKPOINT_NAME).exists():
            raise UserError(f"The run directory {out} already holds a run",
                            f"continue it with --resume {out}, or choose another --out")
        return out
    name = Path(spec.data.source).name if Path(spec.data.source).exists() else spec.data.source
    base = Path("runs") / f"{spec.method.name}-{spec.backbone.name}-{name}"
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def write_spec(run: Run) -> None:
    run.dir.mkdir(parents=True, exist_ok=True)
    (run.dir / "spec.json").write_text(json.dumps(run.spec.model_dump(mode="json"), indent=2) + "\n")


class CollapseMonitor:
    """Each epoch: std of normalised embeddings and effective rank of the backbone and projector outputs on a fixed
    batch of pretraining images (centre views, eval mode, so training state and RNG are untouched)."""

    def __init__(self, run: Run):
        from .augment import center_view
        m = run.spec.monitor
        pick = torch.randperm(len(run.data), generator=torch.Generator().manual_seed(run.spec.runtime.seed + 17))
        x, _, _ = next(run.data.batches(pick[:m.images].sort().values, m.images, workers=0))
        self.views = center_view(x.to(run.device), run.spec.data.image_size, run.data.mean, run.data.std)
        self.thresholds = (m.min_spread, m.min_rank_share)
        self.patience, self.streak = m.patience, 0

    @torch.no_grad()
    def __call__(self, method: Method) -> dict:
        from .collapse import judge, worst, cheap_stats
        method.eval()
        h = method.backbone(self.views)
        embeddings = {"backbone": h}
        if isinstance(getattr(method, "projector", None), torch.nn.Module):
            embeddings["projector"] = method.projector(h)
        method.train()
        stats = {name: cheap_stats(z) for name, z in embeddings.items()}
        verdicts = {name: judge(st, *self.thresholds) for name, st in stats.items()}
        verdict = worst(v for v, _ in verdicts.values())
        reason = "; ".join(f"{name}: {why}" for name, (v, why) in verdicts.items() if v == verdict)
        self.streak = self.streak + 1 if verdict != "healthy" else 0
        return {"verdict": verdict, "reason": reason, "alarm": self.streak >= self.patience, **{name: {k: round(st[k], 4) for k in ("spread", "std_ratio", "rank", "rank_share")}
                                                         for name, st in stats.items()}}


class Stopwatch:
    """Seconds of device work in a `with` block: wall clock on the CPU; on CUDA, events read once the step's
    work is known to be done (after the loss is read back), so timing adds no synchronisation."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self) -> "Stopwatch":
        if self.cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self.end.record()
        else:
            self.elapsed = time.perf_counter() - self.t0

    def seconds(self) -> float:
        return self.start.elapsed_time(self.end) / 1000 if self.cuda else self.elapsed


def optimisation_step(run: Run, views: list[torch.Tensor], indices: torch.Tensor) -> torch.Tensor:
    """Forward, loss check, backward, optimiser step and momentum update on views ready on the device: the
    model's share of a training step, and all of a model-only benchmark step. Returns the loss."""
    with autocast(run.device, run.spec.runtime.amp):
        loss = run.method(views, indices)["loss"]
    if not torch.isfinite(loss):
        raise TrainingStopped(
            f"The loss became {loss.item()} at step {run.step} (epoch {run.step // run.steps_per_epoch + 1}); "
            "training stopped", "lower --lr or check the data; the last good checkpoint is kept"
            + (f" at {run.checkpoint_path} (resume with --resume {run.dir})" if run.checkpoint_path.exists() else ""),
            exit_code=3)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    run.method.after_step((run.step + 1) / run.total_steps)
    return loss


def train(run: Run, progress=None, on_step: Optional[Callable[[Run, dict], None]] = None,
          on_epoch: Optional[Callable[[Run, dict], None]] = None) -> dict:
    """Train from run.step to the end; returns the last epoch's metrics. Raises TrainingStopped on Ctrl-C, NaN or,
    with --stop-on-collapse, a collapse seen by the monitor."""
    s, method, device = run.spec, run.method, run.device
    write_spec(run)
    monitor = CollapseMonitor(run) if s.monitor.images else None
    views = method.views(s.augment, s.data.image_size, run.data.mean, run.data.std)
    generator = torch.Generator(device=device)
    warmup = round(s.optim.warmup_epochs * run.steps_per_epoch)
    workers = default_workers(s.runtime.workers)
    metrics_file = (run.dir / "metrics.jsonl").open("a" if run.step else "w")  # a new run starts a fresh log
    method.train()
    epoch_stats: dict = {}
    with interrupt_flag() as interrupted, metrics_file:
        while run.step < run.total_steps:
            epoch, offset = divmod(run.step, run.steps_per_epoch)
            order = torch.randperm(len(run.data), generator=torch.Generator().manual_seed(s.runtime.seed * 100003 + epoch))
            order = order[offset * s.optim.batch_size:run.steps_per_epoch * s.optim.batch_size]
            losses, images, wait, augmenting, t_epoch = [], 0, 0.0, 0.0, time.perf_counter()
            t_ready = time.perf_counter()
            for x, _, indices in run.data.batches(order, s.optim.batch_size, workers=workers, drop_last=True):
                x = x.to(device, non_blocking=True)
                t_got = time.perf_counter()
                wait += t_got - t_ready
                generator.manual_seed(s.runtime.seed * 1_000_003 + run.step)
                lr = set_lr(run.optimizer, lr_factor(run.step, run.total_steps, warmup, s.optim.schedule, s.optim.milestones))
                with Stopwatch(device) as augment:
                    batch_views = [v(x, generator) for v in views]  # fp32, outside autocast
                loss = optimisation_step(run, batch_views, indices.to(device))
                run.step += 1
                losses.append(loss.item())
                t_done = time.perf_counter()
                images += len(x)
                augmenting += augment.seconds()
                record = {"step": run.step, "epoch": epoch + 1, "loss": losses[-1], "lr": lr,
                          "images_per_s": len(x) / (t_done - t_ready), "data_wait": t_got - t_ready,
                          "augment": augment.seconds()}
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
                if progress is not None:
                    progress(run, record, images / (t_done - t_epoch))
                if on_step is not None:
                    on_step(run, record)
                if interrupted["set"]:
                    metrics_file.flush()
                    path = run.save()
                    raise TrainingStopped(f"Interrupted at step {run.step} of {run.total_steps}; a resumable "
                                          f"checkpoint was written to {path}",
                                          f"continue with: contrastive pretrain --resume {run.dir}", exit_code=130)
                t_ready = time.perf_counter()  # the next step's clock starts after this step's hooks
            elapsed = time.perf_counter() - t_epoch
            epoch_stats = {"epoch": epoch + 1, "loss": sum(losses) / max(1, len(losses)),
                           "images_per_s": images / elapsed, "data_wait_share": wait / elapsed,
                           "augment_share": augmenting / elapsed,
                           "seconds": elapsed, "skipped_files": len(run.data.skipped)}
            if monitor is not None:
                epoch_stats["collapse"] = monitor(method)
            run.last_metrics = epoch_stats
            metrics_file.write(json.dumps({"type": "epoch", **epoch_stats}) + "\n")
            metrics_file.flush()
            if on_epoch is not None:
                on_epoch(run, epoch_stats)
            collapsed = monitor is not None and epoch_stats["collapse"]["alarm"]
            if (epoch + 1) % s.runtime.checkpoint_every == 0 or run.step >= run.total_steps or (
                    collapsed and s.monitor.stop_on_collapse):
                run.save()
            if collapsed and s.monitor.stop_on_collapse:
                c = epoch_stats["collapse"]
                raise TrainingStopped(f"The collapse monitor saw {c['verdict']} for {monitor.streak} epoch(s) in a row, "
                                      f"up to epoch {epoch + 1} ({c['reason']}); "
                                      f"training stopped with a checkpoint at {run.checkpoint_path}",
                                      "see docs/inspect-collapse.md for the usual causes (a missing predictor or "
                                      "stop-gradient, no batch norm in the heads, too high an lr); inspect it with "
                                      f"contrastive inspect-collapse {run.dir}", exit_code=4)
    return epoch_stats

"""`contrastive pretrain`: the training loop, checkpoints and resume.

The loop knows no method: it builds one from the registry (methods/base.build_method) and calls its hooks. Exact
resume by construction: the data order of an epoch is drawn from (seed, epoch) and the augmentation of a step from
(seed, step) (runtime.py), so a resumed run only needs the module/optimiser/RNG state and the step counter.
"""

from __future__ import annotations

import json
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from . import checkpoint as ckpt
from .checkpoint import load_state, state_tensors
from .collapse import CollapseMonitor
from .data import ImageSet, native_size, open_dataset
from .errors import UserError
from .methods.base import Method, build_method, encoder_record
from .methods.fields import DataFacts
from .optim import build_optimizer, lr_factor, set_lr, set_weight_decay
from .runtime import autocast, default_workers, epoch_order, pick_device, seed_step
from .spec import PretrainSpec, resolve_pretrain

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
            "backbone": encoder_record(s, DataFacts.of(self.data), self.method.feature_dim),
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
    spec = resolve_pretrain(spec, image_size, len(data), data.channels)
    if resume is not None and data.fingerprint != meta["data"]["fingerprint"]:
        raise UserError(f"The data of {d.source} differs from the data this run was started on "
                        f"(fingerprint {data.fingerprint} vs {meta['data']['fingerprint']})",
                        "resume with the same dataset, or start a new run")
    device = pick_device(spec.runtime.device)
    torch.manual_seed(spec.runtime.seed)
    method = build_method(spec, DataFacts.of(data)).to(device)
    optimizer = build_optimizer(method, spec.optim, device)
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


def optimisation_step(run: Run, views: list[torch.Tensor], indices: torch.Tensor) -> dict[str, torch.Tensor]:
    """Forward, loss check, backward, the method's pre-step hook, optimiser step and its post-step hook (momentum
    updates) on views ready on the device: the model's share of a training step, and all of a model-only benchmark
    step. Returns the method's outputs: 'loss' and the scalars it reports."""
    progress = run.step / run.total_steps
    with autocast(run.device, run.spec.runtime.amp):
        out = run.method(views, indices, progress)
    loss = out["loss"]
    if not torch.isfinite(loss):
        raise TrainingStopped(
            f"The loss became {loss.item()} at step {run.step} (epoch {run.step // run.steps_per_epoch + 1}); "
            "training stopped", "lower --lr or check the data; the last good checkpoint is kept"
            + (f" at {run.checkpoint_path} (resume with --resume {run.dir})" if run.checkpoint_path.exists() else ""),
            exit_code=3)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.method.before_optimizer_step(progress)
    run.optimizer.step()
    run.method.after_step((run.step + 1) / run.total_steps)
    return out


def train(run: Run, progress=None, on_step: Optional[Callable[[Run, dict], None]] = None,
          on_epoch: Optional[Callable[[Run, dict], None]] = None) -> dict:
    """Train from run.step to the end; returns the last epoch's metrics. Raises TrainingStopped on Ctrl-C, NaN or,
    with --stop-on-collapse, a collapse seen by the monitor."""
    s, method, device = run.spec, run.method, run.device
    write_spec(run)
    monitor = CollapseMonitor(run.data, run.spec, run.device) if s.monitor.images else None
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
            order = epoch_order(len(run.data), s.runtime.seed, epoch)
            order = order[offset * s.optim.batch_size:run.steps_per_epoch * s.optim.batch_size]
            sums, steps, images, wait, augmenting, t_epoch = {}, 0, 0, 0.0, 0.0, time.perf_counter()
            t_ready = time.perf_counter()
            for x, _, indices in run.data.batches(order, s.optim.batch_size, workers=workers, drop_last=True):
                x = x.to(device, non_blocking=True)
                t_got = time.perf_counter()
                wait += t_got - t_ready
                seed_step(generator, s.runtime.seed, run.step)
                lr = set_lr(run.optimizer, lr_factor(run.step, run.total_steps, warmup, s.optim.schedule, s.optim.milestones))
                set_weight_decay(run.optimizer, s.optim, run.step, run.total_steps)
                with Stopwatch(device) as augment:
                    batch_views = [v(x, generator) for v in views]  # fp32, outside autocast
                scalars = {k: float(torch.as_tensor(v).detach()) for k, v in
                           optimisation_step(run, batch_views, indices.to(device)).items()}
                run.step += 1
                steps += 1
                for k, v in scalars.items():
                    sums[k] = sums.get(k, 0.0) + v
                t_done = time.perf_counter()
                images += len(x)
                augmenting += augment.seconds()
                record = {"step": run.step, "epoch": epoch + 1, **scalars, "lr": lr,
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
            epoch_stats = {"epoch": epoch + 1, **{k: v / max(1, steps) for k, v in sums.items()},
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

"""`contrastive pretrain`: the training loop, checkpoints and resume.

The loop knows no method: it builds one from the registry (methods/base.build_method) and calls its hooks. Exact
resume by construction: the data order of an epoch is drawn from (seed, epoch) and the augmentation of a step from
(seed, step) (runtime.py), so a resumed run only needs the module/optimiser/RNG state and the step counter.
"""

from __future__ import annotations

import json
import os
import signal
import time
from contextlib import ExitStack, closing, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

try:
    import fcntl  # POSIX; elsewhere runs are not locked
except ImportError:  # pragma: no cover
    fcntl = None

from . import checkpoint as ckpt
from . import distributed
from .checkpoint import load_state, state_tensors
from .collapse import CollapseMonitor
from .evaluate import OnlineKnn, resolve_online_knn
from .data import ImageSet, native_size, open_dataset
from .errors import UserError
from .methods.base import Method, build_method, encoder_record
from .methods.fields import DataFacts
from .optim import build_optimizer, lr_factor, set_lr, set_weight_decay
from .runtime import autocast, default_workers, epoch_order, pick_device, seed_step
from .spec import PretrainSpec, resolve_pretrain
from .trackers import Trackers, require_trackers

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
    resumed: bool = False
    init: Optional[dict] = None  # where --init's weights came from (weights.initialise), kept by resumed runs
    model: Optional[torch.nn.Module] = None  # what the step calls: the method, or its DDP wrapper under torchrun

    def __post_init__(self):
        if self.model is None:
            self.model = self.method

    @property
    def local_batch(self) -> int:
        """This process's share of the global --batch-size."""
        return self.spec.optim.batch_size // distributed.world()

    @property
    def micro_batch(self) -> int:
        """This process's share of one of the --accumulate-steps micro-batches of a step."""
        return self.local_batch // self.spec.optim.accumulate_steps

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
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **({"init": self.init} if self.init else {}),
        }
        tensors = state_tensors(self.method, self.optimizer)
        broken = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        # a finite loss can come from a state that is already broken (BN statistics, optimiser moments); every
        # process takes the decision (and learns how rank 0's write went), so none waits alone in a collective
        if distributed.any_rank(bool(broken), self.device):
            broken = broken or ["the state of another process"]
            raise TrainingStopped(
                f"The training state at step {self.step} holds non-finite values ({', '.join(broken[:3])}"
                f"{', …' if len(broken) > 3 else ''}), so it was not saved", "lower --lr or check the data; the last "
                "good checkpoint is kept" + (f" at {self.checkpoint_path} (resume with --resume {self.dir} --lr LOWER)"
                                             if self.checkpoint_path.exists() else ""),
                exit_code=3)
        distributed.on_main(lambda: ckpt.save(self.checkpoint_path, tensors, meta))  # a failed write stops all
        return self.checkpoint_path


class TrainingStopped(UserError):
    """Training stopped on purpose (Ctrl-C) or by a problem (non-finite loss); carries the exit code."""

    def __init__(self, problem: str, fix: str, exit_code: int):
        super().__init__(problem, fix)
        self.exit_code = exit_code


SIGNALS = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}
EXIT_PEER = 75  # sysexits' EX_TEMPFAIL: another process of a torchrun job failed; resumable


@contextmanager
def interrupt_flag():
    """The first Ctrl-C or SIGTERM (what schedulers and `kill` send) sets a flag checked between steps, so the run
    saves a consistent checkpoint and exits; a second one aborts at once (the last checkpoint stays intact)."""
    flag = {"set": False, "by": ""}
    previous = {}

    def handler(signum, frame):
        if flag["set"]:
            raise KeyboardInterrupt
        flag["set"], flag["by"] = True, SIGNALS[signum]

    try:
        for signum in SIGNALS:
            previous[signum] = signal.signal(signum, handler)
    except ValueError:  # not the main thread: no handler, signals behave as usual
        pass
    try:
        yield flag
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


# what may change when a run is resumed (given as flags): where and how it runs, and the lr and length of the run,
# e.g. a lower --lr after a divergence, or more --epochs to extend a finished run (its schedule then stretches to
# the new length); the rest is the run's identity and stays as it was started
RESUMABLE = {"runtime": ("device", "workers", "amp", "checkpoint_every", "log", "wandb_project", "mlflow_uri"),
             "optim": ("lr", "epochs", "accumulate_steps"), "monitor": ("patience", "stop_on_collapse")}


def prepare(spec: PretrainSpec, resume: Optional[Path] = None, reporter=None) -> Run:
    """Open the data, resolve the spec, build everything; nothing is written before all checks pass."""
    tensors, run_dir = None, None
    if resume is not None and started_without_checkpoint(resume):  # killed before its first checkpoint
        spec, run_dir, resume = restart_spec(spec, Path(resume)), Path(resume), None
    if resume is not None:
        tensors, meta = ckpt.load(resume)
        if Path(meta["path"]).name != ckpt.CHECKPOINT_NAME:  # a resumed run writes <its folder>/checkpoint.safetensors
            folder = Path(meta["path"]).parent
            raise UserError(f"{meta['path']} is not a run's {ckpt.CHECKPOINT_NAME}, so resuming it would write into "
                            f"{folder}{' and overwrite the run there' if (folder / ckpt.CHECKPOINT_NAME).exists() else ''}",
                            f"copy it into a new folder as {ckpt.CHECKPOINT_NAME} (mkdir NEW && cp {meta['path']} "
                            f"NEW/{ckpt.CHECKPOINT_NAME}) and resume that: --resume NEW")
        spec = with_resumable(PretrainSpec.model_validate(meta["spec"]), spec)
        run_dir = Path(meta["path"]).parent
    d = spec.data
    image_size = d.image_size or native_size(d.source, d.root)
    data = open_dataset(d.source, "pretrain", root=d.root, download=d.download, strict=d.strict,
                        subset=d.subset, seed=spec.runtime.seed, image_size=image_size, classes=d.classes)
    spec = resolve_online_knn(resolve_pretrain(spec, image_size, len(data), data.channels), len(data))
    require_trackers(spec.runtime.log)
    if resume is not None and data.fingerprint != meta["data"]["fingerprint"]:
        raise UserError(f"The data of {d.source} differs from the data this run was started on "
                        f"(fingerprint {data.fingerprint} vs {meta['data']['fingerprint']})",
                        "resume with the same dataset, or start a new run")
    device = pick_device(distributed.device_for(spec.runtime.device))
    distributed.init(device)
    if spec.optim.batch_size % distributed.world():
        raise UserError(f"--batch-size {spec.optim.batch_size} (the global batch) cannot be shared equally by "
                        f"{distributed.world()} processes", f"pass a multiple of {distributed.world()}")
    check_micro_batches(spec.optim.batch_size, spec.optim.accumulate_steps)
    torch.manual_seed(spec.runtime.seed)
    method = build_method(spec, DataFacts.of(data), init=tensors is None).to(device)  # resumed: the checkpoint's
    if distributed.world() > 1 and spec.runtime.sync_bn:
        distributed.sync_batch_norm(method, device)
    optimizer = build_optimizer(method, spec.optim, device)
    if run_dir is None:
        run_dir = distributed.broadcast(new_run_dir(spec))  # rank 0's choice (runs/NAME-2 may race otherwise)
    run = Run(spec, run_dir, data, method, optimizer, device, model=data_parallel(method, device),
              init=method.init_record if tensors is None else meta.get("init"))
    if tensors is not None:
        load_state(method, optimizer, {k: v.to(device) if not k.startswith("rng.") else v for k, v in tensors.items()})
        run.step, run.resumed = int(meta["step"]), True
        if run.step > run.total_steps:
            raise UserError(f"The run in {run_dir} has done {run.step} steps ({run.step / run.steps_per_epoch:g} "
                            f"epochs), more than --epochs {spec.optim.epochs} gives",
                            f"pass --epochs {-(-run.step // run.steps_per_epoch)} or more to extend it")
        run.last_metrics = meta.get("metrics", {})
    return run


def data_parallel(method: Method, device: torch.device) -> torch.nn.Module:
    """The method wrapped in DistributedDataParallel under torchrun (gradients averaged over the processes during
    backward); the method itself otherwise. What a loss gathers across processes is the method's own business, and
    so are its buffers: queues and banks are fed the gathered batch, so they stay equal without DDP re-sending
    rank 0's (a 65k-key queue or an ImageNet bank at every step); SwAV's queue is per process, as in its code."""
    if distributed.world() == 1:
        return method
    import inspect
    from torch.nn.parallel import DistributedDataParallel
    newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters  # newer torch's name for it
    return DistributedDataParallel(method, device_ids=[device.index] if device.type == "cuda" else None,
                                   **({"forward_sync_buffers": False} if newer else {"broadcast_buffers": False}))


def check_micro_batches(batch: int, accumulate: int) -> None:
    parts = accumulate * distributed.world()
    if batch % parts or batch // parts < 2:
        raise UserError(f"--batch-size {batch} cannot be split into --accumulate-steps {accumulate} equal micro-batches"
                        + (f" on each of {distributed.world()} processes" if distributed.world() > 1 else "")
                        + " of at least 2 images", f"pass a --batch-size that is a multiple of {parts} (at least "
                        f"{2 * parts}), or fewer --accumulate-steps")


def with_resumable(saved: PretrainSpec, given: PretrainSpec) -> PretrainSpec:
    """The spec a run was started with, and the RESUMABLE fields that were given again."""
    return saved.model_copy(update={section: getattr(saved, section).model_copy(update={
        k: getattr(getattr(given, section), k) for k in fields if k in getattr(given, section).model_fields_set})
        for section, fields in RESUMABLE.items()})


def started_without_checkpoint(resume: Path) -> bool:
    """A run directory with the spec.json of a started run but no checkpoint yet."""
    resume = Path(resume)
    return resume.is_dir() and (resume / "spec.json").is_file() and not (resume / ckpt.CHECKPOINT_NAME).exists()


def restart_spec(given: PretrainSpec, run_dir: Path) -> PretrainSpec:
    """--resume of a run killed before its first checkpoint: it starts again from step 0 with its spec.json (the
    same seed, so it becomes the run it would have been)."""
    try:
        saved = PretrainSpec.model_validate(json.loads((run_dir / "spec.json").read_text()))
    except (OSError, ValueError) as err:
        raise UserError(f"{run_dir} holds no checkpoint yet and its spec.json cannot be read ({err})",
                        f"start the run again without --resume (e.g. with --out {run_dir} after removing it)") from None
    return with_resumable(saved, given)


def new_run_dir(spec: PretrainSpec) -> Path:
    out = spec.runtime.out
    if out is not None:
        if (out / ckpt.CHECKPOINT_NAME).exists():
            raise UserError(f"The run directory {out} already holds a run",
                            f"continue it with --resume {out}, or choose another --out")
        existing = next(p for p in (out, *out.parents) if p.exists())  # what the run's folders will be made in
        if not existing.is_dir():
            raise UserError(f"--out {out}: {existing} is a file, not a folder",
                            "give --out a folder path (it is created if missing)")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise UserError(f"--out {out}: the folder {existing} is not writable",
                            "give --out a folder you can write to")
        return out
    name = Path(spec.data.source).name if Path(spec.data.source).exists() else spec.data.source
    base = Path("runs") / f"{spec.method.name}-{spec.backbone.name.replace(':', '-')}-{name}"  # timm:NAME
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def write_spec(run: Run) -> None:
    """spec.json, written atomically (a full disk leaves the old file or none, never an empty one)."""
    text = json.dumps(run.spec.model_dump(mode="json"), indent=2) + "\n"
    try:
        ckpt.atomic_write(run.dir / "spec.json", lambda tmp: Path(tmp).write_text(text))
    except OSError as err:
        raise UserError(f"Could not write {run.dir / 'spec.json'} ({err.strerror or err})",
                        "free disk space or choose another --out, and run again") from None


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


def optimisation_step(run: Run, micro_batches: list[tuple[list[torch.Tensor], torch.Tensor]]) -> dict[str, float]:
    """Forward, loss check and backward of each micro-batch (views ready on the device, dataset indices; one unless
    --accumulate-steps), then the method's pre-step hook, one optimiser step and its post-step hook (momentum
    updates): the model's share of a training step, and all of a model-only benchmark step. Returns the method's
    outputs ('loss' and the scalars it reports), averaged over the micro-batches."""
    progress, parts = run.step / run.total_steps, len(micro_batches)
    run.optimizer.zero_grad(set_to_none=True)
    sums: dict = {}
    for i, (views, indices) in enumerate(micro_batches):
        last = i == parts - 1  # DDP averages the gradients across processes once, after the last micro-batch
        with (nullcontext() if last or run.model is run.method else run.model.no_sync()):
            with autocast(run.device, run.spec.runtime.amp):
                out = run.model(views, indices, progress)
            loss = out["loss"]
            if distributed.any_rank(not torch.isfinite(loss), run.device):  # all processes stop together
                raise TrainingStopped(
                    f"The loss became {loss.item() if not torch.isfinite(loss) else 'non-finite on another process'} at step {run.step + 1} (epoch {run.step // run.steps_per_epoch + 1}); "
                    "training stopped", "lower --lr or check the data; the last good checkpoint is kept"
                    + (f" at {run.checkpoint_path} (resume with --resume {run.dir} --lr LOWER)" if run.checkpoint_path.exists()
                       else ""),
                    exit_code=3)
            (loss / parts).backward()  # the summed gradients are those of the mean over the micro-batches
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + torch.as_tensor(v).detach().double() / parts
    check_gradients(run)
    run.method.before_optimizer_step(progress)
    run.optimizer.step()
    run.method.after_step((run.step + 1) / run.total_steps)
    return sums


def log(run: Run, metrics_file, record: dict, trackers: Optional[Trackers] = None) -> None:
    """Append one record to metrics.jsonl (rank 0 only: others have no file), then hand it to the --log trackers.
    A write that fails (a full disk) stops the run with the last checkpoint intact; the torn line it may leave is
    dropped on resume (trim_metrics)."""
    if metrics_file is None:
        return
    line = memoryview((json.dumps(record) + "\n").encode())
    try:
        while line:
            line = line[metrics_file.write(line):]
    except OSError as err:
        raise UserError(f"Could not write {run.dir / 'metrics.jsonl'} at step {run.step} ({err.strerror or err})",
                        "free disk space and continue with --resume " + str(run.dir) + (
                            f" from the intact checkpoint {run.checkpoint_path}" if run.checkpoint_path.exists()
                            else " (it starts again: no checkpoint was written yet)")) from None
    if trackers is not None:
        trackers.write(record)


def check_gradients(run: Run) -> None:
    """A finite loss can still give NaN/inf gradients (an overflow in the backward pass); the step they would
    take breaks every weight, so the run stops before it, with the last checkpoint intact."""
    grads = [p.grad for group in run.optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not grads or torch.isfinite(torch.stack(torch._foreach_norm(grads))).all():
        return
    broken = [name for name, p in run.method.named_parameters() if p.grad is not None and not p.grad.isfinite().all()]
    raise TrainingStopped(
        f"The gradients became non-finite at step {run.step + 1} (epoch {run.step // run.steps_per_epoch + 1}, in "
        f"{', '.join(broken[:3])}{', …' if len(broken) > 3 else ''}) although the loss was finite; training stopped "
        "before the step", "lower --lr or check the data; the last good checkpoint is kept"
        + (f" at {run.checkpoint_path} (resume with --resume {run.dir} --lr LOWER)" if run.checkpoint_path.exists()
           else ""), exit_code=3)


def trim_metrics(path: Path, step: int, steps_per_epoch: int) -> None:
    """Before a resumed run appends: keep the records up to the checkpoint's step, so that each step is logged
    once; the steps run after it by the interrupted process, and a line torn by a kill, are dropped."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        done = record["epoch"] * steps_per_epoch if record.get("type") == "epoch" else record.get("step", 0)
        if done <= step:
            kept.append(line + "\n")
    ckpt.atomic_write(path, lambda tmp: Path(tmp).write_text("".join(kept)), mkdir=False)


@contextmanager
def run_lock(run: Run):
    """One process at a time writes a run directory: an exclusive flock on <run>/.lock, which the OS releases when
    the process ends however it ends, so a killed run leaves no stale lock. A new run also finds the folder still
    free of checkpoints once it holds the lock (another run may have finished there since `prepare`)."""
    run.dir.mkdir(parents=True, exist_ok=True)
    lock = (run.dir / ".lock").open("a+")
    try:
        if fcntl is not None:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.seek(0)
                raise UserError(f"Another contrastive process ({lock.read().strip() or 'pid unknown'}) is training "
                                f"in {run.dir} right now", "wait for it to end, or give this run another --out") from None
        if not run.resumed and run.step == 0 and run.checkpoint_path.exists():
            raise UserError(f"The run directory {run.dir} already holds a run",
                            f"continue it with --resume {run.dir}, or choose another --out")
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}\n")
        lock.flush()
        for stale in run.dir.glob(".*.tmp"):  # atomic writes a killed process left half done; nobody else writes here
            stale.unlink(missing_ok=True)
        yield
    finally:
        lock.close()  # releases the flock


def train(run: Run, progress=None, on_step: Optional[Callable[[Run, dict], None]] = None,
          on_epoch: Optional[Callable[[Run, dict], None]] = None) -> dict:
    """Train from run.step to the end; returns the last epoch's metrics. Raises TrainingStopped on Ctrl-C, SIGTERM,
    NaN or, with --stop-on-collapse, a collapse seen by the monitor; UserError when another process trains in the
    same run directory. Under torchrun rank 0 holds the lock and writes every file."""
    from .losses import GATHERING
    GATHERING["on"] = run.spec.runtime.gather
    with ExitStack() as stack:
        failed = None
        if distributed.is_main():
            try:
                stack.enter_context(run_lock(run))
            except UserError as err:
                failed = err
        failed = distributed.broadcast(failed)  # every process stops if rank 0 cannot take the directory
        if failed is not None:
            raise failed
        try:
            return training_loop(run, progress, on_step, on_epoch)
        except RuntimeError as err:  # torch.distributed's errors (DistBackendError, gloo's) are RuntimeErrors
            if distributed.world() == 1 or not distributed.peer_failure(err):
                raise
            raise TrainingStopped(
                f"Another process of this torchrun job stopped during step {run.step + 1} "
                f"({str(err).strip().splitlines()[0][:200]}), so this one stopped too", "see that process's message "
                "(torchrun prints which rank failed and how); the last checkpoint is intact"
                + (f": continue with torchrun ... pretrain --resume {run.dir}, on any number of processes"
                   if run.checkpoint_path.exists() else ""), exit_code=EXIT_PEER) from None


def step_groups(batches, parts: int):
    """Consecutive groups of `parts` micro-batches: one optimiser step's."""
    group = []
    for b in batches:
        group.append(b)
        if len(group) == parts:
            yield group
            group = []


def training_loop(run: Run, progress, on_step, on_epoch) -> dict:
    s, method, device = run.spec, run.method, run.device
    main, batch, parts = distributed.is_main(), s.optim.batch_size, s.optim.accumulate_steps
    if main:
        write_spec(run)
    monitor = CollapseMonitor(run.data, run.spec, run.device) if s.monitor.images and main else None
    online_knn = OnlineKnn(s, device, {"mean": list(run.data.mean), "std": list(run.data.std)}) \
        if s.monitor.eval_every else None  # every process: they share the feature extraction
    views = method.views(s.augment, s.data.image_size, run.data.mean, run.data.std)
    generator = torch.Generator(device=device)
    warmup = round(s.optim.warmup_epochs * run.steps_per_epoch)
    workers = default_workers(s.runtime.workers)
    if run.step and main:
        trim_metrics(run.dir / "metrics.jsonl", run.step, run.steps_per_epoch)
    # unbuffered: a record is on disk when written, and a failed write leaves nothing to flush again at close
    metrics_file = (run.dir / "metrics.jsonl").open("ab" if run.step else "wb", buffering=0) if main else None
    trackers = Trackers(run) if main and s.runtime.log else None
    method.train()
    epoch_stats: dict = {}
    with interrupt_flag() as interrupted, metrics_file or nullcontext(), \
            closing(trackers) if trackers else nullcontext():
        while run.step < run.total_steps:
            epoch, offset = divmod(run.step, run.steps_per_epoch)
            order = epoch_order(len(run.data), s.runtime.seed, epoch)[offset * batch:run.steps_per_epoch * batch]
            # each step's batch: `parts` micro-batches one after another, each shared by the processes in rank order
            order = order.view(-1, parts, distributed.world(), run.micro_batch)[:, :, distributed.rank()].reshape(-1)
            sums, steps, images, wait, augmenting, t_epoch = {}, 0, 0, 0.0, 0.0, time.perf_counter()
            t_ready = time.perf_counter()
            for step_batches in step_groups(run.data.batches(order, run.micro_batch, workers=workers, drop_last=True),
                                            parts):
                t_got = time.perf_counter()
                wait += t_got - t_ready
                lr = set_lr(run.optimizer, lr_factor(run.step, run.total_steps, warmup, s.optim.schedule, s.optim.milestones))
                set_weight_decay(run.optimizer, s.optim, run.step, run.total_steps)
                micro_batches = []
                with Stopwatch(device) as augment:
                    for part, (x, _, indices) in enumerate(step_batches):
                        x = x.to(device, non_blocking=True)
                        seed_step(generator, s.runtime.seed, run.step)  # each view draws for the whole batch
                        rows = (part * batch // parts + distributed.rank() * run.micro_batch, batch)
                        micro_batches.append(([v(x, generator, rows=rows) for v in views],  # fp32, outside autocast
                                              indices.to(device)))
                out = optimisation_step(run, micro_batches)
                local_images = sum(len(indices) for _, indices in micro_batches)
                # the step's scalars as means over the processes
                scalars = dict(zip(out, distributed.mean_of(torch.stack(list(out.values())).to(device)).tolist()))
                run.step += 1
                steps += 1
                for k, v in scalars.items():
                    sums[k] = sums.get(k, 0.0) + v
                t_done = time.perf_counter()
                images += local_images * distributed.world()
                augmenting += augment.seconds()
                record = {"step": run.step, "epoch": epoch + 1, **scalars, "lr": lr,
                          "images_per_s": local_images * distributed.world() / (t_done - t_ready), "data_wait": t_got - t_ready,
                          "augment": augment.seconds()}
                log(run, metrics_file, record, trackers)
                if progress is not None:
                    progress(run, record, images / (t_done - t_epoch))
                if on_step is not None:
                    on_step(run, record)
                if distributed.any_rank(interrupted["set"], device):  # all processes stop at the same step
                    path = run.save()
                    raise TrainingStopped(f"Interrupted by {interrupted['by'] or 'a signal to another process'} at step {run.step} of "
                                          f"{run.total_steps}; a resumable checkpoint was written to {path}",
                                          f"continue with: contrastive pretrain --resume {run.dir}", exit_code=130)
                t_ready = time.perf_counter()  # the next step's clock starts after this step's hooks
            elapsed = time.perf_counter() - t_epoch
            epoch_stats = {"epoch": epoch + 1, **{k: v / max(1, steps) for k, v in sums.items()},
                           "images_per_s": images / elapsed, "data_wait_share": wait / elapsed,
                           "augment_share": augmenting / elapsed,
                           "seconds": elapsed, "skipped_files": len(run.data.skipped)}
            if monitor is not None:
                epoch_stats["collapse"] = monitor(method)
            if online_knn is not None and ((epoch + 1) % s.monitor.eval_every == 0 or run.step >= run.total_steps):
                epoch_stats["knn"] = online_knn(method)
            run.last_metrics = epoch_stats
            log(run, metrics_file, {"type": "epoch", **epoch_stats}, trackers)
            if on_epoch is not None:
                on_epoch(run, epoch_stats)
            collapsed = distributed.broadcast(monitor is not None and epoch_stats["collapse"]["alarm"])
            if (epoch + 1) % s.runtime.checkpoint_every == 0 or run.step >= run.total_steps or (
                    collapsed and s.monitor.stop_on_collapse):
                run.save()
            if collapsed and s.monitor.stop_on_collapse:
                c = epoch_stats.get("collapse") or {"verdict": "a collapse", "reason": "seen by rank 0"}
                raise TrainingStopped(f"The collapse monitor saw {c['verdict']} for {monitor.streak if monitor else s.monitor.patience} epoch(s) in a row, "
                                      f"up to epoch {epoch + 1} ({c['reason']}); "
                                      f"training stopped with a checkpoint at {run.checkpoint_path}",
                                      "see docs/inspect-collapse.md for the usual causes (a missing predictor or "
                                      "stop-gradient, no batch norm in the heads, too high an lr); inspect it with "
                                      f"contrastive inspect-collapse {run.dir}", exit_code=4)
    return epoch_stats

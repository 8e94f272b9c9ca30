"""`contrastive pretrain --benchmark STEPS`: pretraining throughput against the model-only bound.

The full step is timed inside the real training loop (`train.train`), so it is everything a run does per
step: waiting for the batch, the copy to the device, the view augmentation, forward, backward, optimiser
step, momentum update, reading the loss back and writing the metrics line. The model-only bound is the
same method and optimiser (`train.optimisation_step`) stepping on one batch of views that was augmented
once and already sits on the device. The two alternate in blocks of steps, so load from other processes
slows both alike. Each throughput is the median over its blocks; the ratio is the median over block pairs
(a full block and the model-only block right after it, run under nearly the same load) of their ratio.

Everything runs in a temporary run directory that is deleted afterwards: a benchmark leaves no run
directory or checkpoint behind. The model-only steps do train the model (on a fixed batch), so the state
after a benchmark is not that of a normal run; nothing of it is kept.
"""

from __future__ import annotations

import math
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from .runtime import default_workers
from .train import Run, TrainingStopped, optimisation_step, train

WARMUP_STEPS = 3  # untimed steps of each kind first: allocator, oneDNN/cuDNN kernel choice, thread pools
BLOCK_STEPS = 5  # steps per timed block; blocks of full and model-only steps alternate
PREFETCH_FACTOR = 2  # batches each DataLoader worker decodes ahead (torch's default)


class _Finished(Exception):
    """Raised from the step hook once the last block is timed: ends the training loop early."""


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_rss_mib(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident memory in MiB of this process, or of its largest finished child (loader workers)."""
    peak = resource.getrusage(who).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def ready_views(run: Run) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One batch of views, augmented once and left on the device, with its dataset indices."""
    s = run.spec
    x, _, indices = next(run.data.batches(torch.arange(s.optim.batch_size), s.optim.batch_size, workers=0))
    x = x.to(run.device)
    generator = torch.Generator(device=run.device).manual_seed(s.runtime.seed)
    views = [v(x, generator) for v in run.method.views(s.augment, s.data.image_size, run.data.mean, run.data.std)]
    return views, indices.to(run.device)


def for_benchmark(run: Run, needed_steps: int) -> None:
    """Enough epochs for the benchmark's steps, and no checkpoint saves or collapse checks in between (they
    would be timed, and the monitor's batch would count in the peak memory)."""
    s = run.spec
    epochs = max(s.optim.epochs, math.ceil(needed_steps / run.steps_per_epoch))
    run.spec = s.model_copy(update={"optim": s.optim.model_copy(update={"epochs": epochs}),
                                    "runtime": s.runtime.model_copy(update={"checkpoint_every": epochs + 1}),
                                    "monitor": s.monitor.model_copy(update={"images": 0})})


def benchmark(run: Run, steps: int, on_block: Optional[Callable[[str, int, int], None]] = None) -> dict:
    """Time `steps` full training steps and `steps` model-only steps, interleaved in blocks; return the figures.

    For streamed folders, DataLoader workers decode up to `lead` batches ahead while the model-only
    steps run; so that this head start does not flatter the full steps (nor the refilling slow the
    model-only steps), every block of either kind starts with `lead` untimed steps.
    """
    block = min(BLOCK_STEPS, steps)
    blocks = math.ceil(steps / block)
    streamed = run.data.images is None
    lead = PREFETCH_FACTOR * default_workers(run.spec.runtime.workers) if streamed else 0
    for_benchmark(run, WARMUP_STEPS + blocks * (lead + block) + 1)
    views, indices = ready_views(run)
    device = run.device
    full_s, model_s, wait, augment = [], [], 0.0, 0.0
    position, start = -WARMUP_STEPS, 0.0  # steps into the current full block (negative: warm-up); its clock

    def model_steps(n: int) -> float:
        synchronize(device)
        began = time.perf_counter()
        for _ in range(n):
            optimisation_step(run, [(views, indices)])
        synchronize(device)
        return time.perf_counter() - began

    def on_step(_: Run, record: dict) -> None:
        nonlocal position, start, wait, augment
        position += 1
        if position == 0:  # end of the warm-up: warm the model-only steps too, then the first block starts
            model_steps(WARMUP_STEPS)
        if position <= lead:  # warm-up, or a block's untimed lead; the clock starts when it is over
            start = time.perf_counter()
            return
        wait += record["data_wait"]
        augment += record["augment"]
        if position < lead + block:
            return
        full_s.append(time.perf_counter() - start)
        if on_block is not None:
            on_block("full", len(full_s), blocks)
        model_steps(lead)
        model_s.append(model_steps(block))
        if on_block is not None:
            on_block("model-only", len(model_s), blocks)
        if len(model_s) == blocks:
            raise _Finished
        position, start = 0, time.perf_counter()

    scratch = Path(tempfile.mkdtemp(prefix="contrastive-benchmark-"))
    run.dir = scratch
    load_before = os.getloadavg()
    try:
        train(run, on_step=on_step)
    except _Finished:
        pass
    except TrainingStopped as stop:
        if stop.exit_code != 130:
            raise
        raise TrainingStopped("The benchmark was interrupted; nothing was written", "run it again",
                              exit_code=130) from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return summary(run, full_s, model_s, wait, augment, block, lead, load_before)


def summary(run: Run, full_s: list[float], model_s: list[float], wait: float, augment: float, block: int,
            lead: int, load_before: tuple[float, ...]) -> dict:
    s, batch = run.spec, run.spec.optim.batch_size
    full = statistics.median(block * batch / t for t in full_s)
    bound = statistics.median(block * batch / t for t in model_s)
    timed = sum(full_s)
    data = run.data
    result = {
        "method": s.method.name, "backbone": s.backbone.name, "data": data.name, "images": len(data),
        "image_size": s.data.image_size, "batch_size": batch, "views": len(run.method.views(
            s.augment, s.data.image_size, data.mean, data.std)),
        "device": str(run.device), "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "workers": default_workers(s.runtime.workers) if data.images is None else 0,
        "amp": run.device.type == "cuda" and s.runtime.amp is not False,
        "steps": block * len(full_s), "warmup_steps": WARMUP_STEPS, "block_steps": block, "blocks": len(full_s),
        "untimed_steps_per_block": lead,
        "full_images_per_s": full, "model_only_images_per_s": bound,
        "ratio": statistics.median(model / full for full, model in zip(full_s, model_s)),  # time ratio = rate ratio
        "full_block_images_per_s": [block * batch / t for t in full_s],
        "model_only_block_images_per_s": [block * batch / t for t in model_s],
        "data_wait_share": wait / timed, "augment_share": augment / timed,
        "peak_rss_mib": peak_rss_mib(), "peak_worker_rss_mib": peak_rss_mib(resource.RUSAGE_CHILDREN),
        "dataset_in_memory_mib": data.images.numel() / 2 ** 20 if data.images is not None else 0.0,
        "streamed_files": len(data.files) if data.files is not None else 0,
        "load_average": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
    }
    if run.device.type == "cuda":
        result["cuda_peak_mib"] = torch.cuda.max_memory_allocated(run.device) / 2 ** 20
    return result

"""Each gathered loss, computed by 2 processes (gloo) on their halves of a batch, is the loss of the whole batch on
one process: the mean of the processes' values equals the single-process value, and each process's inputs get the
gradient of the whole-batch loss (times the number of processes, which DistributedDataParallel's averaging of the
parameter gradients divides out). Batch statistics (GlobalBatchNorm) and SwAV's Sinkhorn codes give each process
its rows of the whole-batch result."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from gathered_losses_cases import CASES, PER_SAMPLE, inputs  # noqa: E402

WORLD = 2
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}  # Barlow Twins and VICReg compute in fp32 whatever the input's dtype


@pytest.fixture(scope="module")
def processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("gathered")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                           str(WORLD), str(Path(__file__).with_name("gathered_losses_worker.py")), str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [load_file(out / f"rank{r}.safetensors") for r in range(WORLD)]


@pytest.mark.parametrize("name", CASES)
def test_the_gathered_computation_on_two_processes_is_the_whole_batch_computation_on_one(name, processes):
    full = [x.clone().requires_grad_(True) for x in inputs(name)]
    value = CASES[name](*full)
    value.sum().backward()
    share = len(full[0]) // WORLD
    if name in PER_SAMPLE:  # each process holds its rows of the whole-batch result
        torch.testing.assert_close(torch.cat([p[f"{name}.value"] for p in processes]), value.detach(), **TOLERANCE)
        scale = 1
    else:  # the processes' mean is the whole-batch loss
        torch.testing.assert_close(torch.stack([p[f"{name}.value"] for p in processes]).mean(), value.detach(), **TOLERANCE)
        scale = WORLD
    for i, x in enumerate(full):
        grad = x.grad if x.grad is not None else torch.zeros_like(x)  # an input the loss detaches (MoCo v3's keys)
        for r, p in enumerate(processes):
            torch.testing.assert_close(p[f"{name}.grad{i}"] / scale, grad[r * share:(r + 1) * share], **TOLERANCE,
                                       msg=lambda m: f"{name}, gradient of input {i} on process {r}: {m}")

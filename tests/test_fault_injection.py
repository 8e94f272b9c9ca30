"""Nothing is lost when a run is killed (docs/reliability.md). A pretraining process killed with SIGKILL at any point
— before its first checkpoint, mid-epoch, inside a checkpoint write, after its last step, or several times — and
then resumed with `--resume` ends bit-identical to the run that was never interrupted (every tensor of the final
checkpoint, optimiser and RNG state included, and every step's loss), logs each step exactly once and leaves no temp
file. One method per kind of state beyond the weights: a queue (MoCo v2), an EMA target (BYOL), a memory bank
(InstDisc). SIGINT and SIGTERM stop cleanly with a resumable checkpoint."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from contrastive_cli.cli import app

KILLER = Path(__file__).with_name("fault_injection.py")
METHODS = {"mocov2": ["--queue-size", "64"], "byol": [], "instdisc": ["--negatives", "32"]}  # NCE: noise draws from the RNG
RUN = ["--backbone", "small_cnn", "--subset", "64", "--batch-size", "16", "--epochs", "3", "--checkpoint-every", "1",
       "--monitor-images", "0"]  # 4 steps per epoch, a checkpoint after steps 4, 8 and 12
STEPS = 12
POINTS = {  # (what the killer counts, the count at which it kills), counted within the killed process
    "before the first checkpoint": ("step", 2),
    "mid-epoch": ("step", 6),  # after the checkpoint of step 4; the steps after it are logged, then lost
    "inside a checkpoint write": ("save", 2),  # half of step 8's checkpoint written to its temp file
    "after the last step": ("step", STEPS),  # the update made, the final checkpoint not yet written
}


def pretrain(method, out):
    return ["pretrain", "--method", method, *METHODS[method], *RUN, "--out", str(out)]


def run_killed(point, count, args, signal_exit=-9):
    """Run `contrastive ARGS` in a subprocess that kills itself at the point; returns its output."""
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # the reference's threads: same sums
    proc = subprocess.run([sys.executable, str(KILLER), point, str(count), "--", *args], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == signal_exit, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def resume(out):
    result = CliRunner().invoke(app, ["pretrain", "--resume", str(out)])
    assert result.exit_code == 0, result.output
    return result.output


def step_losses(out):
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r["epoch"] for r in records if r.get("type") == "epoch"]
    return {r["step"]: r["loss"] for r in records if r.get("type") != "epoch"}, [r["step"] for r in records
                                                                                 if r.get("type") != "epoch"], epochs


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference run of each method, trained once in this process."""
    runs = {}

    def get(method):
        if method not in runs:
            out = tmp_path_factory.mktemp("reference") / method
            result = CliRunner().invoke(app, pretrain(method, out))
            assert result.exit_code == 0, result.output
            runs[method] = out
        return runs[method]
    return get


def assert_same_run(out, reference):
    final, expected = load_file(out / "checkpoint.safetensors"), load_file(reference / "checkpoint.safetensors")
    assert final.keys() == expected.keys()
    assert [k for k in final if not torch.equal(final[k], expected[k])] == []  # every tensor, bit for bit
    losses, steps, epochs = step_losses(out)
    assert steps == list(range(1, STEPS + 1)) and epochs == [1, 2, 3]  # each step and epoch logged exactly once
    assert losses == step_losses(reference)[0]  # and each step computed as in the uninterrupted run
    assert sorted(p.name for p in out.iterdir()) == [".lock", "checkpoint.safetensors", "curves.png",  # no leftovers
                                                     "metrics.jsonl", "spec.json"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("point", POINTS)
def test_a_run_killed_at_any_point_resumes_to_the_uninterrupted_result(method, point, uninterrupted, tmp_path):
    out = tmp_path / "run"
    run_killed(*POINTS[point], pretrain(method, out))
    if point == "inside a checkpoint write":  # the kill left a torn temp file; the checkpoint is the previous one
        assert list(out.glob(".checkpoint.safetensors.*.tmp"))
        assert load_file(out / "checkpoint.safetensors")  # intact
    assert (out / "checkpoint.safetensors").exists() == (point != "before the first checkpoint")
    resume(out)
    assert_same_run(out, uninterrupted(method))


def test_a_run_killed_three_times_still_ends_as_the_uninterrupted_one(uninterrupted, tmp_path):
    out = tmp_path / "run"
    run_killed("step", 2, pretrain("mocov2", out))  # before the first checkpoint
    run_killed("step", 7, ["pretrain", "--resume", str(out)])  # from step 0 again: killed at step 7
    run_killed("save", 1, ["pretrain", "--resume", str(out)])  # from step 4: killed writing step 8's checkpoint
    assert "resuming at step 4 of 12" in resume(out)
    assert_same_run(out, uninterrupted("mocov2"))


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_sigint_and_sigterm_stop_with_a_resumable_checkpoint(signal_name, uninterrupted, tmp_path):
    out = tmp_path / "run"
    text = " ".join(run_killed(f"signal-{signal_name}", 6, pretrain("byol", out), signal_exit=130).split())
    assert f"Interrupted by {'Ctrl-C (SIGINT)' if signal_name == 'SIGINT' else 'SIGTERM'} at step 6 of 12" in text
    assert "Traceback" not in text and f"--resume {out}" in text.replace("│ ", "")
    assert load_file(out / "checkpoint.safetensors") and step_losses(out)[1] == list(range(1, 7))
    resume(out)
    assert_same_run(out, uninterrupted("byol"))

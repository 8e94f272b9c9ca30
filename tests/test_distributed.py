"""Data parallelism under torchrun (docs/distributed.md), on CPU with gloo and 2 processes: a run with 2 ranks of B/2
images equals the single-process run of batch B (same loss at every step, same final weights, within float
tolerance), because each method gathers what its paper's loss sees (in-batch negatives, MoCo's keys and
ShuffleBN, DINO's centre) and batch norm runs over the global batch where the single run's does (--sync-bn). Without
gathering, SimCLR's loss is a different one. Only rank 0 writes."""

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

RUN = ["--backbone", "small_cnn", "--subset", "256", "--batch-size", "64", "--epochs", "2", "--monitor-images", "0",
       "--device", "cpu"]  # 4 steps per epoch
# lr a tenth of the recipe's: at the recipe's, the first steps of a tiny model amplify float rounding so much that one
# process on 1 and on 2 threads already differ by 1e-3 after 8 steps; here the three runs agree to 1e-6
METHODS = {
    "simclr": ["--lr", "0.03"],  # the recipe turns --sync-bn on
    "byol": ["--lr", "0.02"],
    "mocov2": ["--lr", "0.003", "--bn-splits", "1", "--sync-bn", "--queue-size", "256"],
    "dino": ["--lr", "0.003", "--sync-bn", "--local-crops", "2", "--out-dim", "256"],  # multi-crop
    "instdisc": ["--lr", "0.003", "--sync-bn", "--negatives", "32"],  # a memory bank, NCE noise drawn per image
    # two micro-batches of 32 per step: on 2 processes each takes 16 of every micro-batch
    "simclr+accumulate": ["--lr", "0.01", "--accumulate-steps", "2"],  # micro-batches of 32 amplify rounding more
}


KILLER = Path(__file__).with_name("fault_injection.py")


def torchrun(*args, processes=2, entry=("-m", "contrastive_cli"), ok=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                           str(processes), *entry, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert (done.returncode == 0) == ok, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def single(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
            if '"type"' not in line]


def weights(out):
    return {k: v for k, v in load_file(out / "checkpoint.safetensors").items() if not k.startswith("rng.")}


@pytest.mark.parametrize("method", METHODS)
def test_two_processes_of_half_the_batch_equal_one_process_of_the_whole_batch(method, tmp_path):
    flags = ["pretrain", "--method", method.split("+")[0], *METHODS[method], *RUN]
    # the reference is one process on one thread, as each of the two: only the split of the batch differs (one
    # process on 2 threads already rounds differently, more than the tolerances below on some CPUs)
    torchrun(*flags, "--out", tmp_path / "one", processes=1)
    text = torchrun(*flags, "--out", tmp_path / "two")
    assert text.count("done:") == 1  # rank 0 speaks for both
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 8
    # relative 3e-4: BYOL's losses drift apart by up to 1.1e-4 by step 7 on one machine (an AMD EPYC; 1e-6 on
    # another), whatever its lr (0.02 or 0.01): rounding that the regression loss amplifies, not a missing term
    assert one == pytest.approx(two, rel=3e-4, abs=1e-5), (one, two)
    expected, got = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert expected.keys() == got.keys()
    # every weight and buffer as a whole, |a - b| ≤ 1e-3·|a| + 1e-5·√n (an RMS gap of 1e-5 on small tensors such as
    # batch-norm biases, which 8 steps move by ~1e-3); batch-norm running statistics 3x that: they sum every step's
    # rounding, and on one CPU (an AMD EPYC) BYOL's early running means differ by 1.75e-3·|a| between 1 and 2
    # processes (0.8e-3·|a| when the one process runs on 2 threads). The optimiser's momentum is left out: for
    # a bias in front of a batch norm it sums gradients that are zero up to rounding.
    def tolerance(key, a):
        scale = 3 if key.endswith(("running_mean", "running_var")) else 1
        return scale * (1e-3 * a.norm() + 1e-5 * a.numel() ** 0.5)
    gap = {k: ((expected[k].double() - got[k].double()).norm() / tolerance(k, expected[k].double())).item()
           for k in expected if expected[k].is_floating_point() and not k.startswith("optim.")}
    assert max(gap.values()) < 1, sorted(gap.items(), key=lambda kv: -kv[1])[:5]


def test_without_gathering_simclr_scores_only_the_local_negatives(tmp_path):
    flags = ["pretrain", "--method", "simclr", *RUN, "--epochs", "1"]
    single(*flags, "--out", tmp_path / "one")
    torchrun(*flags, "--no-gather", "--out", tmp_path / "local")
    one, local = losses(tmp_path / "one"), losses(tmp_path / "local")
    # at initialisation the loss is near log(2N - 1): 2N = 128 views together, 64 on each process alone
    assert one[0] - local[0] > 0.4, (one[0], local[0])


def test_only_rank_0_writes_and_a_two_process_run_resumes_on_one(tmp_path):
    out = tmp_path / "run"
    torchrun("pretrain", "--method", "simclr", *RUN, "--epochs", "1", "--out", out)
    assert sorted(p.name for p in out.iterdir()) == [".lock", "checkpoint.safetensors", "curves.png",  # no leftovers
                                                     "metrics.jsonl", "spec.json"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "type" not in r] == [1, 2, 3, 4]  # each step once, not once per rank
    single("pretrain", "--resume", out, "--epochs", "2")
    assert [json.loads(line).get("step") for line in (out / "metrics.jsonl").read_text().splitlines()
            if '"type"' not in line] == list(range(1, 9))


def test_a_one_process_run_resumes_on_two_as_if_it_had_never_stopped(tmp_path):
    flags = ["pretrain", "--method", "simclr", *METHODS["simclr"], *RUN]
    single(*flags, "--out", tmp_path / "straight")
    killed = subprocess.run([sys.executable, str(KILLER), "step", "5", "--", *flags, "--checkpoint-every", "1",
                             "--out", str(tmp_path / "moved")], capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]  # one process, killed after step 5: checkpoint at step 4
    torchrun("pretrain", "--resume", tmp_path / "moved")  # data order and views are global: 2 processes go on
    assert losses(tmp_path / "moved") == pytest.approx(losses(tmp_path / "straight"), rel=1e-4, abs=1e-5)


def test_a_killed_process_stops_the_job_with_a_message_and_the_last_checkpoint_resumes(tmp_path):
    out = tmp_path / "run"
    text = torchrun("step@1", "6", "--", "pretrain", "--method", "simclr", *METHODS["simclr"], *RUN,
                    "--checkpoint-every", "1", "--out", out, entry=(str(KILLER),), ok=False)  # rank 1: kill -9
    text = " ".join(text.replace("│", " ").split())
    assert "Another process of this torchrun job stopped during step 6" in text, text[-3000:]
    assert f"pretrain --resume {out}" in text
    from contrastive_cli import checkpoint as ckpt
    assert ckpt.read_meta(out)["step"] == 4  # epoch 1's checkpoint, intact
    single("pretrain", "--resume", out)
    assert [json.loads(line).get("step") for line in (out / "metrics.jsonl").read_text().splitlines()
            if '"type"' not in line] == list(range(1, 9))


def test_sigterm_to_torchrun_stops_every_process_at_one_step_with_a_checkpoint(tmp_path):
    """What a scheduler does before a time limit: torchrun forwards SIGTERM to its processes, which stop together."""
    import signal
    import time
    out = tmp_path / "run"
    job = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                            "-m", "contrastive_cli", "pretrain", "--method", "simclr", *RUN, "--epochs", "100",
                            "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 300
    while not (out / "metrics.jsonl").exists() or (out / "metrics.jsonl").read_text().count("\n") < 3:
        assert job.poll() is None and time.monotonic() < deadline, job.communicate()[0][-3000:]
        time.sleep(0.2)
    job.send_signal(signal.SIGTERM)
    text = " ".join(job.communicate(timeout=300)[0].replace("│", " ").split())
    assert "Interrupted by SIGTERM at step" in text, text[-3000:]
    from contrastive_cli import checkpoint as ckpt
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if '"type"' not in line]
    assert ckpt.read_meta(out)["step"] == steps[-1] and steps == list(range(1, steps[-1] + 1))


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrained") / "run"
    single("pretrain", "--method", "simclr", "--backbone", "small_cnn", "--subset", "256", "--batch-size", "64",
           "--epochs", "1", "--monitor-images", "0", "--device", "cpu", "--out", out)
    return out / "checkpoint.safetensors"


def test_evaluations_share_their_feature_extraction_and_give_the_single_process_results(small_checkpoint, tmp_path):
    """knn-eval, linear-probe (each process embeds its share of every augmented batch) and export --embeddings."""
    knn = ["knn-eval", small_checkpoint, "--subset", "500", "--test-subset", "150", "--json"]
    probe = ["linear-probe", small_checkpoint, "--subset", "256", "--test-subset", "150", "--epochs", "2",
             "--batch-size", "64", "--json"]
    embed = ["export", small_checkpoint, "--embeddings", "--split", "test", "--subset", "150", "--json"]
    results = {}
    for name, run in (("one", single), ("two", lambda *a: torchrun(*a).splitlines()[-1])):
        results[name] = [json.loads(run(*knn).splitlines()[-1])]
        results[name].append(json.loads(run(*probe, "--out", tmp_path / f"{name}.probe.safetensors").splitlines()[-1]))
        run(*embed, "--out", tmp_path / f"{name}.embeddings.safetensors")
    assert results["two"][0]["results"] == results["one"][0]["results"]  # the same bank and queries, in order
    assert results["two"][1]["top1"] == results["one"][1]["top1"]
    one, two = (load_file(tmp_path / f"{n}.probe.safetensors") for n in ("one", "two"))
    for key in one:  # the same augmented batches: the same classifier (lr 30 amplifies float rounding)
        torch.testing.assert_close(two[key], one[key], rtol=1e-3, atol=1e-3)
    one, two = (load_file(tmp_path / f"{n}.embeddings.safetensors") for n in ("one", "two"))
    assert torch.equal(one["indices"], two["indices"]) and torch.equal(one["labels"], two["labels"])
    torch.testing.assert_close(two["features"], one["features"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{n}.{kind}.safetensors" for n in ("one", "two") for kind in ("probe", "embeddings"))  # rank 0 wrote once


def test_commands_that_do_not_shard_refuse_torchrun_with_a_message(small_checkpoint):
    text = " ".join(torchrun("inspect-collapse", small_checkpoint, ok=False).replace("│", " ").split())
    assert "inspect-collapse runs as one process" in text and "contrastive inspect-collapse" in text

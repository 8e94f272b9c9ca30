"""No silent wrong answer, no traceback, nothing lost (docs/reliability.md): the kNN vote is exact at any T > 0,
unexpected failures end in one paragraph and a crash log, outputs never overwrite their inputs, SIGTERM stops a run
as Ctrl-C does, and numbers that are not finite never enter a spec."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from contrastive_cli.cli import app
from contrastive_cli.evaluate import weighted_knn

runner = CliRunner()
TINY = ["--backbone", "small_cnn", "--subset", "64", "--batch-size", "32", "--epochs", "1"]


def invoke(*args, **kwargs):
    return runner.invoke(app, [str(a) for a in args], **kwargs)


def one_paragraph(result, *needles, code=2):
    text = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == code, text
    assert "Traceback" not in text
    for needle in needles:
        assert needle in text, text
    return text


# ---- the weighted kNN vote is numerically exact at any temperature -------------------------------------------------


def log_space_vote(bank, bank_labels, queries, k, temperature, classes):
    """The vote written out in log space: log Σ_{neighbours j of class c} exp(s_j/T) = logsumexp, per class."""
    sim = F.normalize(queries, dim=1) @ F.normalize(bank, dim=1).T
    top, idx = sim.double().topk(k, dim=1)
    scores = torch.full((len(queries), classes), -torch.inf, dtype=torch.float64)
    for c in range(classes):
        mine = torch.where(bank_labels[idx] == c, top / temperature, torch.tensor(-torch.inf, dtype=torch.float64))
        scores[:, c] = torch.logsumexp(mine, dim=1)
    return scores.argmax(dim=1)


def clustered(n, classes=10, dim=32, noise=1.6, seed=0):
    """Embeddings of `classes` overlapping clusters (the same centres for every seed) that share a large common
    component, as pooled post-ReLU features do: neighbours have cosines near 0.97, so exp(s/T) overflows float32
    for T below about 0.011."""
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(123)) + 25.0
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    return centres[labels] + noise * torch.randn(n, dim, generator=g), labels


@pytest.mark.parametrize("temperature", [0.1, 0.01, 0.001])
def test_the_knn_vote_matches_a_log_space_computation_at_small_temperatures(temperature):
    bank, bank_labels = clustered(2000)
    queries, labels = clustered(500, seed=1)
    direct = log_space_vote(bank, bank_labels, queries, 20, temperature, 10)
    expected = round(100 * (direct == labels).float().mean().item(), 2)
    assert weighted_knn(bank, bank_labels, queries, labels, [20], temperature, 10)[20]["top1"] == expected


def test_knn_accuracy_does_not_fall_to_chance_as_the_temperature_shrinks():
    """As T → 0 the vote becomes the nearest neighbour's: the accuracy tends to 1-NN's, not to chance (before the
    stable vote, exp(s/T) overflowed below T ≈ 0.011 and top-1 fell to 18 % at T = 0.01 on Fashion-MNIST)."""
    bank, bank_labels = clustered(2000)
    queries, labels = clustered(500, seed=1)
    accuracy = {t: weighted_knn(bank, bank_labels, queries, labels, [20], t, 10)[20]["top1"]
                for t in (0.1, 0.01, 0.005, 0.001, 1e-6)}
    nearest = weighted_knn(bank, bank_labels, queries, labels, [1], 0.1, 10)[1]["top1"]
    assert min(accuracy.values()) > 5 * 10, accuracy  # chance is 10 %
    assert accuracy[1e-6] == nearest, (accuracy, nearest)


# ---- the safety net: an unexpected failure is one paragraph and a crash log ----------------------------------------


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("reliability") / "run"
    result = invoke("pretrain", *TINY, "--method", "simclr", "--out", out)
    assert result.exit_code == 0, result.output
    return out


def broken_knn(*args, **kwargs):
    raise RuntimeError("boom in the vote")


def test_an_unexpected_failure_prints_one_paragraph_and_writes_a_crash_log(pretrained, monkeypatch, crash_logs):
    monkeypatch.setattr("contrastive_cli.evaluate.weighted_knn", broken_knn)
    text = one_paragraph(invoke("knn-eval", pretrained, "--test-subset", 50), "knn-eval failed unexpectedly",
                         "RuntimeError: boom in the vote", "CONTRASTIVE_DEBUG=1", code=70)
    [log] = crash_logs.glob("contrastive-crash-*.log")
    assert str(log) in text.replace(" ", "") or log.name in text.replace(" ", "")
    assert "Traceback" in log.read_text() and "boom in the vote" in log.read_text()


def test_contrastive_debug_shows_the_raw_exception(pretrained, monkeypatch):
    monkeypatch.setattr("contrastive_cli.evaluate.weighted_knn", broken_knn)
    monkeypatch.setenv("CONTRASTIVE_DEBUG", "1")
    result = invoke("knn-eval", pretrained, "--test-subset", 50)
    assert isinstance(result.exception, RuntimeError) and "boom" in str(result.exception)


# ---- outputs never overwrite an input ----------------------------------------------------------------------------


def unchanged(path):
    before = path.read_bytes()
    return lambda: path.read_bytes() == before


@pytest.mark.parametrize("command, flags", [
    ("export", ["--out"]), ("linear-probe", ["--cached", "--epochs", "1", "--out"]),
    ("transfer", ["--data", "synthetic", "--shots", "2", "--epochs", "1", "--out"]),
    ("inspect-collapse", ["--images", "64", "--report"])])
def test_an_output_given_as_the_input_checkpoint_is_refused_before_any_work(pretrained, command, flags):
    checkpoint = pretrained / "checkpoint.safetensors"
    intact = unchanged(checkpoint)
    text = one_paragraph(invoke(command, pretrained, *flags, checkpoint), "is the checkpoint this command reads",
                         "would destroy it")
    assert intact(), text


def test_an_output_over_another_runs_checkpoint_needs_force(pretrained, tmp_path):
    other = tmp_path / "other"
    assert invoke("pretrain", *TINY, "--method", "simsiam", "--out", other).exit_code == 0
    intact = unchanged(other / "checkpoint.safetensors")
    one_paragraph(invoke("linear-probe", pretrained, "--cached", "--epochs", "1", "--out",
                         other / "checkpoint.safetensors"), "pretrain checkpoint of another run", "--force")
    assert intact()
    forced = invoke("linear-probe", pretrained, "--cached", "--epochs", "1", "--out", other / "checkpoint.safetensors",
                    "--force")
    assert forced.exit_code == 0 and not intact(), forced.output


def test_a_probe_batch_larger_than_the_train_split_is_not_clamped_silently(pretrained):
    result = invoke("linear-probe", pretrained, "--cached", "--epochs", "1", "--subset", 40, "--batch-size", 256,
                    "--out", pretrained / "small.probe.safetensors")
    assert "batch 40 (the whole train split: --batch-size 256 is larger)" in " ".join(result.output.split())
    from contrastive_cli.checkpoint import read_meta
    assert read_meta(pretrained / "small.probe.safetensors", ("linear-probe",))["results"]["batch_size"] == 40


def test_rerunning_a_command_replaces_its_own_earlier_output(pretrained):
    for _ in range(2):
        result = invoke("linear-probe", pretrained, "--cached", "--epochs", "1")
        assert result.exit_code == 0, result.output
    assert (pretrained / "checkpoint.probe.safetensors").exists()


def test_resuming_a_copied_checkpoint_does_not_write_into_another_run(pretrained, tmp_path):
    other = tmp_path / "runB"
    assert invoke("pretrain", *TINY, "--method", "simclr", "--out", other).exit_code == 0
    copy = other / "copied.safetensors"
    copy.write_bytes((pretrained / "checkpoint.safetensors").read_bytes())
    intact = unchanged(other / "checkpoint.safetensors")
    one_paragraph(invoke("pretrain", "--resume", copy), "overwrite the run there", "--resume NEW")
    assert intact()


# ---- a run directory belongs to one process at a time --------------------------------------------------------------


def start_pretrain(out, *flags):
    return subprocess.Popen([sys.executable, "-m", "contrastive_cli", "pretrain", "--method", "byol", "--backbone",
                             "small_cnn", "--subset", "256", "--batch-size", "32", "--epochs", "100", "--out", str(out),
                             *flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def wait_for_steps(proc, out, steps=2):
    deadline = time.monotonic() + 120
    while not (out / "metrics.jsonl").exists() or (out / "metrics.jsonl").read_text().count("\n") < steps:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)


def test_a_second_run_on_the_same_directory_is_refused_and_a_killed_run_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "run"
    first = start_pretrain(out, "--checkpoint-every", "1")
    wait_for_steps(first, out)
    second = invoke("pretrain", *TINY, "--method", "byol", "--out", out)
    one_paragraph(second, f"pid {first.pid}", "is training in", "another --out")
    while not (out / "checkpoint.safetensors").exists():  # epoch 1 ends with a checkpoint (--checkpoint-every 1)
        assert first.poll() is None
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    records = (out / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in records)  # one writer: no torn or interleaved lines
    # the kernel released the dead run's lock: the run can be resumed and trained
    from contrastive_cli.spec import PretrainSpec
    from contrastive_cli.train import prepare, run_lock
    run = prepare(PretrainSpec(), resume=out)
    with run_lock(run):
        assert (out / ".lock").read_text().strip() == f"pid {os.getpid()}"


# ---- a broken state is never saved -----------------------------------------------------------------------------------


def test_a_state_with_non_finite_values_is_not_saved_over_the_last_good_checkpoint(tmp_path):
    from contrastive_cli.spec import PretrainSpec
    from contrastive_cli.train import TrainingStopped, prepare, train
    run = prepare(PretrainSpec.model_validate({
        "method": {"name": "byol"}, "backbone": {"name": "small_cnn"}, "data": {"subset": 64},
        "optim": {"epochs": 2, "batch_size": 32}, "monitor": {"images": 0},
        "runtime": {"out": str(tmp_path / "r"), "checkpoint_every": 1}}))

    def break_batch_norm_in_epoch_2(run, record):  # the loss stays finite: only BN's running statistics break
        if run.step == 3:
            next(m for m in run.method.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_var.fill_(float("inf"))

    with pytest.raises(TrainingStopped) as stop:
        train(run, on_step=break_batch_norm_in_epoch_2)
    assert stop.value.exit_code == 3 and "non-finite values" in str(stop.value) and "running_var" in str(stop.value)
    from contrastive_cli import checkpoint as ckpt
    assert ckpt.read_meta(run.checkpoint_path)["step"] == 2  # epoch 1's checkpoint, the last good one


def two_epoch_run(tmp_path):
    from contrastive_cli.spec import PretrainSpec
    from contrastive_cli.train import prepare
    return prepare(PretrainSpec.model_validate({
        "method": {"name": "byol"}, "backbone": {"name": "small_cnn"}, "data": {"subset": 64},
        "optim": {"epochs": 2, "batch_size": 32}, "monitor": {"images": 0},
        "runtime": {"out": str(tmp_path / "r"), "checkpoint_every": 1}}))  # 2 steps per epoch


@pytest.mark.parametrize("poison, message", [
    ("loss", "The loss became nan at step 4 (epoch 2)"),
    ("gradients", "The gradients became non-finite at step 3 (epoch 2, in backbone.features.0.0.weight) although the loss "
                  "was finite")])
def test_non_finite_loss_or_gradients_stop_before_the_step_and_resume_with_a_lower_lr(tmp_path, poison, message):
    from contrastive_cli import checkpoint as ckpt
    from contrastive_cli.spec import PretrainSpec
    from contrastive_cli.train import TrainingStopped, prepare, train
    run = two_epoch_run(tmp_path)
    first = next(run.method.parameters())

    def break_after(run, record):  # after step 2 (epoch 1's checkpoint is written after this hook)
        if run.step == 3 and poison == "loss":  # a broken weight: the next loss is NaN
            first.data.fill_(float("nan"))
        elif run.step == 2 and poison == "gradients":
            first.register_hook(lambda grad: grad * float("nan"))  # the loss stays finite

    with pytest.raises(TrainingStopped) as stop:
        train(run, on_step=break_after)
    text = str(stop.value)
    assert stop.value.exit_code == 3 and message in text and f"--resume {run.dir} --lr LOWER" in text, text
    assert ckpt.read_meta(run.checkpoint_path)["step"] == 2
    if poison == "gradients":  # the step was not taken: the weights in memory are still finite
        assert all(torch.isfinite(p).all() for p in run.method.parameters())
    resumed = prepare(PretrainSpec.model_validate({"optim": {"lr": 0.1}}), resume=run.dir)
    assert resumed.spec.optim.lr == 0.1
    train(resumed)
    assert ckpt.read_meta(run.checkpoint_path)["complete"]


def test_after_a_crash_and_resume_metrics_hold_each_step_once(tmp_path):
    from contrastive_cli.spec import PretrainSpec
    from contrastive_cli.train import prepare, train
    spec = PretrainSpec.model_validate({
        "method": {"name": "simclr"}, "backbone": {"name": "small_cnn"}, "data": {"subset": 64},
        "optim": {"epochs": 3, "batch_size": 32}, "monitor": {"images": 0},
        "runtime": {"out": str(tmp_path / "r"), "checkpoint_every": 1}})
    run = prepare(spec)

    def crash_at_step_5(run, record):  # after epoch 2's checkpoint (step 4) and step 5's record
        if run.step == 5:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        train(run, on_step=crash_at_step_5)
    with (run.dir / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "loss": 0.1')  # a line torn by the kill
    resumed = prepare(PretrainSpec(), resume=run.dir)
    train(resumed)
    records = [json.loads(line) for line in (run.dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("type") != "epoch"] == [1, 2, 3, 4, 5, 6]
    assert [r["epoch"] for r in records if r.get("type") == "epoch"] == [1, 2, 3]


# ---- a full disk: the old checkpoint survives and the message says so -------------------------------------------


def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint_and_says_how_much_space_it_needs(tmp_path,
                                                                                                      monkeypatch):
    import errno
    from contrastive_cli import checkpoint as ckpt
    real_save_file, saves = ckpt.save_file, []

    def disk_fills_up_on_the_second_save(tensors, path, metadata):
        saves.append(path)
        if len(saves) == 2:
            with open(path, "wb") as f:
                f.write(b"\0" * 1000)  # part of the file made it to disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save_file(tensors, path, metadata=metadata)

    monkeypatch.setattr(ckpt, "save_file", disk_fills_up_on_the_second_save)
    out = tmp_path / "run"
    result = invoke("pretrain", *TINY[:-1], "2", "--method", "simclr", "--checkpoint-every", "1", "--out", out)
    text = one_paragraph(result, "No space left on device", "MiB", "previous file there is intact", "--resume")
    assert ckpt.read_meta(out / "checkpoint.safetensors")["step"] == 2, text  # epoch 1's checkpoint
    assert not list(out.glob(".*.tmp")) and json.loads((out / "spec.json").read_text())


@pytest.fixture
def tiny_disk(tmp_path):
    """A real full disk: a tmpfs of a chosen size (needs root and mount, else the test is skipped; the simulated
    failure above runs everywhere). Yields resize(bytes)."""
    mount = tmp_path / "disk"
    mount.mkdir()

    def resize(size, option="remount,"):
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"{option}size={size}", "tmpfs", str(mount)],
                              capture_output=True)
        return done.returncode == 0

    if os.geteuid() != 0 or not resize(64 * 2**10, option=""):
        pytest.skip("mounting a tmpfs needs root and the mount capability")
    try:
        yield mount, resize
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(folder):
    """Write a filler file until the disk is full; returns it."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


@pytest.mark.parametrize("full_at", ["checkpoint", "metrics"])
def test_a_full_disk_keeps_the_last_checkpoint_says_so_and_the_run_resumes_once_space_is_freed(tiny_disk, tmp_path,
                                                                                                 full_at, monkeypatch):
    from contrastive_cli import checkpoint as ckpt
    from contrastive_cli import train as train_module
    mount, resize = tiny_disk
    flags = [*TINY[:-1], "2", "--subset", 320, "--method", "simclr", "--checkpoint-every", "1", "--monitor-images", 0]
    reference = tmp_path / "reference"
    assert invoke("pretrain", *flags, "--out", reference).exit_code == 0  # 10 steps per epoch
    size = (reference / "checkpoint.safetensors").stat().st_size
    assert resize(size * 3 // 2 + 64 * 2**10)  # one checkpoint and the logs fit, not a second one beside it
    if full_at == "metrics":  # the disk fills up in epoch 2, after epoch 1's checkpoint
        real_log = train_module.log
        monkeypatch.setattr(train_module, "log", lambda run, f, record, trackers=None: (
            run.step == 12 and not (mount / "filler").exists() and fill(mount), real_log(run, f, record, trackers)))
    out = mount / "run"
    text = one_paragraph(invoke("pretrain", *flags, "--out", out), "No space left on device", "ree disk space",
                         f"--resume {out}")
    assert ("it needs about" in text) == (full_at == "checkpoint"), text
    assert ckpt.read_meta(out / "checkpoint.safetensors")["step"] == 10, text  # epoch 1's, intact
    assert not list(out.glob(".*.tmp"))
    monkeypatch.undo()
    (mount / "filler").unlink(missing_ok=True)
    assert resize(3 * size + 64 * 2**10)
    result = invoke("pretrain", "--resume", out)
    assert result.exit_code == 0, result.output
    steps = [json.loads(line).get("step") for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s for s in steps if s] == list(range(1, 21))  # each step once: a torn line was dropped
    assert (out / "checkpoint.safetensors").read_bytes() != b"" and ckpt.read_meta(out)["complete"]


@pytest.mark.parametrize("command", ["export --format safetensors", "export --format torchscript",
                                     "linear-probe --cached --epochs 1", "transfer --data synthetic --shots 2 "
                                     "--epochs 1"])
def test_every_command_that_writes_says_when_the_disk_is_full(pretrained, tiny_disk, command):
    mount, _ = tiny_disk
    filler = fill(mount)
    out = mount / "output"
    text = one_paragraph(invoke(*command.split()[:1], pretrained, *command.split()[1:], "--out", out),
                         "No space left on device", "disk space")
    assert not out.exists() and list(mount.iterdir()) == [filler], text  # and no temp file


# ---- images of every bit depth decode to what they show ----------------------------------------------------------


@pytest.mark.parametrize("mode, values, ext", [
    ("I;16", [0, 32768, 65535], "png"),  # 16-bit PNG: PIL's convert clipped these to 255
    ("F", [0.0, 0.5, 1.0], "tiff"),  # float TIFF in [0, 1]: PIL's convert truncated these to 0
    ("I", [0, 32768, 65535], "tiff"),  # 32-bit integer TIFF holding 16-bit values
    ("L", [0, 128, 255], "png")])
def test_high_bit_depth_images_decode_to_their_8_bit_values(tmp_path, mode, values, ext):
    import numpy as np
    from PIL import Image
    from contrastive_cli.data import decode_image
    dtype = {"I;16": np.uint16, "F": np.float32, "I": np.int32, "L": np.uint8}[mode]
    stripes = np.repeat(np.array(values, dtype=dtype)[None, :], 12, axis=0).repeat(4, axis=1)  # 12 x 12, 3 stripes
    path = tmp_path / f"image.{ext}"
    Image.fromarray(stripes).save(path)  # the mode follows the dtype
    assert Image.open(path).mode == mode
    decoded = decode_image(str(path), 12, 1)[0]  # at its own size: no resampling
    assert decoded[6, [1, 5, 10]].tolist() == pytest.approx([0, 128, 255], abs=1)

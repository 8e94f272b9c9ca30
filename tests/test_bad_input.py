"""The bad-input matrix: across the six commands, each bad or hostile input exits 2 with one paragraph that names the
problem, never a traceback (nor the safety net's crash log), and leaves no new file behind."""

import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from contrastive_cli.cli import app

runner = CliRunner()
TINY = "--backbone small_cnn --subset 64 --batch-size 32 --epochs 1"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The inputs the cases refer to: a finished run, broken and foreign files, odd folders and configs."""
    w = tmp_path_factory.mktemp("world")
    result = runner.invoke(app, ["pretrain", "--method", "simclr", *TINY.split(), "--out", str(w / "run")])
    assert result.exit_code == 0, result.output
    checkpoint = (w / "run" / "checkpoint.safetensors").read_bytes()
    (w / "truncated.safetensors").write_bytes(checkpoint[:1000])
    (w / "empty.safetensors").write_bytes(b"")
    (w / "text.safetensors").write_text("not a checkpoint")
    save_file({"weight": torch.zeros(2)}, str(w / "foreign.safetensors"))
    torch.save({"weight": torch.zeros(2)}, w / "pickled.pt")  # never loaded: the tool unpickles nothing
    (w / "empty-folder").mkdir()
    (w / "flat").mkdir()
    for i in range(4):
        Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(w / "flat" / f"{i}.png")
    (w / "a-file").write_text("x")
    (w / "broken.yaml").write_text("optim: {lr: 0.1\n")
    (w / "list.yaml").write_text("- lr\n- 0.1\n")
    (w / "unknown-key.yaml").write_text("optim: {learning_rate: 0.1}\n")
    (w / "yes.yaml").write_text("optim: {lr: yes}\n")
    (w / "inf.yaml").write_text("optim: {lr: .inf}\n")
    (w / "binary.yaml").write_bytes(b"\xff\xfe\x00garbage")
    for cls in ("readable", "unreadable"):  # a labeled folder with one class the user cannot list
        (w / "locked-class" / cls).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(w / "locked-class" / cls / f"{i}.png")
    (w / "locked-class" / "unreadable").chmod(0)
    (w / "locked").mkdir()
    (w / "locked").chmod(0)
    run_probe = runner.invoke(app, ["linear-probe", str(w / "run"), "--cached", "--epochs", "1"])
    assert run_probe.exit_code == 0, run_probe.output
    return w


CASES = {
    # pretrain: the spec
    "unknown method": ("pretrain --method foo", ["unknown method 'foo'"]),
    "unknown method before its flags": ("pretrain --method foo --queue-size 256", ["unknown method 'foo'"]),
    "lr inf": ("pretrain --lr inf", ["--lr", "finite"]),
    "lr negative": ("pretrain --lr -1", ["--lr"]),
    "weight decay inf": ("pretrain --weight-decay inf", ["--weight-decay", "finite"]),
    "temperature inf": ("pretrain --method simclr --temperature inf", ["--temperature", "finite"]),
    "jitter nan": ("pretrain --jitter nan 0.4 0.4 0.1", ["--jitter", "finite"]),
    "crop ratio inf": ("pretrain --crop-ratio inf inf", ["--crop-ratio", "finite"]),
    "crop scale above 1": ("pretrain --crop-scale 0 2", ["crop_scale"]),
    "seed too large": ("pretrain --seed 1000000000000000", ["--seed"]),
    "batch size 0": ("pretrain --batch-size 0", ["--batch-size"]),
    "epochs 0": ("pretrain --epochs 0", ["--epochs"]),
    "batch larger than the data": ("pretrain --method simclr --backbone small_cnn --subset 16 --batch-size 32",
                                   ["--batch-size", "larger than the 16 training images"]),
    "local crops for a two-view method": ("pretrain --method simclr --local-crops 2", ["--local-crops"]),
    "patch size not dividing the side": ("pretrain --backbone vit_tiny --patch-size 5", ["--patch-size", "multiple"]),
    "ViT option on a ResNet": ("pretrain --backbone resnet18 --patch-size 4", ["--patch-size", "ViT option"]),
    "stem on the small CNN": ("pretrain --backbone small_cnn --stem small", ["--stem", "ResNet option"]),
    "unknown backbone": ("pretrain --backbone resnet7", ["resnet7"]),
    "device mps without MPS": (f"pretrain --method simclr {TINY} --device mps", ["--device mps", "not available"]),
    "device cuda without CUDA": (f"pretrain --method simclr {TINY} --device cuda", ["--device cuda", "not available"]),
    "device nonsense": (f"pretrain --method simclr {TINY} --device tpu9", ["--device", "tpu9"]),
    # pretrain: config files
    "config is a folder": ("pretrain --config {w}/empty-folder", ["is a folder"]),
    "config missing": ("pretrain --config {w}/missing.yaml", ["does not exist"]),
    "config broken YAML": ("pretrain --config {w}/broken.yaml", ["could not be parsed"]),
    "config a list": ("pretrain --config {w}/list.yaml", ["mapping of spec sections"]),
    "config unknown key": ("pretrain --config {w}/unknown-key.yaml", ["learning_rate"]),
    "config lr yes": ("pretrain --config {w}/yes.yaml", ["yes/no value"]),
    "config lr inf": ("pretrain --config {w}/inf.yaml", ["finite"]),
    "config binary": ("pretrain --config {w}/binary.yaml", ["--config"]),
    # pretrain: data and output
    "data missing": ("pretrain --data {w}/nowhere", ["nowhere"]),
    "data a file": ("pretrain --data {w}/a-file", ["a-file"]),
    "data an empty folder": ("pretrain --data {w}/empty-folder", ["empty-folder"]),
    "data an unreadable folder": ("pretrain --data {w}/locked", ["{w}/locked cannot be read", "chmod"]),
    "data with an unreadable class folder": ("pretrain --data {w}/locked-class",
                                             ["{w}/locked-class/unreadable cannot be read"]),
    "subset larger than the data": ("pretrain --subset 6000", ["--subset 6000", "holds (5000)"]),
    "milestones decreasing": ("pretrain --schedule step --milestones 0.8 0.6", ["--milestones", "increasing"]),
    "config unknown key and a flag that does not apply": (
        "pretrain --config {w}/unknown-key.yaml --method simclr --queue-size 256", ["learning_rate", "--queue-size"]),
    "out an existing file": (f"pretrain --method simclr {TINY} --out {{w}}/a-file", ["a-file", "--out"]),
    "out inside a file": (f"pretrain --method simclr {TINY} --out {{w}}/a-file/run", ["a-file", "--out"]),
    "out an existing run": (f"pretrain --method simclr {TINY} --out {{w}}/run", ["already holds a run"]),
    # pretrain: resume
    "resume missing": ("pretrain --resume {w}/missing", ["does not exist"]),
    "resume truncated": ("pretrain --resume {w}/truncated.safetensors", ["not a readable safetensors file"]),
    "resume empty file": ("pretrain --resume {w}/empty.safetensors", ["not a readable safetensors file"]),
    "resume foreign safetensors": ("pretrain --resume {w}/foreign.safetensors", ["not a contrastive checkpoint"]),
    "resume a pickle": ("pretrain --resume {w}/pickled.pt", ["never are"]),
    "resume a probe": ("pretrain --resume {w}/run/checkpoint.probe.safetensors", ["linear-probe checkpoint"]),
    "resume with a changed spec": ("pretrain --resume {w}/run --temperature 0.3", ["cannot be changed"]),
    "resume a folder without a run": ("pretrain --resume {w}/empty-folder", ["holds no checkpoint.safetensors"]),
    # knn-eval
    "knn missing checkpoint": ("knn-eval {w}/missing.safetensors", ["does not exist"]),
    "knn truncated checkpoint": ("knn-eval {w}/truncated.safetensors", ["not a readable safetensors file"]),
    "knn text file": ("knn-eval {w}/text.safetensors", ["not a readable safetensors file"]),
    "knn foreign safetensors": ("knn-eval {w}/foreign.safetensors", ["not a contrastive checkpoint"]),
    "knn a probe": ("knn-eval {w}/run/checkpoint.probe.safetensors", ["linear-probe checkpoint"]),
    "knn temperature inf": ("knn-eval {w}/run --temperature inf", ["--temperature", "finite"]),
    "knn temperature 0": ("knn-eval {w}/run --temperature 0", ["--temperature"]),
    "knn k 0": ("knn-eval {w}/run --k 0", ["--k"]),
    "knn data missing": ("knn-eval {w}/run --data {w}/nowhere", ["nowhere"]),
    "knn data without labels": ("knn-eval {w}/run --data {w}/flat", ["no labels"]),
    "knn device mps": ("knn-eval {w}/run --device mps", ["--device mps"]),
    "knn data with an unreadable class folder": ("knn-eval {w}/run --data {w}/locked-class",
                                                 ["{w}/locked-class/unreadable cannot be read"]),
    "knn test subset larger than the split": ("knn-eval {w}/run --test-subset 5000", ["--test-subset 5000",
                                                                                     "holds (1000)"]),
    "knn a string list's second value": ("knn-eval --classes 0 1 {w}/run", ["one value per flag", "--classes A"]),
    # linear-probe
    "probe crop scale": ("linear-probe {w}/run --crop-scale 0 2", ["crop_scale"]),
    "probe lr inf": ("linear-probe {w}/run --lr inf", ["--lr", "finite"]),
    "probe epochs 0": ("linear-probe {w}/run --epochs 0", ["--epochs"]),
    "probe out is the checkpoint": ("linear-probe {w}/run --cached --out {w}/run/checkpoint.safetensors",
                                    ["is the checkpoint this command reads"]),
    "probe out a folder": ("linear-probe {w}/run --cached --out {w}/empty-folder", ["is a folder"]),
    "probe out inside a file": ("linear-probe {w}/run --cached --out {w}/a-file/probe.safetensors", ["a-file"]),
    "probe of a foreign file": ("linear-probe {w}/foreign.safetensors", ["not a contrastive checkpoint"]),
    "probe diverging": ("linear-probe {w}/run --cached --epochs 10 --lr 1e38 --subset 200 --batch-size 20",
                        ["diverged", "nothing was saved", "--lr"]),
    # transfer
    "transfer out is the checkpoint": ("transfer {w}/run --data synthetic --out {w}/run/checkpoint.safetensors",
                                       ["is the checkpoint this command reads"]),
    "transfer shots 0": ("transfer {w}/run --data synthetic --shots 0", ["--shots"]),
    "transfer shots and subset": ("transfer {w}/run --data synthetic --shots 2 --subset 10", ["--shots", "--subset"]),
    "transfer data missing": ("transfer {w}/run --data {w}/nowhere", ["nowhere"]),
    "transfer data without labels": ("transfer {w}/run --data {w}/flat", ["no labels"]),
    # inspect-collapse
    "inspect report is the checkpoint": ("inspect-collapse {w}/run --report {w}/run/checkpoint.safetensors",
                                         ["is the checkpoint this command reads"]),
    "inspect report inside a file": ("inspect-collapse {w}/run --report {w}/a-file/r.json", ["a-file"]),
    "inspect one image": ("inspect-collapse {w}/run --images 1", ["--images"]),
    "inspect missing checkpoint": ("inspect-collapse {w}/missing.safetensors", ["does not exist"]),
    "inspect thresholds out of range": ("inspect-collapse {w}/run --min-spread 2", ["--min-spread"]),
    # export
    "export unknown format": ("export {w}/run --format pickle", ["pickle"]),
    "export out a folder": ("export {w}/run --out {w}/empty-folder", ["is a folder"]),
    "export out in a missing folder": ("export {w}/run --out {w}/no/such/model.onnx", ["does not exist"]),
    "export out is the checkpoint": ("export {w}/run --out {w}/run/checkpoint.safetensors",
                                     ["is the checkpoint this command reads"]),
    "export a truncated checkpoint": ("export {w}/truncated.safetensors", ["not a readable safetensors file"]),
}


real_scandir = os.scandir


def scandir_as_a_user(path="."):
    if isinstance(path, (str, os.PathLike)) and not os.stat(path).st_mode & 0o444:
        raise PermissionError(13, "Permission denied", str(path))
    return real_scandir(path)


def files_under(*folders):
    return {p for folder in folders for p in Path(folder).rglob("*")}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_paragraph_with_no_traceback_and_no_new_file(world, case, tmp_path, monkeypatch, crash_logs):
    command, needles = CASES[case]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    if os.geteuid() == 0:  # root reads any folder: make the permission bits count as they would for a user
        monkeypatch.setattr(os, "scandir", scandir_as_a_user)
    before = files_under(world, cwd)
    result = runner.invoke(app, command.format(w=world).split())
    text = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2, text
    assert "Traceback" not in text and not list(crash_logs.iterdir()), text
    for needle in needles:
        assert needle.format(w=world) in text, text
    assert files_under(world, cwd) == before, "a failed command left files behind"
    assert os.stat(world / "run" / "checkpoint.safetensors").st_size > 1000

"""The command line: every bad input gets one clear paragraph, a non-zero exit, and no files left behind."""

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from contrastive_cli.cli import app
from cli_output import fails_cleanly as clean_failure

runner = CliRunner()
TINY = ["--backbone", "small_cnn", "--subset", "64", "--batch-size", "32", "--epochs", "1"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def fails_cleanly(result, *needles, code=2):
    text = clean_failure(result, *needles, code=code)
    assert not Path("runs").exists(), "a failed command left a run directory behind"
    return text


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    result = invoke("pretrain", *TINY, "--method", "simclr", "--out", out)
    assert result.exit_code == 0, result.output
    return out


def test_help_lists_only_working_commands_and_version():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("pretrain", "knn-eval", "linear-probe"):
        assert command in result.output
    assert invoke("--version").output.startswith("contrastive ")


def test_pretrain_writes_checkpoint_spec_and_metrics(pretrained):
    assert {p.name for p in pretrained.iterdir()} >= {"checkpoint.safetensors", "spec.json", "metrics.jsonl"}
    spec = json.loads((pretrained / "spec.json").read_text())
    assert spec["method"]["name"] == "simclr" and spec["method"]["temperature"] == 0.5  # small-image recipe
    records = [json.loads(line) for line in (pretrained / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "loss", "lr", "images_per_s", "data_wait", "augment"} <= set(records[0])
    assert records[-1]["type"] == "epoch" and 0 <= records[-1]["data_wait_share"] <= 1
    assert 0 < records[-1]["augment_share"] < 1


def test_knn_eval_json_and_several_k(pretrained):
    result = invoke("knn-eval", pretrained, "--k", 5, "--k", 20, "--json", "--test-subset", 200)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [r["k"] for r in report["results"]] == [5, 20]
    assert all(0 <= r["top1"] <= r["top5"] <= 100 for r in report["results"])


def test_linear_probe_cached_writes_probe(pretrained):
    result = invoke("linear-probe", pretrained, "--cached", "--epochs", 2, "--lr", 1.0, "--json",
                    "--subset", 500, "--test-subset", 200)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert Path(report["probe"]).exists() and 0 <= report["top1"] <= 100


def test_linear_probe_augmented_path_runs(pretrained):
    result = invoke("linear-probe", pretrained, "--epochs", 1, "--lr", 1.0, "--json",
                    "--subset", 128, "--test-subset", 64, "--batch-size", 64)
    assert result.exit_code == 0, result.output


def test_print_spec_shows_the_resolved_recipe(in_tmp):
    result = invoke("pretrain", "--method", "byol", "--print-spec", *TINY)
    assert result.exit_code == 0, result.output
    spec = json.loads(result.output)
    assert spec["augment"]["blur_p"] == [1.0, 0.1] and spec["augment"]["solarize_p"] == [0.0, 0.2]
    assert not Path("runs").exists()


@pytest.mark.parametrize("args, needles", [
    (["--method", "no-such-method"], ["unknown method 'no-such-method'", "simclr"]),
    (["--lr", "-1"], ["--lr", "greater than 0"]),
    (["--batch-size", "1"], ["--batch-size", "greater than or equal to 2"]),
    (["--method", "simclr", "--temperature", "0"], ["--temperature", "greater than 0"]),
    (["--queue-size", "100000"], ["--queue-size", "larger than the dataset"]),
    (["--method", "simclr", "--queue-size", "4096"], ["--queue-size does not apply to method simclr"]),
    (["--data", "no/such/folder"], ["no/such/folder"]),
    (["--device", "cuda:x"], ["--device"]),
])
def test_pretrain_rejects_bad_input_before_any_work(in_tmp, args, needles):
    fails_cleanly(invoke("pretrain", *args), *needles)


def test_empty_dataset_is_an_error(in_tmp):
    (in_tmp / "empty").mkdir()
    fails_cleanly(invoke("pretrain", "--data", in_tmp / "empty"), "empty")


def test_bad_config_files(in_tmp):
    fails_cleanly(invoke("pretrain", "--config", "missing.yaml"), "does not exist")
    Path("bad.yaml").write_text("optim: [unclosed")
    fails_cleanly(invoke("pretrain", "--config", "bad.yaml"), "could not be parsed")
    Path("typo.yaml").write_text("optim:\n  learning_rate: 0.1\n")
    fails_cleanly(invoke("pretrain", "--config", "typo.yaml"), "optim.learning_rate")


def test_config_file_drives_the_run_and_flags_override(in_tmp):
    Path("run.yaml").write_text("method:\n  name: simsiam\noptim:\n  lr: 0.1\n  epochs: 7\n")
    result = invoke("pretrain", "--config", "run.yaml", "--epochs", 3, "--print-spec", *TINY[:6])
    spec = json.loads(result.output)
    assert spec["method"]["name"] == "simsiam" and spec["optim"]["lr"] == 0.1 and spec["optim"]["epochs"] == 3


def test_evaluation_rejects_bad_checkpoints(in_tmp):
    fails_cleanly(invoke("knn-eval", "missing.safetensors"), "does not exist")
    Path("model.pt").write_bytes(b"\x80\x04not a safetensors file")
    fails_cleanly(invoke("linear-probe", "model.pt"), "not a readable safetensors file", "never")


def test_evaluation_needs_labels(in_tmp, pretrained):
    flat = in_tmp / "flat"
    flat.mkdir()
    for i in range(4):
        Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(flat / f"{i}.png")
    fails_cleanly(invoke("knn-eval", pretrained, "--data", flat), "no labels", "class subfolders")


def test_resume_refuses_spec_changes(in_tmp, pretrained):
    fails_cleanly(invoke("pretrain", "--resume", pretrained, "--temperature", 0.5), "--temperature cannot be changed",
                  "only --epochs, --accumulate-steps, --lr, --device")


def test_resume_of_a_finished_run_is_a_no_op(in_tmp, pretrained):
    before = (pretrained / "checkpoint.safetensors").read_bytes()
    result = invoke("pretrain", "--resume", pretrained)
    assert result.exit_code == 0, result.output
    assert "is complete" in result.output and "--epochs" in result.output and "nan" not in result.output
    assert (pretrained / "checkpoint.safetensors").read_bytes() == before


def test_resume_refuses_runtime_changes_that_would_alter_the_run(in_tmp, pretrained):
    fails_cleanly(invoke("pretrain", "--resume", pretrained, "--seed", 3), "--seed cannot be changed")


def test_checkpoints_are_ordinary_readable_files(pretrained):
    import os
    import stat
    mode = stat.S_IMODE(os.stat(pretrained / "checkpoint.safetensors").st_mode)
    assert mode & 0o044, oct(mode)  # group/other may read it, like any output (not mkstemp's 0600)
    assert not list(pretrained.glob(".*.tmp"))


def test_linear_probe_on_a_split_smaller_than_the_batch(pretrained):
    result = invoke("linear-probe", pretrained, "--epochs", 1, "--lr", 1.0, "--json", "--subset", 40, "--test-subset", 20)
    assert result.exit_code == 0, result.output


def test_pretrain_json_prints_the_last_epoch_record_instead_of_the_progress_bar(in_tmp):
    result = invoke("pretrain", *TINY, "--method", "simsiam", "--out", "run", "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["epoch"] == 1 and record["step"] == 2 and record["checkpoint"] == str(Path("run/checkpoint.safetensors"))
    assert {"loss", "images_per_s", "data_wait_share", "augment_share"} <= set(record)

"""--log tensorboard|wandb|mlflow: the trackers get the records of metrics.jsonl, which stays the source of truth, and
a resumed run continues the same tracker run."""

import json
import sys

import pytest
from typer.testing import CliRunner

from cli_output import panel_text
from contrastive_cli.cli import app

# 8 steps per epoch; a small online kNN so that epoch records carry kNN top-1 as well as the collapse monitor's rank
RUN = ["pretrain", "--method", "simclr", "--backbone", "small_cnn", "--subset", "256", "--batch-size", "32",
       "--monitor-images", "64", "--eval-every", "1", "--knn-bank", "100", "--knn-queries", "50", "--device", "cpu"]


def invoke(*args, code=0):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result.output


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def expected(run_dir):
    """{tag: {step: value}} as a tracker should hold them: step records at their step, epoch records at the step
    that ends the epoch, nested values flattened."""
    from contrastive_cli.trackers import tagged
    out: dict = {}
    for record in records(run_dir):
        step, scalars = tagged(record, steps_per_epoch=8)
        for tag, value in scalars.items():
            out.setdefault(tag, {})[step] = value
    return out


def tensorboard_scalars(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def assert_same(tracked, run_dir):
    wanted = expected(run_dir)
    assert {"train/loss", "train/lr", "epoch/loss", "epoch/knn/top1_k20", "epoch/collapse/backbone/rank"} <= set(wanted)
    assert set(tracked) == set(wanted)
    for tag, by_step in wanted.items():
        assert tracked[tag] == pytest.approx(by_step, rel=1e-6), tag  # event files store float32


def test_tensorboard_events_hold_the_values_of_metrics_jsonl_across_a_resume(tmp_path):
    out = tmp_path / "run"
    invoke(*RUN, "--epochs", "1", "--out", out, "--log", "tensorboard")
    invoke("pretrain", "--resume", out, "--epochs", "2")  # the tracker choice is kept by the resumed run
    assert [r["step"] for r in records(out) if "step" in r] == list(range(1, 17))
    assert_same(tensorboard_scalars(out), out)


def test_a_tracker_added_on_resume_gets_the_records_so_far(tmp_path):
    out = tmp_path / "run"
    invoke(*RUN, "--epochs", "1", "--out", out)
    invoke("pretrain", "--resume", out, "--epochs", "2", "--log", "tensorboard")
    assert min(tensorboard_scalars(out)["train/loss"]) == 1
    assert_same(tensorboard_scalars(out), out)


def test_mlflow_offline_holds_the_same_values_in_one_run_continued_by_resume(tmp_path):
    from mlflow.tracking import MlflowClient
    out = tmp_path / "run"
    invoke(*RUN, "--epochs", "1", "--out", out, "--log", "mlflow")
    invoke("pretrain", "--resume", out, "--epochs", "2")
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("contrastive").experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == json.loads((out / "trackers.json").read_text())["mlflow"]
    run = runs[0]
    assert run.data.params["method.name"] == "simclr" and run.info.status == "FINISHED"
    tracked = {tag: {m.step: m.value for m in client.get_metric_history(run.info.run_id, tag)}
               for tag in run.data.metrics}
    assert_same(tracked, out)


def test_wandb_offline_resume_continues_the_same_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    invoke(*RUN, "--epochs", "1", "--out", out, "--log", "wandb", "--monitor-images", "0", "--eval-every", "0")
    run_id = json.loads((out / "trackers.json").read_text())["wandb"]
    invoke("pretrain", "--resume", out, "--epochs", "2")
    runs = sorted(p.name for p in (out / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(name.endswith(run_id) for name in runs)  # one W&B run, written in two sessions
    assert all(any(p.glob("*.wandb")) for p in (out / "wandb").glob("offline-run-*"))


@pytest.mark.parametrize("tracker, package", [("tensorboard", "tensorboard"), ("wandb", "wandb"),
                                              ("mlflow", "mlflow")])
def test_a_missing_tracker_package_names_the_extra_and_nothing_is_written(tmp_path, monkeypatch, tracker, package):
    monkeypatch.setitem(sys.modules, package, None)  # `import package` raises ImportError
    text = invoke(*RUN, "--epochs", "1", "--out", tmp_path / "run", "--log", tracker, code=2)
    assert f"pip install 'contrastive[{tracker}]'" in panel_text(text)
    assert not (tmp_path / "run").exists()


def test_a_tracker_that_fails_mid_run_is_dropped_and_training_goes_on(tmp_path, monkeypatch):
    from contrastive_cli import trackers

    def broken(self, step, scalars):
        raise OSError("disk full")
    monkeypatch.setattr(trackers.TensorBoard, "write", broken)
    out = tmp_path / "run"
    text = invoke(*RUN, "--epochs", "1", "--out", out, "--log", "tensorboard", "--monitor-images", "0",
                  "--eval-every", "0")
    assert "--log tensorboard stopped at step 1 (OSError: disk full)" in text
    assert len(records(out)) == 9 and (out / "checkpoint.safetensors").exists()

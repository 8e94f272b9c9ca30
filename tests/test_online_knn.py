"""Online evaluation while pretraining (--eval-every): weighted kNN of the encoder on fixed labelled subsets, written
into each epoch's record; the same figure knn-eval gives for the checkpoint on the same subsets."""

import json

import pytest
from typer.testing import CliRunner

from contrastive_cli.cli import app
from contrastive_cli.errors import UserError
from contrastive_cli.spec import PretrainSpec
from contrastive_cli.train import prepare

RUN = ["pretrain", "--method", "simclr", "--backbone", "small_cnn", "--subset", "512", "--batch-size", "64",
       "--monitor-images", "0", "--device", "cpu"]


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def epochs(run_dir):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r.get("type")]


def test_online_knn_is_knn_eval_of_the_checkpoint_on_the_same_subsets_and_resume_keeps_them(tmp_path):
    out = tmp_path / "run"
    flags = [*RUN, "--eval-every", "1", "--knn-bank", "400", "--knn-queries", "200"]
    text = invoke(*flags, "--epochs", "1", "--out", out)
    assert "kNN top-1" in text
    invoke("pretrain", "--resume", out, "--epochs", "2")
    online = [e["knn"] for e in epochs(out)]
    assert [e["epoch"] for e in epochs(out)] == [1, 2] and all(k["seconds"] > 0 for k in online)
    offline = json.loads(invoke("knn-eval", out, "--subset", 400, "--test-subset", 200, "--k", 20, "--k", 200,
                                "--json").splitlines()[-1])
    assert [online[-1]["top1_k20"], online[-1]["top1_k200"]] == [r["top1"] for r in offline["results"]]


def test_it_is_on_by_default_only_where_it_is_cheap_and_the_data_has_labels(tmp_path):
    def monitor(**data):
        spec = PretrainSpec.model_validate({"method": {"name": "simclr"}, "backbone": {"name": "small_cnn"},
                                            "data": data, "optim": {"batch_size": 32},
                                            "runtime": {"out": str(tmp_path / str(len(data)))}})
        return prepare(spec).spec.monitor

    whole = monitor()  # the synthetic shapes: 5000 labelled images, with a test split
    assert whole.eval_every == 1 and (whole.knn_bank, whole.knn_queries) == (1200, 300)  # 5% of 2 views x 5000
    assert monitor(subset=96).eval_every == 0  # a bank of 23 images would say nothing


def test_asking_for_it_on_unlabelled_data_is_an_error_naming_the_fix(tmp_path):
    from PIL import Image
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(8):
        Image.new("RGB", (32, 32), (i * 30, 0, 0)).save(folder / f"{i}.png")
    spec = PretrainSpec.model_validate({"method": {"name": "simclr"}, "backbone": {"name": "small_cnn"},
                                        "data": {"source": str(folder)}, "monitor": {"eval_every": 1},
                                        "optim": {"batch_size": 4}, "runtime": {"out": str(tmp_path / "r")}})
    with pytest.raises(UserError, match="needs labelled train and test splits.*--eval-every 0"):
        prepare(spec)

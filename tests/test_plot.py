"""`contrastive plot RUN...`: the curves of metrics.jsonl as a PNG, one run or several overlaid; a finished pretrain
leaves its own figure when matplotlib is installed, and a run without it just has none."""

import json
import sys

import pytest
from PIL import Image
from typer.testing import CliRunner

from cli_output import panel_text
from contrastive_cli.cli import app

RUN = ["pretrain", "--method", "simclr", "--backbone", "small_cnn", "--subset", "256", "--batch-size", "64",
       "--epochs", "2", "--monitor-images", "64", "--device", "cpu"]


def invoke(*args, code=0):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result.output


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two short runs: with online kNN, and a second seed without it."""
    root = tmp_path_factory.mktemp("runs")
    invoke(*RUN, "--out", root / "a", "--eval-every", "1", "--knn-bank", "100", "--knn-queries", "50")
    invoke(*RUN, "--out", root / "b", "--seed", "1")
    return root / "a", root / "b"


def test_a_finished_pretrain_leaves_its_curves_in_the_run_directory(runs):
    with Image.open(runs[0] / "curves.png") as image:
        assert image.format == "PNG" and image.size == (1350, 756)


def test_one_run_is_drawn_with_every_panel_it_has_records_for(runs, tmp_path):
    out = tmp_path / "one.png"
    result = json.loads(invoke("plot", runs[0], "--out", out, "--json").splitlines()[-1])
    assert result["out"] == str(out) and result["runs"] == ["a (simclr)"]
    assert result["panels"] == {"loss": 1, "lr": 1, "knn": 2, "rank": 2, "images_per_s": 1}  # k=20 and 200; 2 parts
    assert Image.open(out).size == (1350, 756)


def test_several_runs_are_overlaid_and_a_metrics_file_is_a_run_too(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = json.loads(invoke("plot", runs[0], runs[1] / "metrics.jsonl", "--json").splitlines()[-1])
    assert result["out"] == "curves.png" and (tmp_path / "curves.png").exists()  # several runs: here
    assert result["runs"] == ["a (simclr)", "b (simclr)"] and result["panels"]["loss"] == 2
    assert result["panels"]["knn"] == 2  # only run a evaluated online


def test_a_folder_that_is_no_run_is_a_clear_error(tmp_path):
    assert "not a run directory with a metrics.jsonl" in panel_text(invoke("plot", tmp_path, code=2))


def test_without_matplotlib_plot_names_the_extra_and_pretrain_still_finishes(tmp_path, monkeypatch, runs):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    text = invoke("plot", runs[0], "--out", tmp_path / "x.png", code=2)
    assert "pip install 'contrastive[plot]'" in panel_text(text)
    invoke(*RUN, "--out", tmp_path / "run")
    assert (tmp_path / "run" / "checkpoint.safetensors").exists() and not (tmp_path / "run" / "curves.png").exists()

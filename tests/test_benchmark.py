"""`pretrain --benchmark`: full steps against the model-only bound, measured in alternating blocks, nothing written."""

import json
import statistics
import tempfile
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from contrastive_cli import data
from contrastive_cli.cli import app

TINY = ["pretrain", "--backbone", "small_cnn", "--subset", "64", "--batch-size", "16", "--method", "simclr"]


@pytest.fixture
def scratch(in_tmp, monkeypatch):
    """A private temporary folder, to see that the benchmark cleans up after itself."""
    folder = in_tmp / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def benchmark(*args) -> dict:
    result = CliRunner().invoke(app, [*TINY, *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_benchmark_reports_both_throughputs_shares_and_memory_and_writes_nothing(scratch):
    r = benchmark("--benchmark", 4, "--epochs", 1)  # 4 steps per epoch: the benchmark runs past the epochs asked for
    assert r["steps"] == 4 and r["blocks"] == 1 and r["warmup_steps"] == 3 and r["untimed_steps_per_block"] == 0
    assert r["full_images_per_s"] > 0 and r["model_only_images_per_s"] > 0
    pairs = zip(r["full_block_images_per_s"], r["model_only_block_images_per_s"])
    assert r["ratio"] == pytest.approx(statistics.median(full / model for full, model in pairs))
    assert 0 <= r["data_wait_share"] < 1 and 0 < r["augment_share"] < 1
    assert r["peak_rss_mib"] > 50 and r["dataset_in_memory_mib"] == pytest.approx(64 * 3 * 32 * 32 / 2 ** 20)
    assert (r["method"], r["batch_size"], r["views"], r["device"]) == ("simclr", 16, 2, "cpu")
    assert not Path("runs").exists() and not list(scratch.glob("contrastive-benchmark-*"))


def test_benchmark_table_shows_the_full_step_the_bound_and_their_ratio(scratch):
    result = CliRunner().invoke(app, [*TINY, "--benchmark", 2], terminal_width=200)
    assert result.exit_code == 0, result.output
    for needle in ("full step", "model-only bound", "ratio", "data wait", "augmentation", "peak memory"):
        assert needle in result.output
    assert not Path("runs").exists() and not list(scratch.glob("contrastive-benchmark-*"))


def test_benchmark_of_a_streamed_folder_skips_the_prefetched_steps_of_each_block(scratch, monkeypatch):
    monkeypatch.setattr(data, "IN_MEMORY_LIMIT", 0)  # stream from disk
    folder = scratch.parent / "images"
    folder.mkdir()
    for i in range(40):
        Image.new("RGB", (20, 20), (6 * i, 100, 200 - 4 * i)).save(folder / f"{i}.png")
    r = benchmark("--data", folder, "--subset", 40, "--image-size", 16, "--batch-size", 8, "--workers", 1, "--benchmark", 4)
    assert r["streamed_files"] == 40 and r["dataset_in_memory_mib"] == 0
    assert r["workers"] == 1 and r["untimed_steps_per_block"] == 2  # prefetch factor 2 x 1 worker
    assert r["blocks"] == 1 and r["steps"] == 4


def test_benchmark_refuses_resume(in_tmp):
    result = CliRunner().invoke(app, ["pretrain", "--resume", "somewhere", "--benchmark", 2])
    assert result.exit_code == 2 and "--benchmark" in result.output

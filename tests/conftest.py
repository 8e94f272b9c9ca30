import os
from pathlib import Path

import pytest

import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fashion_mnist = pytest.mark.skipif(not FASHION_MNIST.exists(),
                                         reason="Debian's dataset-fashion-mnist is not installed")


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in an empty folder so default run directories (runs/...) land in tmp."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def crash_logs(tmp_path, monkeypatch):
    """The folder where the safety net's crash logs go in this test (the temp folder), with CONTRASTIVE_DEBUG off."""
    import tempfile
    folder = tmp_path / "crash-logs"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    monkeypatch.delenv("CONTRASTIVE_DEBUG", raising=False)
    return folder


def resolved_method(name: str, image_size: int, **method):
    """A resolved small-CNN spec of method `name` (batch 8, 1000 images) with these method fields, for unit tests."""
    from contrastive_cli.spec import PretrainSpec, resolve_pretrain
    spec = PretrainSpec.model_validate({"method": {"name": name, **method}, "backbone": {"name": "small_cnn"},
                                        "optim": {"batch_size": 8}})
    return resolve_pretrain(spec, image_size, 1000)

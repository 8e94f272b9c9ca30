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

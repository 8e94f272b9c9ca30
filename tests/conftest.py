import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI sets it (cli.entrypoint); before torch loads
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fashion_mnist = pytest.mark.skipif(not FASHION_MNIST.exists(),
                                         reason="Debian's dataset-fashion-mnist is not installed")


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in an empty folder so default run directories (runs/...) land in tmp."""
    monkeypatch.chdir(tmp_path)
    return tmp_path

"""Each method learns on real Fashion-MNIST: a short pretraining run lifts weighted-kNN top-1 clearly above the
same encoder at random initialisation and above kNN on raw pixels (same bank, queries, k and T).

Slow group (minutes on 2 CPU cores): `pytest -m slow`. The budget and the measured margins are in the
closing note of issue 2 and in docs/methods.md; examples/learning_budget.py reproduces a row.
"""

import sys
from pathlib import Path

import pytest

from conftest import needs_fashion_mnist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from learning_budget import learning_run  # noqa: E402

MARGIN = 2.0  # points of top-1 over both baselines

BUDGET = {"epochs": 15, "subset": 10000, "backbone": "small_cnn", "augment__crop_scale": (0.2, 1.0)}


@pytest.mark.slow
@needs_fashion_mnist
@pytest.mark.parametrize("method", ["simclr", "mocov2", "byol", "simsiam"])
def test_pretraining_beats_random_init_and_raw_pixels(method, tmp_path):
    r = learning_run(method, tmp_path / method, **BUDGET)
    print(f"\n{method}: pretrained {r['pretrained']:.2f}  random-init {r['random_init']:.2f}  "
          f"pixels {r['pixels']:.2f}  ({r['train_seconds']} s, {r['images_per_s']} img/s)")
    assert r["pretrained"] >= r["random_init"] + MARGIN, r
    assert r["pretrained"] >= r["pixels"] + MARGIN, r

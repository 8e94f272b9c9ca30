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
from learning_budget import learning_run, synthetic_learning_run  # noqa: E402

from contrastive_cli.methods import SPECS  # noqa: E402

MARGIN = 2.0  # points of top-1 over both baselines

# 10k images x 15 epochs with the small CNN (about 1-2.5 min of training each on 2 cores); crops of 20-100% of the
# area (MoCo v2 / SimSiam range) suit 28 px garments better than SimCLR's 8%. SimSiam's recipe lr (0.03, for 800
# epochs) barely moves in 15 epochs; 0.2 does (measured: 0.03 -> 71.5, 0.1 -> 74.1, 0.2 -> 74.4 top-1).
BUDGET = {"epochs": 15, "subset": 10000, "backbone": "small_cnn", "augment__crop_scale": (0.2, 1.0)}
# InstDisc runs its small-image recipe, the CIFAR README's full softmax over the bank (--negatives 0); NCE with K = 4096
# noise draws from a 10k bank (K/N = 0.41, vs 0.08 on CIFAR) is dominated by its noise term in 15 epochs (measured,
# 10k x 15: NCE 42.3 with collapse alarms, softmax 73.8).
PER_METHOD = {"simsiam": {"optim__lr": 0.2},
              # CPC v2 encodes every patch: a 3x3 grid of 14 px patches (half overlapping, as the paper's 64/32), K=2 and
              # 255 sampled candidates cost about one 28 px view an image, so 10 epochs fit the budget; lr 2e-3 for the
              # short run; the grid pool (patch features side by side) keeps the garment's layout; per-patch jitter 0.8
              # (grayscale has no colour to drop). Measured k=200: 76.3 vs random-init 74.1, pixels 71.1 (one seed,
              # 0.2 over the margin; 75.7 with jitter 0.4), see docs/methods.md#cpc-v2-cpcv2.
              "cpcv2": {"method__patch_size": 14, "method__patch_stride": 7, "method__prediction_steps": 2,
                        "method__patch_negatives": 255, "method__feature_pool": "grid", "method__patch_jitter": 0.8,
                        "optim__lr": 2e-3, "optim__epochs": 10},
              # Barlow Twins and VICReg: 1024-wide projectors (recipe 2048) for 8 epochs. Their three-layer 2048 heads
              # cost several times the small CNN (about 4 min for 10k x 15 epochs on 2 idle cores, estimated). Measured
              # 10k x 8 epochs, k=200, one thread of a loaded machine: Barlow (recipe AdamW 1e-3) 2048 wide: 74.25
              # (242 s), 1024: 75.15 (164 s), 512: 74.15 (97 s); VICReg (recipe SGD 0.1) 2048: 75.15 (391 s), 1024:
              # 75.95 (134-199 s); random-init 70.4, pixels 71.1; the collapse monitor healthy in every epoch of each.
              "barlowtwins": {"method__proj_hidden_dim": 1024, "method__proj_dim": 1024, "optim__epochs": 8},
              "vicreg": {"method__proj_hidden_dim": 1024, "method__proj_dim": 1024, "optim__epochs": 8},
              # MoCo v3 and NNCLR keep their papers' 4096/2048-wide heads by default, which on the small CNN (256
              # features) cost more than the encoder: MoCo v3 ran at BYOL's speed (about 1.9 min idle) and NNCLR
              # slower. 1024-wide heads train 1.75x faster (benchmarked side by side under load) and learn as well:
              # MoCo v3 76.1-76.5 (default widths: 76.0), NNCLR 76.35-76.45, vs random-init 70.4, pixels 71.1 (k=200).
              "mocov3": {"method__proj_hidden_dim": 1024, "method__pred_hidden_dim": 1024},
              "nnclr": {"method__proj_hidden_dim": 1024, "method__pred_hidden_dim": 1024},
              # DINO evaluates its EMA teacher, which must follow within the run's 390 steps: EMA 0.97 (the recipe's
              # 0.996 is for ~100k steps; with it the teacher lags, 72.9 while its student reaches 74.3) and SGD lr 0.1
              # (the recipe's 0.03: 73.7). The 2048-wide head with K = 4096 costs 3x the whole small-CNN step on CPU, so
              # 512 and K = 1024, four 14 px local crops and 10 epochs keep the run near 80 s. Measured k=200: 75.0 vs
              # random-init 70.4, pixels 71.1 (one seed; 74.8 at one thread, its student 74.9); see
              # docs/methods.md#dino-dino.
              "dino": {"method__momentum": 0.97, "optim__lr": 0.1, "method__proj_hidden_dim": 512,
                       "method__out_dim": 1024, "augment__local_crops": 4, "optim__epochs": 10}}
# The transformer methods also learn with a ViT: a 2-block ViT-tiny with 7 px patches (a 4x4 grid at 28 px), 5000
# images. A random-init ViT is a weak kNN encoder on Fashion-MNIST (57-61%, below raw pixels), so the claim is the
# margin over the same ViT at random initialisation; the pixel figure is printed and documented alongside. MoCo v3's
# ViT recipe lr (AdamW 1.5e-4, for 300 epochs) barely moves in 4; 1e-3 does, and 1024-wide heads (recipe 4096) keep
# the step cheap. Measured (4 epochs, one loaded machine): 65.05 vs random-init 57.35, pixels 71.1, no collapse alarm.
VIT_BUDGET = {"backbone": "vit_tiny", "backbone__depth": 2, "backbone__patch_size": 7, "epochs": 4, "subset": 5000,
              "augment__crop_scale": (0.2, 1.0)}
# DINO (ViT recipe: AdamW, weight decay 0.04 -> 0.4) learns on this ViT with more, smaller steps: batch 64 for 8
# epochs (624 steps; DINO has no negatives, so nothing needs a large batch), a teacher that can follow them (EMA 0.99,
# recipe 0.996), AdamW 1e-3 (recipe 5e-4 x 64/256), a 512-wide head with K = 1024 and two local crops. Measured on
# 2 idle cores (about 95 s of training): 65.6 (seed 0), 64.25 (seed 1) vs random-init 60.5 (learned position
# embeddings, hence not MoCo v3's sincos figure); 6 epochs 64.05; batch 256 for 4 epochs 57.9, for 4 epochs at batch 64
# 61.6; lr 2e-3 65.0; EMA 0.95 64.8.
VIT_PER_METHOD: dict = {"mocov3": {"optim__lr": 1e-3, "method__proj_hidden_dim": 1024,
                                   "method__pred_hidden_dim": 1024},
                        "dino": {"optim__batch_size": 64, "optim__epochs": 8, "optim__lr": 1e-3, "method__momentum": 0.99,
                                 "method__proj_hidden_dim": 512, "method__out_dim": 1024, "augment__local_crops": 2}}
VIT_METHODS = ["mocov3", "dino"]
# methods that need colour cannot run on grayscale Fashion-MNIST; their learning test runs on the synthetic data
NEEDS_COLOUR = {name for name, spec in SPECS.items() if spec.needs_colour}


@pytest.mark.slow
@needs_fashion_mnist
@pytest.mark.parametrize("method", [name for name in SPECS if name not in NEEDS_COLOUR])
def test_pretraining_beats_random_init_and_raw_pixels(method, tmp_path):
    r = learning_run(method, tmp_path / method, **BUDGET, **PER_METHOD.get(method, {}))
    print(f"\n{method}: pretrained {r['pretrained']:.2f}  random-init {r['random_init']:.2f}  "
          f"pixels {r['pixels']:.2f}  ({r['train_seconds']} s, {r['images_per_s']} img/s)")
    assert r["pretrained"] >= r["random_init"] + MARGIN, r
    assert r["pretrained"] >= r["pixels"] + MARGIN, r
    # the standard recipes do not collapse: the collapse monitor never alarms
    assert not any(r["collapse_alarms"]), r["collapse_monitor"]


@pytest.mark.slow
@needs_fashion_mnist
@pytest.mark.parametrize("method", VIT_METHODS)
def test_the_transformer_methods_teach_a_vit_more_than_its_random_init(method, tmp_path):
    r = learning_run(method, tmp_path / method, **VIT_BUDGET, **VIT_PER_METHOD.get(method, {}))
    print(f"\n{method} (ViT): pretrained {r['pretrained']:.2f}  random-init {r['random_init']:.2f}  "
          f"pixels {r['pixels']:.2f}  ({r['train_seconds']} s, {r['images_per_s']} img/s)")
    assert r["pretrained"] >= r["random_init"] + MARGIN, r
    assert not any(r["collapse_alarms"]), r["collapse_monitor"]


@pytest.mark.slow
def test_pretraining_learns_the_embedded_synthetic_shapes(tmp_path):
    """The default dataset is one on which pretraining measurably learns (the README's main job)."""
    r = synthetic_learning_run({"method": {"name": "simclr"}, "backbone": {"name": "small_cnn"},
                                "optim": {"epochs": 30}, "runtime": {"out": str(tmp_path / "r")}}, k=20)
    pretrained, random_init, pixels = r["pretrained"], r["random_init"], r["pixels"]
    print(f"\nsynthetic simclr: pretrained {pretrained:.1f}  random-init {random_init:.1f}  pixels {pixels:.1f}")
    assert pretrained >= random_init + 10 and pretrained >= pixels + 4

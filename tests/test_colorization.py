"""Colorization (Zhang, Isola & Efros 2016) as the paper describes it: the ab plane quantised into in-gamut bins of
side 10, targets soft-encoded over their 5 nearest bins (sigma 5), rare colours weighted up by class rebalancing
(lambda 0.5, a smoothed empirical distribution, E[w] = 1), a distribution over the bins predicted from L alone at a
quarter of the view side, and an exported encoder that sees only the lightness of the evaluations' RGB views."""

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from conftest import needs_fashion_mnist
from contrastive_cli.cli import app
from contrastive_cli.errors import SpecError
from contrastive_cli.methods import ab_bins
from contrastive_cli.methods.base import build_encoder, build_method, encoder_record
from contrastive_cli.methods.cmc import LAB_MEAN, LAB_STD, rgb_to_lab
from contrastive_cli.methods.fields import DataFacts
from contrastive_cli.spec import PretrainSpec, resolve_pretrain

MEAN, STD = (0.5, 0.4, 0.3), (0.3, 0.25, 0.2)
HALF_DIAGONAL = 5 * math.sqrt(2)  # the farthest an ab value can lie from the centre of its bin of side 10


def colorization(images=64, **method):
    spec = PretrainSpec.model_validate({"method": {"name": "colorization", **method}, "backbone": {"name": "small_cnn"},
                                        "optim": {"batch_size": 8}})
    spec = resolve_pretrain(spec, 32, images)
    torch.manual_seed(0)
    return build_method(spec, DataFacts(images, 3, MEAN, STD)), spec


def normalised(rgb):
    return (rgb - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def srgb_ab(n=2000, seed=0):
    """ab [n, 2] of random sRGB colours."""
    rgb = torch.rand(1, 3, n, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return rgb_to_lab(rgb)[0, 1:, :, 0].T.float()


# ---- the quantised ab space --------------------------------------------------------------------------------------


def test_the_gamut_bins_are_the_grid_10_cells_that_srgb_colours_fall_in():
    centres = ab_bins.gamut_bins()
    # the paper's 313 comes from its pts_in_hull.npy; the cells hit by 8-bit sRGB colours are fewer (docs)
    assert 240 <= len(centres) <= 313
    assert torch.equal(centres, (centres / 10).round() * 10)  # centres on multiples of 10
    assert torch.equal(ab_bins.nearest_bin(torch.zeros(1, 2), centres), (centres.abs().sum(1) == 0).nonzero()[0])
    ab = srgb_ab()
    distance = (ab_bins.decode(F.one_hot(ab_bins.nearest_bin(ab, centres), len(centres)).float(), centres) - ab)
    assert distance.norm(dim=1).max() <= HALF_DIAGONAL + 1e-4  # every colour's own cell is a bin


def test_each_bin_centre_encodes_to_itself_and_decoding_is_within_half_a_bin_diagonal():
    centres = ab_bins.gamut_bins()
    assert torch.equal(ab_bins.nearest_bin(centres, centres), torch.arange(len(centres)))
    assert torch.equal(ab_bins.soft_encode(centres, centres).argmax(1), torch.arange(len(centres)))
    ab = srgb_ab(seed=1)
    hard = F.one_hot(ab_bins.soft_encode(ab, centres).argmax(1), len(centres)).float()
    assert (ab_bins.decode(hard, centres) - ab).norm(dim=1).max() <= HALF_DIAGONAL + 1e-4


def test_soft_encoding_spreads_gaussian_weights_over_the_5_nearest_bins():
    centres = ab_bins.gamut_bins()
    ab = srgb_ab(200, seed=2)
    z = ab_bins.soft_encode(ab, centres)
    assert torch.allclose(z.sum(1), torch.ones(len(ab))) and ((z > 0).sum(1) == 5).all()
    assert torch.equal(z.argmax(1), ab_bins.nearest_bin(ab, centres))  # the nearest bin weighs most
    d2 = torch.cdist(ab, centres).square()
    i, j = z[0].topk(2).indices  # weights fall as exp(-d²/2σ²) with σ = 5
    assert float(z[0, i] / z[0, j]) == pytest.approx(math.exp(-(d2[0, i] - d2[0, j]) / 50), rel=1e-4)


def test_rebalancing_weights_are_uniform_for_a_uniform_distribution_and_larger_for_rare_colours():
    q = 261
    uniform = torch.full((q,), 1 / q)
    assert torch.allclose(ab_bins.rebalancing_weights(uniform, 0.5), torch.ones(q))
    skewed = torch.linspace(1, 100, q)
    skewed = skewed / skewed.sum()
    w = ab_bins.rebalancing_weights(skewed, 0.5)
    assert (w[:-1] > w[1:]).all()  # rarer bins weigh more
    assert float((skewed * w).sum()) == pytest.approx(1.0)  # normalised so that E_p̃[w] = 1
    assert torch.allclose(ab_bins.rebalancing_weights(skewed, 1.0), torch.ones(q))  # λ = 1: no rebalancing


def test_smoothing_keeps_a_uniform_distribution_and_spreads_a_spike_to_its_neighbours():
    centres = ab_bins.gamut_bins()
    q = len(centres)
    assert torch.allclose(ab_bins.smooth(torch.full((q,), 1 / q), centres), torch.full((q,), 1 / q))
    grey = int(ab_bins.nearest_bin(torch.zeros(1, 2), centres))
    spike = ab_bins.smooth(F.one_hot(torch.tensor(grey), q).float(), centres)
    neighbour = int(ab_bins.nearest_bin(torch.tensor([[10.0, 0.0]]), centres))
    far = int(ab_bins.nearest_bin(torch.tensor([[50.0, 0.0]]), centres))
    assert float(spike.sum()) == pytest.approx(1.0) and spike[grey] > spike[neighbour] > 0 and spike[far] < 1e-6


def test_the_colour_prior_counts_the_pixels_trained_on_and_checkpoints_carry_the_counts():
    prior = ab_bins.ColourPrior(ab_bins.gamut_bins(), 0.5)
    assert torch.allclose(prior.weights(), torch.ones(len(prior.counts)), atol=1e-4)  # nothing seen: uniform
    prior.update(torch.tensor([3, 3, 3, 7]))
    prior.update(torch.tensor([3]))
    assert prior.counts[3] == 4 and prior.counts[7] == 1 and prior.counts.sum() == 5
    assert list(prior.state_dict()) == ["counts"]  # the bin centres are rebuilt, the counts are state
    w = prior.weights()
    assert w[3] < w[7] < w[200]  # the most seen colour weighs least


# ---- the encoder and the task ------------------------------------------------------------------------------------


def test_the_exported_encoder_sees_only_the_lightness_of_the_rgb_views():
    method, spec = colorization()
    encoder = method.exported_encoder().eval()
    rgb = torch.rand(4, 3, 32, 32)
    lightness = (rgb_to_lab(rgb)[:, :1] - LAB_MEAN[0]) / LAB_STD[0]
    with torch.no_grad():
        features = encoder(normalised(rgb))
        assert torch.allclose(features, encoder.l_encoder(lightness), atol=1e-5)
    assert encoder.l_encoder.features[0][0].in_channels == 1  # a one-channel first conv
    assert features.shape == (4, 256) == (4, method.feature_dim)  # the full-width small CNN
    rebuilt, dim = build_encoder(encoder_record(spec, DataFacts(64, 3, MEAN, STD), method.feature_dim))
    rebuilt.load_state_dict(encoder.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.allclose(rebuilt.eval()(normalised(rgb)), features, atol=1e-6) and dim == 256


def test_the_loss_is_rebalanced_cross_entropy_against_soft_encoded_quarter_resolution_ab():
    method, spec = colorization()
    assert len(method.views(spec.augment, 32, MEAN, STD)) == 1
    rgb = torch.rand(8, 3, 32, 32)
    out = method([normalised(rgb)])
    l, _ = method.backbone.lab_views(normalised(rgb))
    with torch.no_grad():  # train mode: the same batch statistics as forward's
        logits = method.decoder(method.backbone.l_encoder.features(l))
    assert logits.shape == (8, len(ab_bins.gamut_bins()), 8, 8)  # 1/4 of the 32 px view
    ab = F.avg_pool2d(rgb_to_lab(rgb)[:, 1:], 4)  # area average of each 4x4 block
    z = ab_bins.soft_encode(ab.permute(0, 2, 3, 1).reshape(-1, 2), method.prior.centres)
    nearest = z.argmax(1)
    assert int(method.prior.counts.sum()) == 8 * 64  # this batch's pixels are counted before weighting
    v = method.prior.weights()[nearest]
    log_p = F.log_softmax(logits.permute(0, 2, 3, 1).reshape(-1, z.shape[1]), dim=1)
    expected = -(v * (z * log_p).sum(1)).mean()
    assert float(out["loss"].detach()) == pytest.approx(float(expected), rel=1e-4)
    assert 0 <= float(out["pixel_acc"]) <= 1


def test_regression_is_the_papers_l2_baseline_on_ab():
    method, _ = colorization(colour_loss="regression")
    assert not hasattr(method, "prior") and method.decoder.out.out_channels == 2
    rgb = torch.rand(8, 3, 32, 32)
    out = method([normalised(rgb)])
    l, ab = method.backbone.lab_views(normalised(rgb))
    with torch.no_grad():
        prediction = method.decoder(method.backbone.l_encoder.features(l))
    target = F.avg_pool2d(ab, 4)
    expected = 0.5 * (prediction - target).square().sum(1).mean()
    assert float(out["loss"].detach()) == pytest.approx(float(expected), rel=1e-4)
    rmse = ((prediction - target) * torch.tensor(LAB_STD[1:]).view(1, 2, 1, 1)).square().sum(1).mean().sqrt()
    assert float(out["ab_rmse"]) == pytest.approx(float(rmse), rel=1e-4)


def test_the_recipe_has_no_colour_augmentation():
    _, spec = colorization()
    a = spec.augment
    assert a.jitter_p == 0 and a.gray_p == 0 and a.blur_p == (0, 0) and a.solarize_p == (0, 0)


# ---- colour ------------------------------------------------------------------------------------------------------


def test_grayscale_data_is_refused_by_the_spec_check():
    spec = PretrainSpec.model_validate({"method": {"name": "colorization"}, "data": {"source": "mnist"},
                                        "optim": {"batch_size": 32}})
    with pytest.raises(SpecError) as err:
        resolve_pretrain(spec, 28, 100, channels=1)
    assert any("mnist is grayscale" in p and "(--data)" in p and "ab (colour) channels from L" in p
               for p in err.value.problems)
    resolve_pretrain(spec, 28, 100, channels=3)


@needs_fashion_mnist
def test_pretrain_on_fashion_mnist_stops_with_one_clear_message(in_tmp):
    result = CliRunner().invoke(app, ["pretrain", "--method", "colorization", "--data", "fashion-mnist"])
    text = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2, text
    assert "Traceback" not in text and (result.exception is None or isinstance(result.exception, SystemExit))
    assert "fashion-mnist is grayscale" in text and "--data synthetic-colour" in text
    assert not (in_tmp / "runs").exists()


# ---- learning ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_pretraining_learns_the_coloured_synthetic_shapes(tmp_path):
    """Colorizing `synthetic-colour` (shapes whose random hue only the shape's pixels carry) teaches the L encoder the
    silhouettes: its linear probe beats the random-init encoder's by >= 3 points (measured: 57.1 vs 23.2)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
    from learning_budget import synthetic_learning_run

    r = synthetic_learning_run({
        "method": {"name": "colorization"}, "backbone": {"name": "small_cnn"}, "data": {"source": "synthetic-colour"},
        "optim": {"epochs": 3}, "runtime": {"out": str(tmp_path / "r")}}, k=200, probe=True)
    print(f"\ncoloured synthetic colorization: probe {r['probe']:.1f}  random-init probe {r['probe_random_init']:.1f} "
          f"(with data BN statistics {r['probe_random_init_bn']:.1f})  "
          f"kNN {r['pretrained']:.1f} (random-init {r['random_init']:.1f}, pixels {r['pixels']:.1f})")
    # the stronger control too: the random-init encoder with batch-norm statistics measured on the data
    assert r["probe"] >= max(r["probe_random_init"], r["probe_random_init_bn"]) + 3, r

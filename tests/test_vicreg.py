"""VICReg's claims (Bardes et al. 2022, official main_vicreg.py): the loss is λ·invariance (mean squared error) +
μ·variance (a hinge keeping every dimension's std over the batch at 1 or more) + ν·covariance (squared off-diagonal
covariances / d); the variance term penalises a collapsed batch and is 0 once every std reaches 1, so with it the
minimum is a spread, decorrelated embedding and without it collapse is a minimum; the expander is
[Linear → BN → ReLU] × 2 → Linear(no bias); variance and covariance see the batch of every process."""

import multiprocessing as mp

import pytest
import torch
from torch import nn

from contrastive_cli.losses import vicreg, vicreg_covariance, vicreg_variance
from contrastive_cli.methods.base import build_method
from contrastive_cli.methods.fields import DataFacts
from conftest import resolved_method

WEIGHTS = (25.0, 25.0, 1.0)  # λ, μ, ν
FORKED_GLOO = pytest.mark.skipif(not torch.distributed.is_available() or "fork" not in mp.get_all_start_methods(),
                                 reason="needs torch.distributed (gloo) and forked processes")


def column_stats(z):
    """Per-dimension mean and unbiased variance, and the unbiased covariance matrix, by explicit loops."""
    n, d = z.shape
    mean = [sum(z[k, j].item() for k in range(n)) / n for j in range(d)]
    cov = [[sum((z[k, i].item() - mean[i]) * (z[k, j].item() - mean[j]) for k in range(n)) / (n - 1)
            for j in range(d)] for i in range(d)]
    return mean, cov


def variance_term(z, eps=1e-4):
    _, cov = column_stats(z)
    d = z.shape[1]
    return sum(max(0.0, 1 - (cov[j][j] + eps) ** 0.5) for j in range(d)) / d


def covariance_term(z):
    _, cov = column_stats(z)
    d = z.shape[1]
    return sum(cov[i][j] ** 2 for i in range(d) for j in range(d) if i != j) / d


def test_loss_is_the_formula_of_the_official_code():
    torch.manual_seed(0)
    z1, z2 = torch.randn(7, 5) * 0.7, torch.randn(7, 5) * 1.3 + 2
    n, d = z1.shape
    invariance = sum((z1[k, j].item() - z2[k, j].item()) ** 2 for k in range(n) for j in range(d)) / (n * d)
    variance = (variance_term(z1) + variance_term(z2)) / 2  # the code averages the two branches (the paper sums)
    covariance = covariance_term(z1) + covariance_term(z2)
    loss, s, v, c = vicreg(z1, z2, *WEIGHTS)
    assert (s.item(), v.item(), c.item()) == pytest.approx((invariance, variance, covariance), rel=1e-5)
    assert loss.item() == pytest.approx(25 * invariance + 25 * variance + covariance, rel=1e-5)


def test_variance_term_penalises_a_collapsed_batch():
    # every image gets the same embedding: each std is sqrt(0 + ε), so each dimension costs 1 − sqrt(ε) ≈ 0.99
    assert vicreg_variance(torch.full((16, 8), 3.0)).item() == pytest.approx(1 - 1e-4 ** 0.5)
    # dimensional collapse: half of the dimensions constant costs half of that
    z = torch.randn(512, 8) * 5
    z[:, 4:] = 1.0
    assert vicreg_variance(z).item() == pytest.approx((1 - 1e-4 ** 0.5) / 2, rel=1e-4)


def test_variance_term_is_zero_when_every_dimension_has_std_of_at_least_one():
    torch.manual_seed(0)
    z = torch.randn(64, 16)
    z = (z - z.mean(0)) / z.std(0) * torch.linspace(1.0, 4.0, 16)  # stds exactly 1 ... 4
    assert vicreg_variance(z).item() == 0
    assert vicreg_variance(z * 0.5).item() > 0  # and is no longer once some std falls below 1


def test_covariance_term_is_zero_for_decorrelated_and_positive_for_redundant_dimensions():
    z = torch.tensor([[1.0, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]])  # Hadamard columns: orthogonal, zero mean
    assert vicreg_covariance(z).item() == pytest.approx(0, abs=1e-7)
    redundant = torch.cat([z[:, :1], z[:, :1]], dim=1)  # two copies of one dimension, variance 4/3 each
    assert vicreg_covariance(redundant).item() == pytest.approx(2 * (4 / 3) ** 2 / 2)
    assert vicreg_covariance(redundant).item() == pytest.approx(covariance_term(redundant))


def test_the_minimum_is_a_spread_decorrelated_embedding_and_without_variance_collapse_is_one():
    z = 2 * torch.tensor([[1.0, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]])  # std 2.3 per dimension, decorrelated
    assert vicreg(z, z, *WEIGHTS)[0].item() == pytest.approx(0, abs=1e-6)
    collapsed = torch.zeros(4, 3)
    assert vicreg(collapsed, collapsed, *WEIGHTS)[0].item() == pytest.approx(25 * (1 - 1e-4 ** 0.5))
    # μ = 0 (the paper's ablation): the constant embedding costs nothing
    assert vicreg(collapsed, collapsed, 25.0, 0.0, 1.0)[0].item() == 0


def test_loss_stays_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    z1, z2 = torch.randn(64, 32).bfloat16(), torch.randn(64, 32).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = vicreg(z1, z2, *WEIGHTS)[0]
    assert mixed.dtype == torch.float32
    assert mixed.item() == pytest.approx(vicreg(z1.float(), z2.float(), *WEIGHTS)[0].item(), rel=1e-5)


def resolved(image_size, **method):
    return resolved_method("vicreg", image_size, **method)


def make(image_size, **method):
    return build_method(resolved(image_size, **method), DataFacts(1000))


def test_expander_is_the_official_mlp():
    modules = list(make(32, proj_hidden_dim=48, proj_dim=40).projector)
    kinds = [type(m).__name__ for m in modules]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    linears = [(m.in_features, m.out_features, m.bias is not None) for m in modules if isinstance(m, nn.Linear)]
    assert linears == [(256, 48, True), (48, 48, True), (48, 40, False)]
    assert all(m.affine for m in modules if isinstance(m, nn.BatchNorm1d))


@pytest.mark.parametrize("image_size, width", [(224, 8192), (32, 2048)])
def test_recipe_expander_is_8192_wide_on_imagenet_and_2048_on_small_images(image_size, width):
    m = resolved(image_size).method
    assert (m.proj_hidden_dim, m.proj_dim, m.proj_layers) == (width, width, 3)
    assert (m.invariance_weight, m.variance_weight, m.covariance_weight) == WEIGHTS


def test_forward_reports_the_three_terms_and_their_weights_are_flags():
    torch.manual_seed(0)
    method = make(32, proj_hidden_dim=64, proj_dim=32, invariance_weight=2.0, variance_weight=3.0,
                  covariance_weight=0.5)
    out = method([torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)])
    assert torch.allclose(out["loss"], 2 * out["invariance"] + 3 * out["variance"] + 0.5 * out["covariance"])


def _rank(rank, init_file, z1, z2, out):
    torch.set_num_threads(1)  # a forked child must not reuse the parent's thread pools
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    half = slice(rank * len(z1) // 2, (rank + 1) * len(z1) // 2)
    a, b = z1[half].clone().requires_grad_(), z2[half].clone().requires_grad_()
    loss, invariance, variance, covariance = vicreg(a, b, *WEIGHTS)
    loss.backward()
    torch.save({"terms": torch.stack([invariance, variance, covariance]).detach(), "grad": a.grad}, f"{out}.{rank}")
    torch.distributed.destroy_process_group()


@FORKED_GLOO
def test_two_processes_gather_the_batch_for_variance_and_covariance(tmp_path):
    """Half the batch on each of two processes: as the official code, variance and covariance are those of the whole
    batch and invariance is each process's own; the gradient DDP averages equals the one-process gradient."""
    torch.manual_seed(0)
    z1, z2 = torch.randn(16, 6), torch.randn(16, 6)
    torch.multiprocessing.start_processes(_rank, (str(tmp_path / "init"), z1, z2, str(tmp_path / "out")), nprocs=2,
                                          start_method="fork")  # spawn would re-import torch: 10-40 s
    ranks = [torch.load(tmp_path / f"out.{r}") for r in (0, 1)]
    whole = z1.clone().requires_grad_()
    _, _, variance, covariance = vicreg(whole, z2, *WEIGHTS)
    vicreg(whole, z2, *WEIGHTS)[0].backward()
    for r, result in enumerate(ranks):
        local = slice(r * 8, (r + 1) * 8)
        assert result["terms"][0].item() == pytest.approx(((z1[local] - z2[local]) ** 2).mean().item(), rel=1e-5)
        assert result["terms"][1:].tolist() == pytest.approx([variance.item(), covariance.item()], rel=1e-5)
    averaged = (torch.cat([ranks[0]["grad"], ranks[1]["grad"]]) / 2)
    assert torch.allclose(averaged, whole.grad, atol=1e-6)

"""Barlow Twins' claims (Zbontar et al. 2021, official main.py): the loss drives the cross-correlation matrix of the
two views' batch-standardised embeddings to the identity, so it is 0 for perfectly correlated, decorrelated features
and penalises both a constant and a redundant embedding; the projector is [Linear(no bias) → BN → ReLU] × 2 →
Linear(no bias); the statistics are those of the global batch when several processes train."""

import multiprocessing as mp

import pytest
import torch
from torch import nn

from contrastive_cli.losses import barlow_twins, batch_standardize
from contrastive_cli.methods.base import build_method
from contrastive_cli.methods.fields import DataFacts
from conftest import resolved_method

LAMBDA = 0.0051
FORKED_GLOO = pytest.mark.skipif(not torch.distributed.is_available() or "fork" not in mp.get_all_start_methods(),
                                 reason="needs torch.distributed (gloo) and forked processes")


def decorrelated(batch=8, dim=4):
    """Columns of a Hadamard matrix without its all-ones column: zero mean, unit (biased) variance, orthogonal."""
    h = torch.ones(1, 1)
    while len(h) < batch:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)])
    return h[:, 1:dim + 1]


def test_loss_is_the_formula_over_the_cross_correlation_matrix():
    torch.manual_seed(0)
    z1, z2 = torch.randn(6, 5) * 3 + 1, torch.randn(6, 5)
    b, d = z1.shape

    def standardised(z, j):  # BN(affine=False): biased variance, eps 1e-5
        column = [z[k, j].item() for k in range(b)]
        mean = sum(column) / b
        var = sum((v - mean) ** 2 for v in column) / b
        return [(v - mean) / (var + 1e-5) ** 0.5 for v in column]

    n1, n2 = [standardised(z1, j) for j in range(d)], [standardised(z2, j) for j in range(d)]
    c = [[sum(n1[i][k] * n2[j][k] for k in range(b)) / b for j in range(d)] for i in range(d)]
    on = sum((1 - c[i][i]) ** 2 for i in range(d))
    off = sum(c[i][j] ** 2 for i in range(d) for j in range(d) if i != j)
    loss, on_diagonal, off_diagonal = barlow_twins(z1, z2, LAMBDA)
    assert on_diagonal.item() == pytest.approx(on, rel=1e-5)
    assert off_diagonal.item() == pytest.approx(off, rel=1e-5)
    assert loss.item() == pytest.approx(on + LAMBDA * off, rel=1e-5)


def test_the_standardisation_is_batch_norm_without_affine():
    z = torch.randn(16, 7) * 4 - 2
    assert torch.allclose(batch_standardize(z), nn.BatchNorm1d(7, affine=False).train()(z), atol=1e-6)


def test_loss_is_zero_for_perfectly_correlated_decorrelated_features():
    z = decorrelated(batch=8, dim=4)
    loss, on_diagonal, off_diagonal = barlow_twins(z, z, LAMBDA)
    assert loss.item() < 1e-8 and off_diagonal.item() < 1e-10
    # a correlation matrix: scaling and shifting a dimension changes nothing
    assert barlow_twins(z * torch.tensor([3.0, 0.5, 2.0, 7.0]) + 4.0, z, LAMBDA)[0].item() < 1e-8


def test_a_constant_embedding_pays_the_whole_invariance_term():
    # every dimension standardises to 0: C = 0, each of the d diagonal terms costs (1 − 0)²: collapse is no minimum
    loss, on_diagonal, off_diagonal = barlow_twins(torch.ones(8, 5), torch.ones(8, 5), LAMBDA)
    assert on_diagonal.item() == pytest.approx(5) and off_diagonal.item() == 0 and loss.item() == pytest.approx(5)


def test_the_redundancy_term_penalises_dimensions_that_copy_each_other():
    # d copies of one perfectly invariant feature: the diagonal is satisfied, every off-diagonal C_ij is 1
    z = decorrelated(batch=8, dim=1).repeat(1, 4)
    loss, on_diagonal, off_diagonal = barlow_twins(z, z, LAMBDA)
    assert on_diagonal.item() < 1e-8 and off_diagonal.item() == pytest.approx(4 * 3, rel=1e-4)
    assert loss.item() == pytest.approx(LAMBDA * 12, rel=1e-4)
    assert barlow_twins(z, z, 0.0)[0].item() < 1e-8  # λ = 0: invariance alone does not see the redundancy


def test_loss_stays_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    z1, z2 = torch.randn(64, 32), torch.randn(64, 32)
    exact = barlow_twins(z1, z2, LAMBDA)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = barlow_twins(z1.bfloat16(), z2.bfloat16(), LAMBDA)[0]
    assert mixed.dtype == torch.float32
    assert mixed.item() == pytest.approx(barlow_twins(z1.bfloat16().float(), z2.bfloat16().float(), LAMBDA)[0].item(),
                                         rel=1e-5)
    assert exact.item() == pytest.approx(mixed.item(), rel=1e-2)


def resolved(image_size, **method):
    return resolved_method("barlowtwins", image_size, **method)


def make(image_size, **method):
    return build_method(resolved(image_size, **method), DataFacts(1000))


def linears(head):
    """(in, out, bias, followed by BN, followed by ReLU) per Linear."""
    modules = list(head)
    return [(m.in_features, m.out_features, m.bias is not None,
             i + 1 < len(modules) and isinstance(modules[i + 1], nn.BatchNorm1d),
             i + 2 < len(modules) and isinstance(modules[i + 2], nn.ReLU))
            for i, m in enumerate(modules) if isinstance(m, nn.Linear)]


def test_projector_is_the_official_bias_free_mlp():
    method = make(32, proj_hidden_dim=48, proj_dim=40)
    assert linears(method.projector) == [(256, 48, False, True, True), (48, 48, False, True, True),
                                         (48, 40, False, False, False)]


@pytest.mark.parametrize("image_size, width", [(224, 8192), (32, 2048)])
def test_recipe_projector_is_8192_wide_on_imagenet_and_2048_on_small_images(image_size, width):
    m = resolved(image_size).method
    assert (m.proj_hidden_dim, m.proj_dim, m.proj_layers, m.redundancy_weight) == (width, width, 3, LAMBDA)


def test_forward_reports_both_terms_and_lambda_is_a_flag():
    torch.manual_seed(0)
    method = make(32, proj_hidden_dim=64, proj_dim=32, redundancy_weight=0.1)
    out = method([torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)])
    assert torch.allclose(out["loss"], out["on_diagonal"] + 0.1 * out["off_diagonal"])


def _rank(rank, init_file, z1, z2, out):
    torch.set_num_threads(1)  # a forked child must not reuse the parent's thread pools
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    half = slice(rank * len(z1) // 2, (rank + 1) * len(z1) // 2)
    a, b = z1[half].clone().requires_grad_(), z2[half].clone().requires_grad_()
    loss = barlow_twins(a, b, LAMBDA)[0]
    loss.backward()
    torch.save({"loss": loss.detach(), "grad": a.grad}, f"{out}.{rank}")
    torch.distributed.destroy_process_group()


@FORKED_GLOO
def test_two_processes_see_the_cross_correlation_of_the_global_batch(tmp_path):
    """Half the batch on each of two processes: the same loss as one process on the whole batch, and the gradient DDP
    averages over processes equals the one-process gradient."""
    torch.manual_seed(0)
    z1, z2 = torch.randn(16, 6), torch.randn(16, 6)
    torch.multiprocessing.start_processes(_rank, (str(tmp_path / "init"), z1, z2, str(tmp_path / "out")), nprocs=2,
                                          start_method="fork")  # spawn would re-import torch: 10-40 s
    ranks = [torch.load(tmp_path / f"out.{r}") for r in (0, 1)]
    whole = z1.clone().requires_grad_()
    loss = barlow_twins(whole, z2, LAMBDA)[0]
    loss.backward()
    for r, result in enumerate(ranks):
        assert torch.allclose(result["loss"], loss.detach(), atol=1e-5)
        assert torch.allclose(result["grad"] / 2, whole.grad[r * 8:(r + 1) * 8], atol=1e-5)

"""InvaSpread's claims (Ye et al. 2019; mangye16/Unsupervised_Embedding_Learning): a softmax embedding over the real-time
features of a batch, with no memory; each view must recognise its sibling (invariance) and no other view (spreading);
the whole encoder learns from both augmented views."""

import math

import pytest
import torch
import torch.nn.functional as F

from contrastive_cli.methods.base import build_method
from contrastive_cli.methods.fields import DataFacts
from contrastive_cli.methods.invaspread import invariance_spreading_loss
from contrastive_cli.spec import PretrainSpec, resolve_pretrain


def make(**fields):
    spec = PretrainSpec.model_validate({"method": {"name": "invaspread", **fields}, "backbone": {"name": "small_cnn"},
                                        "optim": {"batch_size": 8}})
    return build_method(resolve_pretrain(spec, 32, 1000), DataFacts(1000))


def loop_loss(z, t):
    """The formula, anchor by anchor: p(a, j) = exp(z_a·z_j/τ) / Σ_{k≠a} exp(z_a·z_k/τ);
    L = −(1/2B) Σ_a [log p(a, sibling) + Σ_{j ∉ {a, sibling}} log(1 − p(a, j))]."""
    n, total = len(z), 0.0
    for a in range(n):
        sibling = (a + n // 2) % n
        scores = {j: math.exp(float(z[a] @ z[j]) / t) for j in range(n) if j != a}
        norm = sum(scores.values())
        total += -math.log(scores[sibling] / norm)
        total += -sum(math.log(1 - s / norm) for j, s in scores.items() if j != sibling)
    return total / n


def test_loss_equals_a_direct_double_loop_computation():
    torch.manual_seed(0)
    z = F.normalize(torch.randn(12, 16), dim=1)  # B = 6 images, two views each
    invariance, spreading = invariance_spreading_loss(z, 0.1)
    assert (invariance + spreading).item() == pytest.approx(loop_loss(z, 0.1), rel=1e-5)


def test_method_loss_is_the_formula_on_its_embeddings_and_reads_out_the_positive_term():
    torch.manual_seed(0)
    method = make()
    views = [torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)]
    out = method(views)
    with torch.no_grad():
        z = F.normalize(method.projector(method.backbone(torch.cat(views))), dim=1)
    assert out["loss"].item() == pytest.approx(loop_loss(z, 0.1), rel=1e-4)
    assert out["loss"].item() == pytest.approx((out["invariance"] + out["spreading"]).item(), rel=1e-6)
    # the InfoNCE readout covers the invariance term only, a softmax over the 2B − 1 = 15 other views
    assert out["mi_max"] == pytest.approx(math.log(15))
    assert out["mi_bound"].item() == pytest.approx(math.log(15) - out["invariance"].item(), abs=1e-5)


def test_gradient_reaches_the_encoder_through_both_views():
    torch.manual_seed(0)
    method = make()
    views = [torch.randn(8, 3, 32, 32, requires_grad=True), torch.randn(8, 3, 32, 32, requires_grad=True)]
    method(views)["loss"].backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in views)
    assert all(v.grad.flatten(1).abs().sum(1).min() > 0 for v in views)  # every image of each view
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.backbone.parameters())


def test_perfectly_invariant_and_spread_embeddings_score_lower():
    """Siblings identical and instances orthogonal (the loss's goal) beat a random embedding."""
    torch.manual_seed(0)
    spread = torch.eye(8)[:4]
    ideal = torch.cat([spread, spread])
    random = F.normalize(torch.randn(8, 8), dim=1)
    assert sum(invariance_spreading_loss(ideal, 0.1)) < sum(invariance_spreading_loss(random, 0.1))


def test_recipe_follows_the_official_code():
    spec = make().spec
    assert (spec.temperature, spec.proj_dim) == (0.1, 128)
    run = resolve_pretrain(PretrainSpec.model_validate({"method": {"name": "invaspread"}}), 96, 1000)
    assert run.augment.jitter == (0.4, 0.4, 0.4, 0.4) and run.augment.jitter_p == 1.0
    assert (run.optim.weight_decay, run.optim.schedule, run.augment.crop_scale) == (5e-4, "step", (0.2, 1.0))

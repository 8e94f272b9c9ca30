"""MoCo v3's claims: ctr(q, k) = 2τ·CE(q̂·k̂ᵀ/τ) over in-batch keys (labels offset by rank when gathered), the loss
ctr(q1, k2) + ctr(q2, k1), a momentum encoder (backbone + projector) that gets no gradient and follows the cosine
schedule from m up to 1, the official heads per backbone family, and the ViT's frozen random patch projection."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from contrastive_cli import losses
from contrastive_cli.losses import in_batch_infonce, mocov3_ctr
from contrastive_cli.methods.fields import DataFacts
from contrastive_cli.methods.mocov3 import MoCoV3, freeze_patch_embedding
from contrastive_cli.methods.mocov3_spec import MoCoV3Spec
from contrastive_cli.optim import build_optimizer
from contrastive_cli.spec import OptimSpec, PretrainSpec, SpecError, resolve_pretrain
from contrastive_cli.train import prepare


def tiny(tmp_path, backbone="small_cnn", **method):
    return PretrainSpec.model_validate({
        "method": {"name": "mocov3", **method}, "backbone": {"name": backbone},
        "data": {"source": "synthetic", "subset": 96}, "optim": {"epochs": 1, "batch_size": 32},
        "monitor": {"images": 64}, "runtime": {"out": str(tmp_path / "run")}})


def views_of(run, seed=0):
    x, _, _ = next(run.data.batches(torch.arange(32), 32))
    g = torch.Generator().manual_seed(seed)
    s = run.spec
    return [v(x, g) for v in run.method.views(s.augment, s.data.image_size, run.data.mean, run.data.std)]


def direct_ctr(q, k, t, offset=0):
    """2τ · mean_i −log( exp(q̂_i·k̂_{offset+i}/τ) / Σ_j exp(q̂_i·k̂_j/τ) ), one query at a time."""
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    total = 0.0
    for i in range(len(q)):
        scores = torch.stack([q[i] @ k[j] / t for j in range(len(k))])
        total += -(scores[offset + i] - torch.logsumexp(scores, 0))
    return 2 * t * total / len(q)


@pytest.mark.parametrize("t", [1.0, 0.2])
def test_ctr_is_2tau_times_the_in_batch_cross_entropy(t):
    torch.manual_seed(0)
    q, k = torch.randn(6, 8), torch.randn(6, 8)
    assert torch.allclose(mocov3_ctr(q, k, t), direct_ctr(q, k, t), atol=1e-5)
    # the 2τ factor: at τ = 1 the loss is twice the plain InfoNCE
    assert torch.allclose(mocov3_ctr(q, k, 1.0), 2 * in_batch_infonce(q, k, 1.0))


def test_gathered_keys_put_each_query_s_positive_at_its_rank_s_offset(monkeypatch):
    """Under torch.distributed the keys of all processes are the candidates; rank r's query i has key r·N + i."""
    torch.manual_seed(0)
    q, k_local, k_other = torch.randn(4, 8), torch.randn(4, 8), torch.randn(8, 8)
    others = F.normalize(k_other, dim=1)  # what ranks 0 and 2 contribute, normalised there
    monkeypatch.setattr(losses, "gather", lambda x: torch.cat([others[:4], x, others[4:]]))
    monkeypatch.setattr(losses, "gathered_rank", lambda: 1)
    monkeypatch.setattr(losses, "gathering", lambda: True)
    everything = torch.cat([k_other[:4], k_local, k_other[4:]])
    assert torch.allclose(mocov3_ctr(q, k_local, 0.2), direct_ctr(q, everything, 0.2, offset=4), atol=1e-5)


def test_loss_is_the_symmetric_sum_over_the_momentum_keys(tmp_path):
    run = prepare(tiny(tmp_path))
    method, views = run.method, views_of(run)
    assert run.spec.method.temperature == 1.0
    out = method(views)
    with torch.no_grad():  # train-mode BN uses the batch's statistics: the same batch gives the same values
        q1, q2 = (method.predictor(method.projector(method.backbone(x))) for x in views)
        k1, k2 = (method.momentum_projector(method.momentum_backbone(x)) for x in views)
    expected = direct_ctr(q1, k2, 1.0) + direct_ctr(q2, k1, 1.0)
    assert torch.allclose(out["loss"].detach(), expected, atol=1e-4)
    assert torch.allclose(method(views[::-1])["loss"].detach(), expected, atol=1e-4)  # view order does not matter
    assert math.isclose(out["mi_max"], math.log(32))


def test_momentum_encoder_gets_no_gradient_and_follows_the_cosine_schedule(tmp_path):
    run = prepare(tiny(tmp_path))
    method = run.method
    frozen = list(method.momentum_backbone.parameters()) + list(method.momentum_projector.parameters())
    assert frozen and not any(p.requires_grad for p in frozen)
    method(views_of(run))["loss"].backward()
    assert all(p.grad is None for p in frozen)
    assert method.backbone.features[0][0].weight.grad.abs().sum() > 0
    # m(p) = 1 − (1 − m₀)(cos(πp) + 1)/2, from m₀ = 0.99 at the start up to 1 at the end (--moco-m-cos)
    assert [method.momentum(p) for p in (0.0, 0.5, 1.0)] == pytest.approx([0.99, 0.995, 1.0])
    # after a step: θ_k ← m·θ_k + (1 − m)·θ_q with the step's m
    with torch.no_grad():
        for p in method.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    online = [p.detach().clone() for p in method.projector.parameters()]
    before = [p.detach().clone() for p in method.momentum_projector.parameters()]
    method.after_step(0.5)
    for o, b, a in zip(online, before, method.momentum_projector.parameters()):
        assert torch.allclose(a, 0.995 * b + 0.005 * o, atol=1e-6)


def linears_and_norms(head):
    """Each module of a head in order: (kind, Linear: has a bias / BN: affine / ReLU: None)."""
    return [(type(m).__name__, m.bias is not None if isinstance(m, nn.Linear) else getattr(m, "affine", None))
            for m in head]


def test_resnet_heads_follow_the_official_builder(tmp_path):
    run = prepare(tiny(tmp_path))
    method = run.method
    # projector: Linear(no bias) → BN → ReLU → Linear(no bias) → BN(affine=False)
    assert linears_and_norms(method.projector) == [("Linear", False), ("BatchNorm1d", True), ("ReLU", None),
                                                   ("Linear", False), ("BatchNorm1d", False)]
    # predictor: Linear(no bias) → BN → ReLU → Linear(no bias), no final BN for ResNets
    assert linears_and_norms(method.predictor) == [("Linear", False), ("BatchNorm1d", True), ("ReLU", None),
                                                   ("Linear", False)]
    assert [m.out_features for m in method.projector if isinstance(m, nn.Linear)] == [4096, 256]
    s = run.spec
    assert (s.method.temperature, s.method.proj_layers, s.method.momentum, s.method.freeze_patch_embed) == (
        1.0, 2, 0.99, False)
    assert (s.optim.optimizer, s.optim.exclude_bias_norm_wd, tuple(s.augment.blur_p), tuple(s.augment.solarize_p)) == (
        "sgd", True, (1.0, 0.1), (0.0, 0.2))


def tiny_vit():
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=4, num_layers=1, num_heads=2,
                                               hidden_dim=32, mlp_dim=64)
    vit.heads = nn.Identity()  # the CLS token is the feature
    return vit


def vit_run_spec(tmp_path, **method):
    """A resolved ViT run (the spec layer's warm-up cap and position-embedding default included)."""
    spec = PretrainSpec.model_validate({"method": {"name": "mocov3", **method}, "backbone": {"name": "vit_tiny"},
                                        "optim": {"epochs": 100, "batch_size": 8},
                                        "runtime": {"out": str(tmp_path / "run")}})
    return resolve_pretrain(spec, image_size=32, n_images=1000)


def test_vit_recipe_is_the_official_vit_recipe():
    recipe = MoCoV3Spec.recipe(small=True, vit=True)
    assert recipe["method"] == {"temperature": 0.2, "proj_layers": 3, "momentum": 0.99, "freeze_patch_embed": True}
    assert {k: recipe["optim"][k] for k in ("optimizer", "lr", "weight_decay", "warmup_epochs", "exclude_bias_norm_wd")} \
        == {"optimizer": "adamw", "lr": 1.5e-4, "weight_decay": 0.1, "warmup_epochs": 40, "exclude_bias_norm_wd": False}
    assert recipe["backbone"] == {"pos_embed": "sincos"}
    assert "backbone" not in MoCoV3Spec.recipe(small=True, vit=False)  # ResNets have no position embeddings


def test_vit_recipe_resolves_with_a_capped_warm_up_and_sincos_positions(tmp_path):
    s = vit_run_spec(tmp_path)
    assert s.method.freeze_patch_embed and s.backbone.pos_embed == "sincos"
    assert s.optim.warmup_epochs == 10  # the recipe's 40 epochs, capped at a tenth of this 100-epoch run
    assert vit_run_spec(tmp_path, freeze_patch_embed=False).method.freeze_patch_embed is False


def test_vit_patch_projection_stays_at_its_random_init_and_the_heads_have_the_vit_layout():
    recipe = MoCoV3Spec.recipe(small=True, vit=True)
    spec = SimpleNamespace(method=MoCoV3Spec(**recipe["method"]), backbone=SimpleNamespace(is_vit=True))
    vit = tiny_vit()
    initial = vit.conv_proj.weight.detach().clone()
    method = MoCoV3(spec, vit, 32, DataFacts(1000))
    assert not any(p.requires_grad for p in method.backbone.conv_proj.parameters())
    assert [m.out_features for m in method.projector if isinstance(m, nn.Linear)] == [4096, 4096, 256]
    assert linears_and_norms(method.predictor)[-1] == ("BatchNorm1d", False)  # the ViT predictor's last BN
    optim = OptimSpec(**{k: v for k, v in recipe["optim"].items() if k != "warmup_epochs"})
    optimizer = build_optimizer(method, optim, torch.device("cpu"))
    assert all(p.requires_grad for g in optimizer.param_groups for p in g["params"])
    x = [torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)]
    method(x)["loss"].backward()
    assert method.backbone.conv_proj.weight.grad is None
    assert method.backbone.encoder.layers[0].mlp[0].weight.grad.abs().sum() > 0  # the rest of the ViT learns
    optimizer.step()
    method.after_step(0.5)
    assert torch.equal(method.backbone.conv_proj.weight, initial)
    assert torch.equal(method.momentum_backbone.conv_proj.weight, initial)


def test_freezing_needs_a_vit_patch_projection(tmp_path):
    with pytest.raises(SpecError, match="freeze-patch-embed.*small_cnn"):
        prepare(tiny(tmp_path, freeze_patch_embed=True))
    with pytest.raises(ValueError, match="conv_proj"):
        freeze_patch_embedding(torchvision.models.resnet18())

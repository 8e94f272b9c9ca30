"""LARS as SimCLR, BYOL and Barlow Twins run it: each weight matrix steps by the trust ratio η·‖w‖/‖g + wd·w‖ times
its gradient (plus decay), with SGD momentum; biases and norm weights are plain momentum SGD without decay."""

import pytest
import torch
from typer.testing import CliRunner

from contrastive_cli.cli import app
from contrastive_cli.optim import LARS


def one_step(weight, bias, grad_w, grad_b, **kwargs):
    w, b = torch.nn.Parameter(weight.clone()), torch.nn.Parameter(bias.clone())
    optimizer = LARS([{"params": [w, b], "lr": 0.5, "weight_decay": 0.1}], momentum=0.9, eta=0.01, **kwargs)
    w.grad, b.grad = grad_w.clone(), grad_b.clone()
    optimizer.step()
    return w.detach(), b.detach(), optimizer


def test_a_matrix_steps_by_the_trust_ratio_and_a_bias_by_plain_sgd():
    torch.manual_seed(0)
    weight, bias, grad_w, grad_b = torch.randn(8, 4), torch.randn(8), torch.randn(8, 4), torch.randn(8)
    w, b, _ = one_step(weight, bias, grad_w, grad_b)
    d = grad_w + 0.1 * weight
    expected_w = weight - 0.5 * (0.01 * weight.norm() / d.norm()) * d
    assert torch.allclose(w, expected_w, atol=1e-6)
    assert torch.allclose(b, bias - 0.5 * grad_b, atol=1e-6)  # not adapted, not decayed


def test_the_step_of_a_matrix_does_not_depend_on_the_gradient_scale():
    """What makes large batches trainable: a layer's relative change is lr·η whatever its gradient's size."""
    torch.manual_seed(1)
    weight, grad = torch.randn(16, 16), torch.randn(16, 16)
    tiny, huge = (matrix_step(weight, scale * grad) for scale in (1e-3, 1e3))
    assert torch.allclose(tiny, huge, rtol=1e-4)
    assert torch.isclose(huge.norm() / weight.norm(), torch.tensor(0.5 * 0.01), rtol=1e-4)


def matrix_step(weight, grad):
    """weight − weight after one LARS step (lr 0.5, η 0.01, no decay)."""
    w = torch.nn.Parameter(weight.clone())
    w.grad = grad
    LARS([{"params": [w], "lr": 0.5, "weight_decay": 0.0}], eta=0.01).step()
    return weight - w.detach()


def test_the_momentum_buffer_accumulates_the_adapted_steps():
    torch.manual_seed(2)
    weight, bias, grad_w, grad_b = torch.randn(4, 4), torch.randn(4), torch.randn(4, 4), torch.randn(4)
    w, b, optimizer = one_step(weight, bias, grad_w, grad_b)
    first = weight - w
    params = optimizer.param_groups[0]["params"]
    params[0].grad, params[1].grad = grad_w.clone(), grad_b.clone()
    before = params[0].detach().clone()
    optimizer.step()
    d = grad_w + 0.1 * before
    second = 0.9 * first + 0.5 * (0.01 * before.norm() / d.norm()) * d
    assert torch.allclose(before - params[0].detach(), second, atol=1e-6)


def test_pretraining_with_lars_runs_and_resumes(tmp_path):
    runner = CliRunner()
    flags = ["pretrain", "--method", "simclr", "--backbone", "small_cnn", "--subset", "64", "--batch-size", "32",
             "--optimizer", "lars", "--lars-eta", "0.02", "--monitor-images", "0", "--out", str(tmp_path / "r")]
    assert runner.invoke(app, [*flags, "--epochs", "1"]).exit_code == 0
    result = runner.invoke(app, ["pretrain", "--resume", str(tmp_path / "r"), "--epochs", "2"])
    assert result.exit_code == 0, result.output
    from contrastive_cli import checkpoint as ckpt
    meta = ckpt.read_meta(tmp_path / "r")
    assert meta["spec"]["optim"]["optimizer"] == "lars" and meta["step"] == 4


def test_the_large_image_recipes_use_lars_where_their_papers_do():
    """ImageNet-size images: LARS for SimCLR, BYOL, MoCo v3 (ResNet), SwAV, Barlow Twins (biases and BN at 0.0048 /
    0.2 of the lr) and VICReg; small images keep their measured SGD/AdamW settings; a ViT keeps MoCo v3's AdamW."""
    from contrastive_cli.spec import PretrainSpec, resolve_pretrain

    def optim(method, size, backbone="resnet18"):
        spec = PretrainSpec.model_validate({"method": {"name": method}, "backbone": {"name": backbone}})
        return resolve_pretrain(spec, size, 100000).optim

    papers = {"simclr": 0.3, "byol": 0.45, "mocov3": 0.6, "swav": 0.6, "barlowtwins": 0.2, "vicreg": 0.2}
    for method, lr in papers.items():
        large, small = optim(method, 224), optim(method, 32)
        assert (large.optimizer, large.lr, large.lars_eta) == ("lars", lr, 0.001), method
        assert small.optimizer in ("sgd", "adamw"), method
    assert optim("barlowtwins", 224).bias_lr_ratio == 0.024 and optim("simclr", 224).bias_lr_ratio == 1.0
    assert optim("mocov3", 224, "vit_small").optimizer == "adamw"


def test_biases_and_norms_take_their_fraction_of_the_lr():
    from types import SimpleNamespace
    from contrastive_cli.optim import decay_groups
    layer = torch.nn.Linear(4, 4)
    o = SimpleNamespace(exclude_bias_norm_wd=True, weight_decay=1e-6, bias_lr_ratio=0.024)
    matrices, vectors = decay_groups(list(layer.parameters()), 0.4, o)
    assert (matrices["lr"], matrices["weight_decay"]) == (0.4, 1e-6)
    assert vectors["lr"] == pytest.approx(0.4 * 0.024) and vectors["weight_decay"] == 0.0

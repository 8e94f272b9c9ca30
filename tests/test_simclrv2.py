"""SimCLR v2's claims: a 3-layer projector laid out as tf2/model.py (bias-free Linears, BN on every layer, ReLU on
all but the last, no BN shift on the last), its first layer(s) kept by the exported encoder through checkpoints and
evaluations, NT-Xent when the memory is off, and the memory's queued keys as extra negatives when it is on."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from contrastive_cli.evaluate import load_encoder
from contrastive_cli.losses import nt_xent
from contrastive_cli.methods.simclrv2 import BatchNormNoShift, nt_xent_with_queue, projection_head
from contrastive_cli.spec import PretrainSpec, SpecError
from contrastive_cli.train import prepare, train


def tiny(tmp_path, epochs=1, **method):
    return PretrainSpec.model_validate({
        "method": {"name": "simclrv2", **method}, "backbone": {"name": "small_cnn"},
        "data": {"source": "synthetic", "subset": 96}, "optim": {"epochs": epochs, "batch_size": 32},
        "monitor": {"images": 64}, "runtime": {"out": str(tmp_path / "run")}})


def views_of(run, seed=0):
    x, _, _ = next(run.data.batches(torch.arange(32), 32))
    g = torch.Generator().manual_seed(seed)
    s = run.spec
    return [v(x, g) for v in run.method.views(s.augment, s.data.image_size, run.data.mean, run.data.std)]


def layers(head):
    """(has bias, BN γ, BN β, ReLU) of each Linear in a head."""
    out, modules = [], list(head.modules())
    for i, m in enumerate(modules):
        if isinstance(m, nn.Linear):
            bn = next(b for b in modules[i:] if isinstance(b, nn.BatchNorm1d))
            after = modules[modules.index(bn) + 1] if modules.index(bn) + 1 < len(modules) else None
            out.append((m.bias is not None, bn.weight is not None, bn.bias is not None, isinstance(after, nn.ReLU),
                        m.in_features, m.out_features))
    return out


def test_projector_has_the_tf2_layout():
    # middle layers: Linear(no bias) → BN(γ, β) → ReLU at the input width; last: Linear(no bias) → BN(γ only)
    assert layers(nn.Sequential(*projection_head(2048, 3, 128))) == [
        (False, True, True, True, 2048, 2048), (False, True, True, True, 2048, 2048),
        (False, True, False, False, 2048, 128)]


def test_last_bn_scales_but_does_not_shift():
    bn = BatchNormNoShift(4).eval()
    assert [n for n, _ in bn.named_parameters()] == ["weight"]
    with torch.no_grad():
        bn.weight.fill_(2.0)
    x = torch.randn(5, 4)
    assert torch.allclose(bn(x), 2 * x / math.sqrt(1 + bn.eps))  # running stats 0 / 1: only γ acts


def test_kept_layer_moves_into_the_encoder_and_the_projector_holds_the_rest(tmp_path):
    run = prepare(tiny(tmp_path, keep_proj_layers=1))
    method = run.method
    assert set(dict(method.backbone.named_children())) == {"backbone", "projector"}
    assert len(method.backbone.projector) == 1 and len(method.projector) == 2
    kept = layers(method.backbone.projector) + layers(method.projector)
    assert kept == layers(nn.Sequential(*projection_head(256, 3, 128)))  # the same 3-layer head, split after layer 1
    assert method.feature_dim == 256 and method.exported_encoder() is method.backbone
    assert run.spec.method.proj_layers == 3


def test_no_kept_layer_exports_the_plain_torchvision_style_backbone(tmp_path):
    run = prepare(tiny(tmp_path, keep_proj_layers=0))
    assert not hasattr(run.method.backbone, "projector") and len(run.method.projector) == 3


def test_keeping_every_layer_is_refused(tmp_path):
    with pytest.raises(SpecError, match="keep-proj-layers"):
        prepare(tiny(tmp_path, keep_proj_layers=3))


@pytest.mark.parametrize("keep", [1, 2])
def test_kept_layers_survive_a_checkpoint_and_evaluate_load_encoder(tmp_path, keep):
    run = prepare(tiny(tmp_path, keep_proj_layers=keep))
    train(run)
    encoder, meta = load_encoder(run.checkpoint_path, torch.device("cpu"))
    assert meta["backbone"]["name"] == f"small_cnn+projector[:{keep}]" and not meta["backbone"]["torchvision"]
    assert len(encoder.projector) == keep
    x = views_of(run)[0]
    run.method.eval()
    with torch.no_grad():
        features = encoder(x)
        assert torch.allclose(features, run.method.exported_encoder()(x), atol=1e-5)
    assert features.shape[1] == meta["feature_dim"] == 256


def test_knn_eval_reads_the_composite_encoder(tmp_path):
    from typer.testing import CliRunner

    from contrastive_cli.cli import app
    run = prepare(tiny(tmp_path, keep_proj_layers=1))
    train(run)
    result = CliRunner().invoke(app, ["knn-eval", str(run.dir), "--k", "5", "--json", "--test-subset", "64"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["feature_dim"] == 256 and 0 <= report["results"][0]["top1"] <= 100


def test_composite_encoder_scripts_for_export(tmp_path):
    encoder, _ = load_encoder_of(tmp_path)
    scripted = torch.jit.script(encoder)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(scripted(x), encoder(x), atol=1e-5)


def load_encoder_of(tmp_path):
    run = prepare(tiny(tmp_path))
    train(run)
    return load_encoder(run.checkpoint_path, torch.device("cpu"))


def test_loss_is_nt_xent_when_the_memory_is_off(tmp_path):
    run = prepare(tiny(tmp_path))
    assert run.spec.method.queue_size == 0 and run.method.momentum_pairs() == []
    views = views_of(run)
    torch.manual_seed(0)
    out = run.method(views)
    z1, z2 = run.method.projector(run.method.backbone(torch.cat(views))).chunk(2)  # BN batch stats: same values
    assert torch.allclose(out["loss"], nt_xent(z1, z2, 0.5), atol=1e-5)
    assert math.isclose(out["mi_max"], math.log(2 * 32 - 1))


def test_queue_loss_against_a_loop_and_nt_xent_without_keys():
    torch.manual_seed(0)
    z1, z2, queue = torch.randn(4, 8), torch.randn(4, 8), F.normalize(torch.randn(6, 8), dim=1)
    t = 0.3
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    total = 0.0
    for i in range(8):
        positive = (i + 4) % 8
        scores = [z[i] @ z[j] / t for j in range(8) if j != i] + [z[i] @ k / t for k in queue]
        total += -(z[i] @ z[positive] / t - torch.logsumexp(torch.stack(scores), 0))
    assert torch.allclose(nt_xent_with_queue(z1, z2, queue, t), total / 8, atol=1e-5)
    assert torch.allclose(nt_xent_with_queue(z1, z2, queue[:0], t), nt_xent(z1, z2, t), atol=1e-6)


def test_the_memory_adds_the_queue_to_the_logits_and_fills_it_from_the_momentum_network(tmp_path):
    run = prepare(tiny(tmp_path, queue_size=40))
    method = run.method
    assert [t for _, t in method.momentum_pairs()] == [method.momentum_backbone, method.momentum_projector]
    views = views_of(run)
    before = method.queue.keys.clone()
    out = method(views)
    # the readout counts the queue: 1 positive + 62 in-batch negatives + 40 queued keys
    assert math.isclose(out["mi_max"], math.log(2 * 32 - 1 + 40))
    # the loss used the queue held before the step: removing it from the logits changes the loss
    with torch.no_grad():
        z1, z2 = method.projector(method.backbone(torch.cat(views))).chunk(2)
    with_queue = nt_xent_with_queue(z1, z2, before, 0.5)
    assert torch.allclose(out["loss"].detach(), with_queue, atol=1e-4)
    assert not torch.allclose(with_queue, nt_xent(z1, z2, 0.5), atol=1e-3)
    # one momentum key per image was pushed: the second view's, L2-normalised (no EMA yet: the step's own weights)
    with torch.no_grad():
        keys = F.normalize(method.momentum_projector(method.momentum_backbone(views[1])), dim=1)
    assert int(method.queue.ptr) == 32
    assert torch.allclose(method.queue.keys[:32], keys, atol=1e-5)
    assert torch.equal(method.queue.keys[32:], before[32:])


def test_queue_larger_than_the_data_is_refused(tmp_path):
    with pytest.raises(SpecError, match="queue-size"):
        prepare(tiny(tmp_path, queue_size=500))


def test_recipe_follows_the_v2_readme(tmp_path):
    spec = prepare(tiny(tmp_path)).spec
    assert (spec.method.temperature, spec.optim.lr, spec.optim.weight_decay) == (0.5, 0.3, 1e-4)
    assert spec.augment.jitter == pytest.approx((0.4, 0.4, 0.4, 0.1)) and tuple(spec.augment.blur_p) == (0.0, 0.0)
    big = type(spec.method).recipe(small=False)
    assert big["method"]["temperature"] == 0.1 and big["augment"]["jitter"] == pytest.approx((0.8, 0.8, 0.8, 0.2))

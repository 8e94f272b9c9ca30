"""DINO as the paper and its code describe it: a student that matches, on every crop, the centred and sharpened
output of an EMA teacher on the other global crop; a weight-normalised last layer with g = 1, frozen in the first
epoch; per-parameter gradient clipping; the teacher's temperature warm-up; the teacher as the exported encoder."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from contrastive_cli import checkpoint as ckpt
from contrastive_cli.losses import dino_loss
from contrastive_cli.methods.dino_spec import DINOSpec
from contrastive_cli.collapse import inspect_collapse
from contrastive_cli.spec import InspectSpec, PretrainSpec, resolve_pretrain
from contrastive_cli.train import optimisation_step, prepare, train

SMALL_HEAD = {"out_dim": 64, "proj_hidden_dim": 32, "bottleneck_dim": 16}


def tiny_run(tmp_path, epochs=2, local_crops=2, **method):
    """Synthetic 32 px data, small CNN, 64 images in batches of 32 (2 steps an epoch), a small DINO head."""
    return prepare(PretrainSpec.model_validate({
        "method": {"name": "dino", **SMALL_HEAD, **method}, "backbone": {"name": "small_cnn"},
        "data": {"source": "synthetic", "subset": 64}, "augment": {"local_crops": local_crops},
        "optim": {"epochs": epochs, "batch_size": 32}, "runtime": {"out": str(tmp_path / "run")}}))


def batch_views(run, seed=0):
    x, _, indices = next(run.data.batches(torch.arange(32), 32))
    s, g = run.spec, torch.Generator().manual_seed(seed)
    return [v(x, g) for v in run.method.views(s.augment, s.data.image_size, run.data.mean, run.data.std)], indices


def direct_dino_loss(student_crops, teacher_globals, student_temp, teacher_temp, center):
    """The paper's Algorithm 1, written out pair by pair."""
    total, pairs = 0.0, 0
    for t, g_t in enumerate(teacher_globals):
        p_t = F.softmax((g_t - center) / teacher_temp, dim=1)
        for v, g_s in enumerate(student_crops):
            if v == t:
                continue  # the teacher's view itself
            total = total + (-(p_t * F.log_softmax(g_s / student_temp, dim=1)).sum(1)).mean()
            pairs += 1
    return total / pairs


def test_loss_is_the_cross_entropy_averaged_over_pairs_of_different_views():
    g = torch.Generator().manual_seed(0)
    student, teacher, center = torch.randn(6, 5, 12, generator=g), torch.randn(2, 5, 12, generator=g), torch.randn(12, generator=g)
    probs = F.softmax((teacher - center) / 0.04, dim=-1)
    expected = direct_dino_loss(student, teacher, 0.1, 0.04, center)
    assert torch.allclose(dino_loss(student, probs, 0.1), expected, atol=1e-5)
    # 2 teacher views x (6 - 1) student views = 10 pairs; with two crops only, the two cross-view pairs
    assert torch.allclose(dino_loss(student[:2], probs, 0.1), direct_dino_loss(student[:2], teacher, 0.1, 0.04, center))


def test_forward_loss_is_the_direct_computation_with_the_centre_before_its_update(tmp_path):
    run = tiny_run(tmp_path, warmup_teacher_temp_epochs=2, teacher_temp=0.07)
    m = run.method
    m.center.normal_()  # a centre that matters
    views, indices = batch_views(run)
    center_before = m.center.clone()
    with torch.no_grad():
        student = m.head(torch.cat([m.backbone(torch.cat(views[:2])), m.backbone(torch.cat(views[2:]))]))
        teacher = m.teacher_head(m.teacher_backbone(torch.cat(views[:2])))
    progress = 0.5  # epoch 1 of 2: the warm-up's last value, 0.07
    expected = direct_dino_loss(student.chunk(len(views)), teacher.chunk(2), 0.1, 0.07, center_before)
    out = m(views, indices, progress)
    assert torch.allclose(out["loss"], expected, atol=1e-5)
    # the centre moved by its EMA: c <- 0.9 c + 0.1 * mean of the teacher's outputs on both global crops
    assert torch.allclose(m.center, 0.9 * center_before + 0.1 * teacher.mean(0, keepdim=True), atol=1e-6)
    # the readouts of Fig. 7: teacher entropy and KL(P_t || P_s) = H(P_t, P_s) - H(P_t)
    p_t = F.softmax((teacher - center_before) / 0.07, dim=1)
    entropy = -(p_t * p_t.log()).sum(1).mean()
    assert torch.allclose(out["teacher_entropy"], entropy, atol=1e-5)
    assert torch.allclose(out["kl"], expected - entropy, atol=1e-5)
    marginal = p_t.mean(0)
    assert torch.allclose(out["teacher_marginal_entropy"], -(marginal * marginal.log()).sum(), atol=1e-5)


def test_centre_follows_its_ema_exactly_over_steps(tmp_path):
    run = tiny_run(tmp_path, center_momentum=0.8)
    m, c = run.method, torch.zeros(1, 64)
    for step in range(3):
        views, indices = batch_views(run, seed=step)
        with torch.no_grad():
            teacher = m.teacher_head(m.teacher_backbone(torch.cat(views[:2])))
        m(views, indices, 0.0)
        c = 0.8 * c + 0.2 * teacher.mean(0, keepdim=True)
        assert torch.allclose(m.center, c, atol=1e-6)
    assert "method.center" in ckpt.state_tensors(m, run.optimizer)  # the centre is saved with the run


def test_teacher_temperature_warms_up_linearly_per_epoch_as_the_official_schedule(tmp_path):
    run = tiny_run(tmp_path, epochs=10, teacher_temp=0.07, warmup_teacher_temp_epochs=4)
    official = np.concatenate([np.linspace(0.04, 0.07, 4), np.full(6, 0.07)])  # main_dino.DINOLoss
    for epoch in range(10):
        for within in (0.0, 0.5):
            assert run.method.teacher_temperature((epoch + within) / 10) == pytest.approx(official[epoch])
    unsharpened = tiny_run(tmp_path / "b", sharpening=False).method
    assert unsharpened.teacher_temperature(0.0) == unsharpened.teacher_temperature(1.0) == 0.1  # the student's


def test_last_layer_is_weight_normalised_with_unit_gain_and_frozen_in_the_first_epoch(tmp_path):
    run = tiny_run(tmp_path)
    last = run.method.head.last_layer
    assert not last.weight_g.requires_grad and torch.equal(last.weight_g, torch.ones(64, 1))
    z = F.normalize(torch.randn(8, 16), dim=1)
    assert torch.allclose(last(z), z @ F.normalize(last.weight_v, dim=1).T, atol=1e-6)  # cosines with unit rows
    assert last(z).abs().max() <= 1 + 1e-6
    v0, mlp0 = last.weight_v.clone(), run.method.head.mlp[0].weight.clone()
    views, indices = batch_views(run)
    optimisation_step(run, [(views, indices)])  # step 0 of 2 per epoch: epoch 1
    run.step += 1
    optimisation_step(run, [(views, indices)])
    assert torch.equal(last.weight_v, v0) and last.weight_v.grad is None  # not even weight decay touched it
    assert not torch.equal(run.method.head.mlp[0].weight, mlp0)  # while the rest of the head learned
    run.step += 1
    optimisation_step(run, [(views, indices)])  # epoch 2
    assert not torch.equal(last.weight_v, v0)
    assert torch.equal(last.weight_g, torch.ones(64, 1))  # g stays 1
    trained_gain = tiny_run(tmp_path / "b", norm_last_layer=False).method.head.last_layer.weight_g
    assert trained_gain.requires_grad


def test_gradients_are_clipped_parameter_by_parameter(tmp_path):
    run = tiny_run(tmp_path, clip_grad=0.5)
    m = run.method
    params = [p for p in m.parameters() if p.requires_grad]
    for i, p in enumerate(params):
        p.grad = torch.full_like(p, 1.0 if i % 2 else 1e-4)  # large and small gradients
    before = [p.grad.norm().item() for p in params]
    m.before_optimizer_step(0.9)  # past the frozen epoch
    for p, norm in zip(params, before):
        expected = min(norm, 0.5)  # each parameter on its own (utils.clip_gradients), not the global norm
        assert p.grad.norm().item() == pytest.approx(expected, rel=1e-3)  # float32 norms of 300k entries


def test_teacher_sees_only_the_global_crops_and_gets_no_gradient(tmp_path):
    run = tiny_run(tmp_path, local_crops=3)
    m = run.method
    seen = []
    m.teacher_backbone.register_forward_hook(lambda mod, inputs, out: seen.append(inputs[0].shape))
    views, indices = batch_views(run)
    assert len(views) == 5 and views[2].shape[-1] < views[0].shape[-1]  # 2 global + 3 smaller local crops
    out = m(views, indices, 0.0)
    assert seen == [torch.Size([64, 3, 32, 32])]  # both global crops in one pass, no local crop
    out["loss"].backward()
    assert all(p.grad is None and not p.requires_grad
               for p in [*m.teacher_backbone.parameters(), *m.teacher_head.parameters()])


def test_the_teacher_is_what_checkpoints_export(tmp_path):
    run = tiny_run(tmp_path)
    m = run.method
    assert m.exported_encoder() is m.teacher_backbone
    views, indices = batch_views(run)
    for step in range(3):  # the student moves by SGD, the teacher by EMA: they differ
        optimisation_step(run, [(views, indices)])
        run.step += 1
    path = run.save()
    exported, _ = ckpt.load(path, prefix="backbone.")
    teacher, student = m.teacher_backbone.state_dict(), m.backbone.state_dict()
    assert all(torch.equal(exported[f"backbone.{k}"], v) for k, v in teacher.items())
    assert any(not torch.equal(exported[f"backbone.{k}"], v) for k, v in student.items() if v.is_floating_point())


def test_embeddings_expose_the_teacher_backbone_bottleneck_and_output_distribution(tmp_path):
    run = tiny_run(tmp_path)
    views, _ = batch_views(run)
    m = run.method.eval()
    m.center.normal_()  # a centre that matters
    e = m.embeddings(views[0])
    assert set(e) == {"backbone", "head", "teacher_probs"} and m.distributions == {"teacher_probs"}
    assert torch.allclose(e["backbone"], m.teacher_backbone(views[0]))
    assert e["head"].shape == (32, 16) and torch.allclose(e["head"].norm(dim=1), torch.ones(32), atol=1e-5)
    logits = m.teacher_head(m.teacher_backbone(views[0]))  # P_t as the loss sees it, at the final temperature
    assert torch.allclose(e["teacher_probs"], F.softmax((logits - m.center) / 0.04, dim=1), atol=1e-6)


def test_recipes_follow_the_official_code():
    vit = DINOSpec.recipe(small=False, vit=True)  # main_dino.py defaults
    assert vit["optim"] | {"warmup_epochs": 10} == {"optimizer": "adamw", "lr": 5e-4, "weight_decay": 0.04,
                                                    "weight_decay_end": 0.4, "warmup_epochs": 10, "schedule": "cosine",
                                                    "exclude_bias_norm_wd": True}
    assert (vit["method"]["out_dim"], vit["method"]["teacher_temp"], vit["method"]["momentum"]) == (65536, 0.04, 0.996)
    assert (vit["augment"]["crop_scale"], vit["augment"]["local_crop_scale"], vit["augment"]["local_crops"]) == \
        ((0.4, 1.0), (0.05, 0.4), 8)
    assert vit["augment"]["blur_p"] == (1.0, 0.1) and vit["augment"]["solarize_p"] == (0.0, 0.2)
    assert vit["method"]["head_bn"] is False

    def resolved(size, backbone):
        spec = PretrainSpec.model_validate({"method": {"name": "dino"}, "backbone": {"name": backbone},
                                            "optim": {"batch_size": 32, "epochs": 100}})
        return resolve_pretrain(spec, size, 1000)

    resnet = resolved(224, "resnet50")  # the README's ResNet-50 command
    assert (resnet.optim.optimizer, resnet.optim.lr, resnet.optim.weight_decay, resnet.optim.weight_decay_end) == \
        ("sgd", 0.03, 1e-4, 1e-4)
    assert (resnet.augment.crop_scale, resnet.augment.local_crop_scale) == ((0.14, 1.0), (0.05, 0.14))
    assert resnet.augment.local_crop_size == 96 and resnet.augment.local_crops == 8 and not resnet.method.head_bn
    small = resolved(28, "small_cnn")  # K and head BN from solo-learn's and lightly's CIFAR settings
    assert small.method.out_dim == 4096 and small.method.head_bn
    assert small.augment.local_crops == 6 and small.augment.local_crop_size == 14
    assert (small.augment.crop_scale, small.augment.local_crop_scale) == ((0.4, 1.0), (0.05, 0.4))


# ---- the collapses of Sec. 5.3 (Fig. 7) ---------------------------------------------------------------------------

# Without centering one dimension comes to dominate: the teacher's output is one-hot, the same for every image (its
# entropy and that of the batch's mean both go to 0); without sharpening (teacher temperature = the student's) it
# becomes uniform (entropy -> log K); in both the KL between teacher and student goes to 0, so the student has
# nothing left to learn. On the synthetic shapes, 64 steps of 64 images with a fast teacher (EMA 0.9) and lr 0.1 show
# what the paper sees over epochs (about 5 s a run on one core). Measured at the last epoch, seeds 0-2, entropy / log K
# (marginal / log K, KL): recipe 0.72-0.76 (0.85-0.89, 0.56-0.63); no centering 0.001-0.08 (0.001-0.19, 0.03-0.38);
# no sharpening 0.99 (1.0, 0.06-0.07).
ABLATIONS = {"recipe": {}, "no-centering": {"centering": False}, "no-sharpening": {"sharpening": False}}


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_without_centering_or_sharpening_the_teacher_output_collapses(tmp_path, ablation):
    run = prepare(PretrainSpec.model_validate({
        "method": {"name": "dino", "proj_hidden_dim": 256, "out_dim": 256, "momentum": 0.9, **ABLATIONS[ablation]},
        "backbone": {"name": "small_cnn"}, "data": {"source": "synthetic", "subset": 512},
        "augment": {"local_crops": 2}, "optim": {"epochs": 8, "batch_size": 64, "lr": 0.1},
        "monitor": {"images": 256}, "runtime": {"out": str(tmp_path / "run")}}))
    last = train(run)
    share, marginal, kl = (last["teacher_entropy"] / math.log(256), last["teacher_marginal_entropy"] / math.log(256),
                           last["kl"])
    # the collapse monitor and inspect-collapse judge the teacher's distribution P_t by the same two entropies
    monitored = last["collapse"]["teacher_probs"]
    inspected = inspect_collapse(InspectSpec.model_validate({"checkpoint": str(run.checkpoint_path),
                                                             "data": {"subset": 256}}))["representations"]
    verdicts = (last["collapse"]["verdict"], inspected["teacher_probs"]["verdict"])
    print(f"\n{ablation}: entropy {share:.3f} marginal {marginal:.3f} kl {kl:.3f}; monitor {monitored}; inspect "
          f"{ {k: round(inspected['teacher_probs'][k], 3) for k in ('entropy_share', 'marginal_share', 'spread')} }")
    if ablation == "no-centering":
        assert share < 0.15 and marginal < 0.3, last  # one-hot, and the same dimension for the whole batch
        assert monitored["marginal_share"] < 0.25 and last["collapse"]["alarm"], last["collapse"]
        assert "same few outputs" in inspected["teacher_probs"]["reason"]
    elif ablation == "no-sharpening":
        assert share > 0.97 and kl < 0.15, last  # uniform
        assert monitored["entropy_share"] > 0.95 and last["collapse"]["alarm"], last["collapse"]
        assert "nearly uniform" in inspected["teacher_probs"]["reason"]
    else:
        assert 0.3 < share < 0.9 and marginal > 0.75 and kl > 0.4, last  # peaked, on different dimensions per image
    expected = "healthy" if ablation == "recipe" else "complete collapse"
    assert verdicts == (expected, expected), (last["collapse"], inspected)

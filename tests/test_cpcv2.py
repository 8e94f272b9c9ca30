"""CPC v2 as the paper describes it: a view cut into a grid of overlapping patches encoded one by one (layer norm, not
batch norm, in the encoder), a causal context network that sees only the rows above, InfoNCE of W_k c_ij against every
patch of the batch, and an exported encoder that pools the patch features into one vector per image."""

import math

import pytest
import torch
from torch import nn

from contrastive_cli.methods.cpcv2 import (DIRECTIONS, CPCv2, ContextNetwork, PatchEncoder, patch_info_nce)
from contrastive_cli.methods.cpcv2_spec import patch_grid
from contrastive_cli.methods.fields import DataFacts
from contrastive_cli.spec import PretrainSpec, SpecError, resolve_pretrain


def resolved(image_size=28, channels=1, **method):
    spec = PretrainSpec.model_validate({"method": {"name": "cpcv2", **method}, "backbone": {"name": "small_cnn"},
                                        "optim": {"batch_size": 4}})
    return resolve_pretrain(spec, image_size, 100, channels)


@pytest.mark.parametrize("size, grid", [(28, 6), (32, 7), (48, 11)])
def test_small_recipe_cuts_8px_patches_at_stride_4(size, grid):
    spec = resolved(size).method
    assert (spec.patch_size, spec.patch_stride) == (8, 4)
    assert patch_grid(size, spec.patch_size, spec.patch_stride) == grid


def test_large_recipe_is_the_papers_64px_patches_at_stride_32():
    spec = resolved(256, 3).method
    assert (spec.patch_size, spec.patch_stride) == (64, 32) and patch_grid(256, 64, 32) == 7  # the paper's 7x7


def test_patches_sit_at_multiples_of_the_stride():
    encoder = PatchEncoder("small_cnn", "imagenet", patch_size=8, stride=4, norm="ln")
    x = torch.randn(2, 3, 28, 28)
    patches = encoder.patches(x)
    assert patches.shape == (2, 6, 6, 3, 8, 8)
    for i in range(6):
        for j in range(6):
            assert torch.equal(patches[:, i, j], x[:, :, 4 * i:4 * i + 8, 4 * j:4 * j + 8])


def test_layer_norm_replaces_every_batch_norm_of_the_patch_encoder():
    ln = PatchEncoder("resnet18", "imagenet", 8, 4, "ln")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in ln.modules())
    assert any(isinstance(m, nn.GroupNorm) and m.num_groups == 1 for m in ln.modules())
    bn = PatchEncoder("resnet18", "imagenet", 8, 4, "bn")
    assert any(isinstance(m, nn.BatchNorm2d) for m in bn.modules())


def test_with_layer_norm_a_patch_encoding_does_not_depend_on_the_other_patches():
    encoder = PatchEncoder("small_cnn", "imagenet", 8, 4, "ln").train()
    x = torch.randn(3, 3, 28, 28)
    alone = encoder.patch_features(x[:1])
    other = x.clone()
    other[1:] = torch.randn_like(other[1:]) * 5
    assert torch.allclose(encoder.patch_features(other)[:1], alone, atol=1e-5)


def test_the_context_at_row_i_does_not_see_rows_below_it():
    torch.manual_seed(0)
    net = ContextNetwork(in_dim=16, width=8, blocks=3, steps=2)
    z = torch.randn(2, 16, 6, 6, requires_grad=True)
    c = net.context(z)
    for i in range(6):
        (grad,) = torch.autograd.grad(c[:, :, i].sum(), z, retain_graph=True)
        assert grad[:, :, i + 1:].abs().sum() == 0, f"row {i} sees rows below it"
        assert grad[:, :, i].abs().sum() > 0, f"row {i} does not see its own row"
    # and by perturbation: changing the bottom rows leaves every context above them unchanged
    changed = z.detach().clone()
    changed[:, :, 4:] += torch.randn_like(changed[:, :, 4:])
    assert torch.allclose(net.context(changed)[:, :, :4], c.detach()[:, :, :4], atol=1e-6)


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_every_direction_is_a_reorientation_of_the_grid(direction):
    index = torch.arange(36).view(1, 6, 6)
    oriented = DIRECTIONS[direction](index)
    assert sorted(oriented.flatten().tolist()) == list(range(36))
    step = {"down": 6, "up": -6, "right": 1, "left": -1}[direction]  # row i+1 of the oriented grid is one step on
    assert torch.equal(oriented[0, 1:] - oriented[0, :-1], torch.full((5, 6), step))


def test_patch_info_nce_equals_the_loop_over_predictions():
    torch.manual_seed(0)
    predictions, candidates = torch.randn(7, 5), torch.randn(11, 5)
    targets = torch.tensor([0, 3, 3, 10, 5, 1, 8])
    loop = []
    for q, t in zip(predictions, targets):
        scores = [float(q @ z) for z in candidates]
        loop.append(-(scores[t] - math.log(sum(math.exp(s) for s in scores))))
    assert torch.allclose(patch_info_nce(predictions, targets, candidates), torch.tensor(sum(loop) / 7), atol=1e-5)
    # sampled candidates: the positive plus the sampled rows that are not the positive
    sampled = torch.tensor([2, 3, 7])
    loop = []
    for q, t in zip(predictions, targets):
        scores = [float(q @ candidates[t])] + [float(q @ candidates[s]) for s in sampled if s != t]
        loop.append(-(scores[0] - math.log(sum(math.exp(s) for s in scores))))
    assert torch.allclose(patch_info_nce(predictions, targets, candidates, sampled), torch.tensor(sum(loop) / 7),
                          atol=1e-5)


def make_method(**method):
    spec = resolved(28, 1, **method)
    info = CPCv2.encoder_info(spec, DataFacts(100, 1))
    encoder, dim = CPCv2.build_encoder(**info["kwargs"])
    return CPCv2(spec, encoder, dim, DataFacts(100, 1))


def test_the_loss_predicts_each_patch_from_the_rows_above_and_reports_the_candidates_it_scored():
    torch.manual_seed(0)
    cpc = make_method(directions="down", prediction_steps=2)
    x = torch.randn(3, 3, 28, 28)
    out = cpc([x])
    # 3 images x 36 patches are the candidates of every prediction
    assert out["mi_max"] == pytest.approx(math.log(3 * 36))
    assert torch.isfinite(out["loss"]) and float(out["mi_bound"]) <= out["mi_max"]
    sampled = make_method(directions="all", patch_negatives=20)([x])
    assert sampled["mi_max"] == pytest.approx(math.log(21))


def test_the_exported_encoder_turns_an_image_into_one_pooled_vector():
    cpc = make_method()
    encoder = cpc.exported_encoder()
    x = torch.randn(5, 3, 28, 28)
    features = encoder(x)
    assert features.shape == (5, cpc.feature_dim)
    assert torch.allclose(features, encoder.patch_features(x).mean(dim=(1, 2)))


def test_a_grid_too_small_for_the_prediction_steps_is_refused():
    with pytest.raises(SpecError, match="prediction-steps"):
        resolved(28, 1, prediction_steps=6)
    with pytest.raises(SpecError, match="patch-size"):
        resolved(28, 1, patch_size=24, patch_stride=8)


def test_patch_jitter_changes_brightness_and_contrast_patch_by_patch_within_the_pixel_range():
    torch.manual_seed(0)
    facts = DataFacts(100, 1, (0.3, 0.3, 0.3), (0.35, 0.35, 0.35))
    spec = resolved(28, 1, patch_jitter=0.4)
    encoder, dim = CPCv2.build_encoder(**CPCv2.encoder_info(spec, facts)["kwargs"])
    cpc = CPCv2(spec, encoder, dim, facts)
    pixels = torch.rand(2, 3, 28, 28).mean(1, keepdim=True).expand(-1, 3, -1, -1)
    patches = cpc.backbone.patches((pixels - 0.3) / 0.35)
    jittered = cpc.jitter_patches(patches) * 0.35 + 0.3
    assert jittered.min() >= -1e-6 and jittered.max() <= 1 + 1e-6  # still pixel values in [0, 1]
    original = patches * 0.35 + 0.3
    gain = jittered.std(dim=(-3, -2, -1)) / original.std(dim=(-3, -2, -1))  # each patch its own factor
    assert gain.flatten().unique().numel() > 30 and ((gain - 1).abs() <= 1.4 ** 2 - 1 + 1e-3).all()
    cpc.spec.patch_jitter = 0.0
    torch.manual_seed(1)
    unflipped = cpc.augment_patches(patches)
    assert all(torch.equal(p, q) or torch.equal(p, q.flip(-1))  # with no jitter only the flips remain
               for p, q in zip(unflipped.reshape(-1, 3, 8, 8), patches.reshape(-1, 3, 8, 8)))


def test_the_grid_pool_keeps_the_patch_features_side_by_side():
    cpc = make_method(feature_pool="grid")
    encoder = cpc.exported_encoder()
    x = torch.randn(2, 3, 28, 28)
    assert cpc.feature_dim == 36 * encoder.patch_dim
    assert torch.equal(encoder(x), encoder.patch_features(x).flatten(1))
    assert torch.isfinite(cpc([x])["loss"])  # the context networks still see one patch_dim vector per patch

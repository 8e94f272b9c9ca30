"""RotNet (Gidaris et al. 2018) as the paper describes it: every image of the batch is shown in all four rotations by
multiples of 90 degrees, a classifier on the pooled features names the rotation, and the representation is the plain
backbone on the upright image."""

import pytest
import torch
from torch import nn

from conftest import resolved_method
from contrastive_cli.methods.base import build_method, encoder_record
from contrastive_cli.methods.fields import DataFacts
from contrastive_cli.methods.rotation import rotate_all
from contrastive_cli.models import SmallCNN
from contrastive_cli.spec import PretrainSpec, resolve_pretrain


def rotation(image_size=28, **method):
    spec = resolved_method("rotation", image_size, **method)
    torch.manual_seed(0)
    return build_method(spec, DataFacts(1000, 1, (0.5,) * 3, (0.25,) * 3)), spec


def test_label_k_is_k_quarter_turns_counter_clockwise():
    x = torch.randn(3, 3, 8, 8)
    rotated, labels = rotate_all(x)
    assert rotated.shape == (12, 3, 8, 8) and labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    for k in range(4):
        assert torch.equal(rotated[labels == k], torch.rot90(x, k, dims=(2, 3)))
    corner = torch.zeros(1, 1, 4, 4)
    corner[..., 0, 0] = 1  # top-left
    turned, _ = rotate_all(corner)
    # counter-clockwise: top-left -> bottom-left -> bottom-right -> top-right
    assert [tuple(torch.nonzero(t[0])[0].tolist()) for t in turned] == [(0, 0), (3, 0), (3, 3), (0, 3)]


def test_an_asymmetric_images_four_rotations_are_distinct():
    x = torch.arange(25.0).view(1, 1, 5, 5)
    rotated, _ = rotate_all(x)
    assert all(not torch.equal(rotated[i], rotated[j]) for i in range(4) for j in range(i + 1, 4))


def test_one_view_whose_four_rotations_all_reach_the_classifier():
    method, spec = rotation()
    assert len(method.views(spec.augment, 28, (0.5,) * 3, (0.25,) * 3)) == 1
    seen = []
    method.classifier.register_forward_hook(lambda m, inp, out: seen.append(out.shape))
    out = method([torch.randn(5, 3, 28, 28)])
    assert seen == [(20, 4)]
    assert set(out) == {"loss", "rotation_acc"} and 0 <= out["rotation_acc"] <= 1


def test_a_classifier_that_knows_the_rotation_scores_full_accuracy_and_near_zero_loss():
    method, _ = rotation()

    class Oracle(nn.Module):  # reads the rotation off a marked top-left corner
        def forward(self, x):
            corners = torch.stack([x[:, 0, 0, 0], x[:, 0, -1, 0], x[:, 0, -1, -1], x[:, 0, 0, -1]], 1)
            return corners * 100

    method.backbone, method.classifier = nn.Identity(), Oracle()
    x = torch.zeros(4, 3, 8, 8)
    x[:, :, 0, 0] = 1
    out = method([x])
    assert out["rotation_acc"] == 1 and out["loss"] < 1e-6


@pytest.mark.parametrize("hidden, linears", [(0, 1), (64, 2)])
def test_the_head_is_linear_by_default_and_an_mlp_on_request(hidden, linears):
    method, _ = rotation(rotation_head_hidden_dim=hidden)
    assert sum(isinstance(m, nn.Linear) for m in method.classifier.modules()) == linears
    assert method.classifier[-1].out_features == 4


def test_the_exported_encoder_is_the_plain_backbone():
    method, spec = rotation()
    assert isinstance(method.exported_encoder(), SmallCNN)
    assert encoder_record(spec, DataFacts(1000, 1), method.feature_dim)["name"] == "small_cnn"
    assert method.exported_encoder()(torch.randn(2, 3, 28, 28)).shape == (2, method.feature_dim)


def test_the_recipe_is_rotnets_sgd_without_colour_augmentation():
    spec = resolved_method("rotation", 32)
    o, a = spec.optim, spec.augment
    assert (o.optimizer, o.lr, o.weight_decay, o.schedule) == ("sgd", 0.2, 5e-4, "step")  # 0.1 at batch 128
    assert a.jitter_p == 0 and a.gray_p == 0 and a.blur_p == (0, 0) and a.solarize_p == (0, 0)
    assert type(spec.method).pretext and not type(spec.method).needs_colour


def test_a_vit_trains_with_adamw():
    spec = PretrainSpec.model_validate({"method": {"name": "rotation"}, "optim": {"batch_size": 8},
                                        "backbone": {"name": "vit_tiny", "depth": 1, "patch_size": 8}})
    assert resolve_pretrain(spec, 32, 100).optim.optimizer == "adamw"

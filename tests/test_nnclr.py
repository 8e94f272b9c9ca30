"""NNCLR's claims: a view's positive is the nearest neighbour of its projection in the support set (the most
cosine-similar entry, a constant for autograd), contrasted with the other view's prediction against the batch's
predictions (Eq. 2, both view orders averaged); the support set is a FIFO queue of view-1 projections pushed after
the loss, no larger than the data."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from contrastive_cli.losses import in_batch_infonce
from contrastive_cli.methods.nnclr import SupportSet
from contrastive_cli.methods.nnclr_spec import NNCLRSpec
from contrastive_cli.spec import PretrainSpec, SpecError
from contrastive_cli.train import prepare


def tiny(tmp_path, **method):
    return PretrainSpec.model_validate({
        "method": {"name": "nnclr", "support_size": 48, **method}, "backbone": {"name": "small_cnn"},
        "data": {"source": "synthetic", "subset": 96}, "optim": {"epochs": 1, "batch_size": 32},
        "monitor": {"images": 64}, "runtime": {"out": str(tmp_path / "run")}})


def batch_of(run, seed=0):
    x, _, indices = next(run.data.batches(torch.arange(32), 32))
    g = torch.Generator().manual_seed(seed)
    s = run.spec
    return [v(x, g) for v in run.method.views(s.augment, s.data.image_size, run.data.mean, run.data.std)], indices


def test_nearest_neighbour_is_the_most_similar_support_entry_and_carries_no_gradient():
    torch.manual_seed(0)
    support = SupportSet(50, 8)
    z = torch.randn(6, 8, requires_grad=True)
    nn_, similarity, slot = support.nearest(z)
    for i in range(6):
        cosines = torch.stack([F.cosine_similarity(z[i], entry, dim=0) for entry in support.keys])
        assert int(slot[i]) == int(cosines.argmax())
        assert torch.allclose(similarity[i], cosines.max(), atol=1e-6)
        assert torch.equal(nn_[i], support.keys[cosines.argmax()])
    assert not nn_.requires_grad and not similarity.requires_grad  # stop-gradient on the neighbour
    # the scale of z does not matter: cosine similarity
    assert torch.equal(support.nearest(5 * z)[2], slot)


def test_support_set_is_fifo_and_remembers_the_images():
    support = SupportSet(5, 2)
    first = F.normalize(torch.arange(6.0).view(3, 2) + 1, dim=1)
    support.push(first, torch.tensor([10, 11, 12]))
    assert torch.equal(support.keys[:3], first) and support.images.tolist() == [10, 11, 12, -1, -1]
    second = F.normalize(-torch.arange(8.0).view(4, 2) - 1, dim=1)
    support.push(second, torch.tensor([20, 21, 22, 23]))
    # the two oldest slots (3, 4: random initial entries) fill first, then the oldest real entries (10, 11) go
    assert support.images.tolist() == [22, 23, 12, 20, 21]
    assert torch.equal(support.keys[[3, 4, 0, 1]], second) and torch.equal(support.keys[2], first[2])
    assert int(support.ptr) == 2


def test_loss_is_eq_2_over_the_batch_in_both_view_orders():
    torch.manual_seed(0)
    nn1, p2 = torch.randn(5, 8), torch.randn(5, 8)
    t = 0.1
    a, c = F.normalize(nn1, dim=1), F.normalize(p2, dim=1)
    direct = sum(-(a[i] @ c[i] / t - torch.logsumexp(a[i] @ c.T / t, 0)) for i in range(5)) / 5
    assert torch.allclose(in_batch_infonce(nn1, p2, t), direct, atol=1e-5)


def test_forward_contrasts_neighbours_with_the_other_view_s_predictions_then_pushes_view_1(tmp_path):
    run = prepare(tiny(tmp_path))
    method = run.method
    (x1, x2), indices = batch_of(run)
    support_before = method.support.keys.clone()
    out = method([x1, x2], indices)
    with torch.no_grad():  # train-mode BN: the same batch gives the same values
        z1, z2 = (method.projector(method.backbone(x)) for x in (x1, x2))
        p1, p2 = method.predictor(z1), method.predictor(z2)

    def nearest(z):
        return support_before[(F.normalize(z, dim=1) @ support_before.T).argmax(dim=1)]

    expected = (in_batch_infonce(nearest(z1), p2, 0.1) + in_batch_infonce(nearest(z2), p1, 0.1)) / 2
    assert torch.allclose(out["loss"].detach(), expected, atol=1e-4)
    assert math.isclose(out["mi_max"], math.log(32))
    # after the loss, the normalised projections of view 1 enter the support set with their image indices
    assert int(method.support.ptr) == 32
    assert torch.allclose(method.support.keys[:32], F.normalize(z1, dim=1), atol=1e-5)
    assert torch.equal(method.support.images[:32], indices)
    assert torch.equal(method.support.keys[32:], support_before[32:])


def test_gradient_reaches_the_encoder_only_through_the_predictions(tmp_path):
    run = prepare(tiny(tmp_path))
    method = run.method
    views, indices = batch_of(run)
    method(views, indices)["loss"].backward()
    assert method.predictor[0].weight.grad.abs().sum() > 0 and method.backbone.features[0][0].weight.grad is not None
    assert not any(b.requires_grad for b in method.support.buffers())


def test_a_view_whose_own_projection_is_in_the_support_set_finds_it(tmp_path):
    """Same weights, same batch twice: the second time each view-1 neighbour is its own projection of the first."""
    run = prepare(tiny(tmp_path))
    method = run.method
    views, indices = batch_of(run)
    first = method(views, indices)
    assert first["nn_same_image"] == 0  # the support set held only random entries
    second = method(views, indices)
    assert second["nn_same_image"] == 1
    assert second["nn_similarity"] > first["nn_similarity"]


def test_projector_has_bn_after_every_layer_and_relu_after_all_but_the_last(tmp_path):
    method = prepare(tiny(tmp_path)).method
    kinds = [type(m).__name__ for m in method.projector]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU"] * 2 + ["Linear", "BatchNorm1d"]
    assert [m.out_features for m in method.projector if isinstance(m, nn.Linear)] == [2048, 2048, 256]
    assert [type(m).__name__ for m in method.predictor] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert [m.out_features for m in method.predictor if isinstance(m, nn.Linear)] == [4096, 256]


def test_support_set_larger_than_the_data_is_refused(tmp_path):
    with pytest.raises(SpecError, match="support-size"):
        prepare(tiny(tmp_path, support_size=500))


def test_recipe_follows_the_paper_with_a_support_set_sized_for_small_data():
    small, large = NNCLRSpec.recipe(small=True), NNCLRSpec.recipe(small=False)
    assert small["method"]["temperature"] == large["method"]["temperature"] == 0.1
    assert large["method"]["support_size"] == 98304
    assert small["method"]["support_size"] <= 10000  # fits the Fashion-MNIST learning test's 10k images
    assert large["augment"]["blur_p"] == (1.0, 0.1) and large["augment"]["solarize_p"] == (0.0, 0.2)  # BYOL's

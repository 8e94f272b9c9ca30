"""Claims of the method papers about their moving parts: queue, momentum encoder, stop-gradient."""

import math

import pytest
import torch

from contrastive_cli.methods.base import KeyQueue, build_method, cosine_momentum, ema_update, momentum_copy
from contrastive_cli.methods.fields import DataFacts
from contrastive_cli.spec import PretrainSpec, resolve_pretrain


def make(name, backbone="small_cnn", **fields):
    spec = PretrainSpec.model_validate({"method": {"name": name, **fields}, "backbone": {"name": backbone},
                                        "optim": {"batch_size": 8}})
    return build_method(resolve_pretrain(spec, 32, 10_000), DataFacts(10_000))


def test_queue_is_fifo_and_keeps_its_size():
    queue = KeyQueue(6, 2)
    for step in range(4):
        queue.push(torch.full((2, 2), float(step)))
    assert queue.keys.shape == (6, 2)
    # after pushes 0,1,2,3 of two keys each, slots hold [3,3,1,1,2,2]: push 3 overwrote the oldest (push 0)
    assert queue.keys[:, 0].tolist() == [3, 3, 1, 1, 2, 2]
    assert int(queue.ptr) == 2


def test_queue_wraps_around_for_any_batch_length():
    """A short batch (skipped unreadable files) or a queue that is no multiple of the batch must not break the
    FIFO: the keys wrap around the end, and a push longer than the queue keeps its newest keys."""
    queue = KeyQueue(5, 1)
    queue.push(torch.tensor([[0.0], [1.0], [2.0]]))
    queue.push(torch.tensor([[3.0], [4.0], [5.0]]))  # 5 wraps to slot 0
    assert queue.keys[:, 0].tolist() == [5, 1, 2, 3, 4] and int(queue.ptr) == 1
    queue.push(torch.arange(10.0, 17.0)[:, None])  # 7 keys into 5 slots: the newest 5 remain
    assert sorted(queue.keys[:, 0].tolist()) == [12, 13, 14, 15, 16]


def test_mocov2_enqueues_the_keys_of_each_step():
    torch.manual_seed(0)
    method = make("mocov2", queue_size=16, bn_splits=1)
    views = [torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)]
    method(views)
    with torch.no_grad():
        keys = method.key(views[1])
    assert torch.allclose(method.queue.keys[:8], keys, atol=1e-5)
    assert int(method.queue.ptr) == 8


def test_ema_update_follows_its_formula():
    online = torch.nn.Linear(3, 3)
    target = momentum_copy(online)
    with torch.no_grad():
        online.weight.add_(1.0)
    before = target.weight.clone()
    ema_update(online, target, 0.9)
    assert torch.allclose(target.weight, 0.9 * before + 0.1 * online.weight)
    assert not any(p.requires_grad for p in target.parameters())


def test_byol_momentum_rises_from_base_to_one_on_a_cosine():
    assert cosine_momentum(0.99, 0.0) == pytest.approx(0.99)
    assert cosine_momentum(0.99, 0.5) == pytest.approx(0.995)
    assert cosine_momentum(0.99, 1.0) == pytest.approx(1.0)
    method = make("byol", momentum=0.99)
    assert method.momentum(0.25) == pytest.approx(1 - 0.01 * (math.cos(math.pi / 4) + 1) / 2)


def test_momentum_encoder_moves_only_by_ema_after_a_step():
    torch.manual_seed(0)
    method = make("byol", momentum=0.9)
    target_before = [p.clone() for p in method.target_backbone.parameters()]
    online_before = [p.clone() for p in method.backbone.parameters()]
    loss = method([torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)])["loss"]
    loss.backward()
    assert all(p.grad is None for p in method.target_backbone.parameters())
    with torch.no_grad():
        for p in method.parameters():
            if p.grad is not None:
                p.sub_(0.1 * p.grad)
    m = method.momentum(0.0)
    method.after_step(0.0)
    for t0, o, t in zip(target_before, method.backbone.parameters(), method.target_backbone.parameters()):
        assert torch.allclose(t, m * t0 + (1 - m) * o, atol=1e-6)
    assert any(not torch.equal(o0, o) for o0, o in zip(online_before, method.backbone.parameters()))


@pytest.mark.parametrize("name", ["simsiam", "byol"])
def test_stop_gradient_blocks_the_target_branch(name):
    # d loss / d z_target must be zero: perturbing the target branch's input to the loss changes nothing in the grads
    torch.manual_seed(0)
    z = torch.randn(8, 16, requires_grad=True)
    p = torch.randn(8, 16, requires_grad=True)
    from contrastive_cli.losses import negative_cosine, normalized_mse
    loss_fn = negative_cosine if name == "simsiam" else normalized_mse
    loss_fn(p, z).backward()
    assert z.grad is None and p.grad.abs().sum() > 0


def test_simsiam_gradient_reaches_encoder_only_through_predictor_branch():
    # With stop-gradient, the gradient of D(p1, sg(z2)) wrt z2 is zero: check through the real module
    torch.manual_seed(0)
    method = make("simsiam")
    x = torch.randn(8, 3, 32, 32)
    z = method.projector(method.backbone(x))
    z.retain_grad()
    from contrastive_cli.losses import negative_cosine
    p_other = method.predictor(method.projector(method.backbone(torch.randn(8, 3, 32, 32))))
    negative_cosine(p_other, z).backward()
    assert z.grad is None or z.grad.abs().sum() == 0


def test_split_batchnorm_normalises_each_sub_batch_on_its_own():
    from contrastive_cli.models import SplitBatchNorm
    torch.manual_seed(0)
    x = torch.randn(8, 3, 4, 4) * torch.arange(1, 9).view(8, 1, 1, 1)
    split = SplitBatchNorm(3, splits=2)
    out = split(x)
    plain = torch.nn.BatchNorm2d(3)
    for part in (0, 1):  # sample i belongs to split i % 2
        assert torch.allclose(out[part::2], plain(x[part::2]), atol=1e-5)
    split.eval()
    plain.eval()
    plain.load_state_dict(split.state_dict())
    assert torch.allclose(split(x), plain(x), atol=1e-6)


def test_shuffle_bn_keys_come_back_in_batch_order():
    torch.manual_seed(0)
    method = make("mocov2", bn_splits=1)  # with one split the shuffle must be invisible
    x = torch.randn(8, 3, 32, 32)
    method.eval()
    with torch.no_grad():
        plain = torch.nn.functional.normalize(method.momentum_projector(method.momentum_backbone(x)), dim=1)
    assert torch.allclose(method.key(x), plain, atol=1e-5)


def test_mocov2_backbone_keeps_torchvision_keys_with_split_bn():
    import torchvision
    method = make("mocov2", backbone="resnet18")
    reference = torchvision.models.resnet18()
    reference.fc = torch.nn.Identity()
    reference.load_state_dict(method.backbone.state_dict(), strict=True)


def test_mocov1_is_mocov2_without_its_improvements():
    """MoCo v2 = v1 + MLP head + blur augmentation + cosine lr (+ T 0.2): v1 keeps a linear fc head, T 0.07,
    no blur and the step schedule, and otherwise shares v2's queue, momentum encoder and ShuffleBN."""
    v1 = make("mocov1", backbone="small_cnn")
    assert isinstance(v1.projector, torch.nn.Linear) and v1.projector.out_features == 128
    spec = resolve_pretrain(PretrainSpec.model_validate({"method": {"name": "mocov1"}}), 224, 100_000)
    assert spec.method.temperature == 0.07 and spec.method.queue_size == 65536 and spec.method.momentum == 0.999
    assert spec.optim.schedule == "step" and spec.optim.milestones == (0.6, 0.8) and spec.augment.blur_p == (0.0, 0.0)
    views = [torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)]
    out = v1(views)
    assert int(v1.queue.ptr) == 8 and out["mi_max"] == pytest.approx(math.log(1 + v1.spec.queue_size))

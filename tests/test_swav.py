"""SwAV's claims: Sinkhorn-Knopp codes spread each batch evenly over the prototypes (every sample a distribution,
every prototype B/K of the mass); every crop predicts the other crops' codes (the swapped prediction); the prototypes
stay on the unit sphere and are fixed for the first epoch; the queue of past projections is a FIFO that joins the
equal partition once full; and without the equal partition the codes collapse onto one prototype, which the collapse
monitor sees, while the recipe stays healthy."""

import pytest
import torch
import torch.nn.functional as F

from contrastive_cli.losses import sinkhorn_codes, swapped_prediction
from contrastive_cli.methods.base import encode_crops
from contrastive_cli.methods.swav import ProjectionQueue
from contrastive_cli.collapse import inspect_collapse
from contrastive_cli.spec import InspectSpec, PretrainSpec, SpecError
from contrastive_cli.train import optimisation_step, prepare, train


def tiny(tmp_path, epochs=1, augment=None, **method):
    """Synthetic 32 px data, small CNN, 96 images in batches of 32 (3 steps an epoch), 2 local crops."""
    return PretrainSpec.model_validate({
        "method": {"name": "swav", "proj_dim": 8, "prototypes": 16, **method}, "backbone": {"name": "small_cnn"},
        "data": {"source": "synthetic", "subset": 96}, "optim": {"epochs": epochs, "batch_size": 32},
        "augment": {"local_crops": 2, **(augment or {})}, "monitor": {"images": 64},
        "runtime": {"out": str(tmp_path / "run")}})


def views_of(run, seed=0):
    x, _, indices = next(run.data.batches(torch.arange(32), 32))
    g = torch.Generator().manual_seed(seed)
    s = run.spec
    return [v(x, g) for v in run.method.views(s.augment, s.data.image_size, run.data.mean, run.data.std)], indices


# ---- the codes --------------------------------------------------------------------------------------


def unit(n, d, seed):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_sinkhorn_codes_spread_the_batch_evenly_over_the_prototypes():
    b, k = 256, 32
    scores = unit(b, 16, 0) @ unit(k, 16, 1).T  # cosines, as z·C
    q = sinkhorn_codes(scores, epsilon=0.05, iterations=3)
    assert q.shape == (b, k) and (q >= 0).all()
    assert torch.allclose(q.sum(dim=1), torch.ones(b), atol=1e-5)  # every sample: a distribution
    # every prototype gets B/K of the mass: approximately after SwAV's 3 iterations (much nearer than the softmax of
    # the same scores), exactly as the iterations go on

    def worst_share(codes):  # the largest relative deviation of a prototype's mass from B/K
        return (codes.sum(dim=0) / (b / k) - 1).abs().max().item()

    assert worst_share(q) < 0.3 < 0.5 * worst_share(F.softmax(scores / 0.05, dim=1))
    assert worst_share(sinkhorn_codes(scores, 0.05, 10)) < 0.05
    assert worst_share(sinkhorn_codes(scores, 0.05, 100)) < 1e-3


def test_sinkhorn_is_a_direct_transcription_of_the_algorithm():
    """Q = exp(S/ε)ᵀ normalised to sum 1; then, per iteration, rows to 1/K and columns to 1/B; finally ×B."""
    scores = unit(12, 8, 2) @ unit(5, 8, 3).T
    q = torch.exp(scores.double() / 0.05).T
    q = q / q.sum()
    for _ in range(3):
        for row in range(5):
            q[row] = q[row] / q[row].sum() / 5
        for col in range(12):
            q[:, col] = q[:, col] / q[:, col].sum() / 12
    assert torch.allclose(sinkhorn_codes(scores, 0.05, 3).double(), (q * 12).T, atol=1e-6)


def test_codes_keep_each_sample_on_its_nearest_prototypes():
    """Equal partition is a constraint, not noise: samples that sit on distinct prototypes keep them."""
    prototypes = unit(8, 16, 4)
    z = F.normalize(prototypes.repeat(4, 1) + 0.05 * unit(32, 16, 5), dim=1)  # 4 samples near each prototype
    q = sinkhorn_codes(z @ prototypes.T, 0.05, 3)
    assert (q.argmax(dim=1) == torch.arange(8).repeat(4)).all()


# ---- the loss ---------------------------------------------------------------------------------------


def test_swapped_prediction_is_the_formula():
    """L = 1/|S| Σ_s 1/(V−1) Σ_{v≠s} 1/B Σ_b −Σ_k q_s[b,k] log softmax(z_v·C/τ)[b,k], codes for the 2 global crops."""
    b, k, crops, tau = 5, 7, 4, 0.1
    g = torch.Generator().manual_seed(6)
    scores = [torch.randn(b, k, generator=g) for _ in range(crops)]
    codes = [F.softmax(torch.randn(b, k, generator=g), dim=1) for _ in range(2)]
    expected = 0.0
    for s in range(2):
        for v in range(crops):
            if v == s:
                continue
            for i in range(b):
                p = torch.exp(scores[v][i] / tau) / torch.exp(scores[v][i] / tau).sum()
                expected -= sum(codes[s][i, j] * torch.log(p[j]) for j in range(k)) / b / (crops - 1) / 2
    assert swapped_prediction(codes, scores, tau).item() == pytest.approx(expected.item(), rel=1e-5)


def test_the_codes_carry_no_gradient_and_every_crop_is_a_predictor(tmp_path):
    run = prepare(tiny(tmp_path))
    views, indices = views_of(run)
    assert len(views) == 4 and views[2].shape[-1] == 16  # 2 global crops of 32 px, 2 local crops of 16 px
    views = [v.requires_grad_(True) for v in views]
    run.method(views, indices, 0.0)["loss"].backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in views)  # local crops predict, too


# ---- prototypes -------------------------------------------------------------------------------------


def test_prototypes_stay_unit_norm_and_are_frozen_for_the_first_epoch(tmp_path):
    run = prepare(tiny(tmp_path, epochs=2))  # 3 steps an epoch; freeze_prototypes_epochs 1: steps 0-2 frozen
    prototypes = run.method.prototypes.weight
    assert torch.allclose(prototypes.norm(dim=1), torch.ones(16), atol=1e-6)  # normalised from the start
    start, backbone = prototypes.detach().clone(), next(run.method.backbone.parameters()).detach().clone()
    views, indices = views_of(run)
    for step in range(3):
        run.step = step
        optimisation_step(run, [(views, indices)])
        assert torch.allclose(prototypes, start, atol=1e-6), f"prototypes moved at step {step}"
    assert not torch.equal(next(run.method.backbone.parameters()), backbone)  # the rest of the network trains
    run.step = 3
    optimisation_step(run, [(views, indices)])
    assert not torch.allclose(prototypes, start, atol=1e-4)  # released after an epoch
    assert torch.allclose(prototypes.norm(dim=1), torch.ones(16), atol=1e-6)  # and back on the sphere


# ---- the queue --------------------------------------------------------------------------------------


def test_queue_fills_first_in_first_out_and_is_full_once_every_slot_is_written():
    queue = ProjectionQueue(crops=2, size=5, dim=1)
    batches = [torch.tensor([[1.0, 2.0], [-1.0, -2.0]]), torch.tensor([[3.0, 4.0], [-3.0, -4.0]]),
               torch.tensor([[5.0, 6.0], [-5.0, -6.0]])]
    queue.push(batches[0].unsqueeze(-1))
    queue.push(batches[1].unsqueeze(-1))
    assert not queue.full
    queue.push(batches[2].unsqueeze(-1))  # 6 projections into 5 slots: the oldest (1) goes
    assert queue.full
    assert sorted(queue.projections[0, :, 0].tolist()) == [2, 3, 4, 5, 6]
    assert sorted(queue.projections[1, :, 0].tolist()) == [-6, -5, -4, -3, -2]  # one queue per global crop
    queue.push(torch.tensor([[7.0], [-7.0]]).unsqueeze(-1))
    assert sorted(queue.projections[0, :, 0].tolist()) == [3, 4, 5, 6, 7]


def test_queue_starts_at_its_epoch_and_joins_the_partition_once_full(tmp_path):
    run = prepare(tiny(tmp_path, epochs=2, swav_queue_size=64, swav_queue_start=1))  # 3 steps an epoch
    method, queue = run.method, run.method.queue
    views, indices = views_of(run)
    assigned = []  # how many samples each Sinkhorn-Knopp call partitions
    codes = method.codes
    method.codes = lambda scores: (assigned.append(len(scores)), codes(scores))[1]
    method(views, indices, progress=2 / 6)  # step 2, epoch 0: before the start
    assert queue.filled == 0 and assigned == [32, 32]
    method(views, indices, progress=3 / 6)  # step 3, epoch 1: the queue fills
    assert queue.filled == 32 and assigned[2:] == [32, 32]  # and is not used until full
    method(views, indices, progress=4 / 6)
    assert queue.full and assigned[4:] == [32, 32]
    out = method(views, indices, progress=5 / 6)
    assert assigned[6:] == [64 + 32, 64 + 32]  # the queue's scores join the batch's in the partition
    assert torch.isfinite(out["loss"])
    # its entries are the normalised projections of the two global crops (no step taken: the same each call)
    z = method.project(encode_crops(method.backbone, views))[:64].detach().view(2, 32, -1)
    assert torch.allclose(queue.projections, z.repeat(1, 2, 1), atol=1e-5)


def test_queue_longer_than_the_dataset_is_refused(tmp_path):
    with pytest.raises(SpecError, match="swav-queue-size"):
        prepare(tiny(tmp_path, swav_queue_size=200))


# ---- collapse: the equal partition is what keeps SwAV from it --------------------------------------


@pytest.mark.parametrize("equipartition", [True, False])
def test_without_equal_partition_the_codes_collapse_and_the_monitor_and_inspect_collapse_say_so(tmp_path, equipartition):
    """The paper's claim (and the SwAV README's analysis): without the equal-partition constraint every image goes to
    one prototype, a trivial solution the swapped prediction cannot tell from learning. 256 synthetic images, 3 epochs
    of 4 steps (measured: the ablation's loss falls to 0.05 with one prototype in use and the projections' spread to
    0.006, alarmed from epoch 2; the recipe keeps all 16 prototypes in use, spread 0.15, loss 5.1 -> 3.2)."""
    spec = tiny(tmp_path, epochs=3, equipartition=equipartition).model_dump()
    spec["data"]["subset"], spec["optim"]["batch_size"], spec["monitor"]["images"] = 256, 64, 128
    run = prepare(PretrainSpec.model_validate(spec))
    stats = train(run)
    collapse = stats["collapse"]
    inspected = inspect_collapse(InspectSpec.model_validate({"checkpoint": str(run.checkpoint_path),
                                                             "data": {"subset": 128}}))
    if equipartition:
        assert collapse["verdict"] == "healthy" and not collapse["alarm"], collapse
        assert stats["prototypes_used"] > 0.8 * 16
        assert inspected["representations"]["assignment"]["verdict"] == "healthy", inspected["representations"]
    else:
        assert collapse["verdict"] == "complete collapse" and collapse["alarm"], collapse
        assert collapse["projector"]["spread"] < 0.02 and collapse["assignment"]["spread"] < 0.02
        assert stats["prototypes_used"] < 1.5  # every image sent to one prototype
        assert inspected["verdict"] == "complete collapse"
        assert inspected["representations"]["assignment"]["verdict"] == "complete collapse"

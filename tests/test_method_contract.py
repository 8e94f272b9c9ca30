"""The contract every registered method keeps, so that a new method gets these checks by adding its files:
a complete recipe, a finite loss whose gradient reaches the encoder, a clean optimiser partition, frozen momentum
networks, a checkpoint that round-trips, and a resume that equals the uninterrupted run."""

import os
import signal

import pytest
import torch

from contrastive_cli import checkpoint as ckpt
from contrastive_cli.methods import SPECS
from contrastive_cli.methods.base import build_encoder
from contrastive_cli.spec import PretrainSpec
from contrastive_cli.train import TrainingStopped, optimisation_step, prepare, train

METHODS = list(SPECS)
# both backbone families: every method with the small CNN, and with a one-block ViT where the method takes one
FAMILIES = [(name, "cnn") for name in SPECS] + [(name, "vit") for name in SPECS if SPECS[name].vit_backbone]
BACKBONES = {"cnn": {"name": "small_cnn"}, "vit": {"name": "vit_tiny", "depth": 1, "patch_size": 8}}


def tiny(tmp_path, name, epochs=2, family="cnn"):
    """The embedded synthetic data (32 px colour), small CNN (or a one-block ViT-tiny with 8 px patches), 96 images,
    batch 32: 3 steps an epoch."""
    method = {"name": name}
    for queue in ("queue_size", "support_size"):  # MoCo's negatives, NNCLR's support set
        if queue in SPECS[name].model_fields:
            method[queue] = 40  # no multiple of the batch: the queue wraps inside a push
    return PretrainSpec.model_validate({
        "method": method, "backbone": BACKBONES[family], "data": {"source": "synthetic", "subset": 96},
        "optim": {"epochs": epochs, "batch_size": 32}, "monitor": {"images": 64},
        "runtime": {"out": str(tmp_path / "run"), "checkpoint_every": 1}})


def one_batch(run):
    x, _, indices = next(run.data.batches(torch.arange(run.spec.optim.batch_size), run.spec.optim.batch_size))
    generator = torch.Generator().manual_seed(0)
    s = run.spec
    views = [v(x, generator) for v in run.method.views(s.augment, s.data.image_size, run.data.mean, run.data.std)]
    return views, indices


@pytest.mark.parametrize("name,family", FAMILIES)
def test_recipe_leaves_no_field_unset(tmp_path, name, family):
    spec = prepare(tiny(tmp_path, name, family=family)).spec
    for section in ("method", "optim", "augment") + (("backbone",) if family == "vit" else ()):
        # backbone.init None is random initialisation, not a value the recipe leaves open
        unset = [k for k, v in getattr(spec, section) if v is None and (section, k) != ("backbone", "init")]
        assert not unset, f"{name}: the recipe leaves {section}.{unset} unset"


@pytest.mark.parametrize("name,family", FAMILIES)
def test_loss_is_finite_and_its_gradient_reaches_the_encoder(tmp_path, name, family):
    run = prepare(tiny(tmp_path, name, family=family))
    views, indices = one_batch(run)
    out = run.method(views, indices, 0.0)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    assert all(torch.as_tensor(v).numel() == 1 for v in out.values()), "forward returns scalars only"
    out["loss"].backward()
    grads = [p.grad for p in run.method.backbone.parameters() if p.requires_grad]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name,family", FAMILIES)
def test_every_trainable_parameter_is_in_exactly_one_optimiser_group(tmp_path, name, family):
    run = prepare(tiny(tmp_path, name, family=family))
    in_groups = [id(p) for g in run.optimizer.param_groups for p in g["params"]]
    trainable = {id(p) for p in run.method.parameters() if p.requires_grad}
    assert len(in_groups) == len(set(in_groups)), "a parameter sits in two groups"
    assert set(in_groups) == trainable


@pytest.mark.parametrize("name,family", FAMILIES)
def test_momentum_networks_get_no_gradient_and_move_only_by_ema(tmp_path, name, family):
    run = prepare(tiny(tmp_path, name, family=family))
    targets = [p for _, target in run.method.momentum_pairs() for p in target.parameters()]
    assert all(not p.requires_grad for p in targets)
    views, indices = one_batch(run)
    optimisation_step(run, [(views, indices)])
    assert all(p.grad is None for p in targets)


@pytest.mark.parametrize("name,family", FAMILIES)
def test_checkpoint_round_trips_and_the_encoder_rebuilds_from_its_record(tmp_path, name, family):
    run = prepare(tiny(tmp_path, name, epochs=1, family=family))
    train(run)
    restored = prepare(PretrainSpec(), resume=run.dir)
    for (k, a), b in zip(run.method.state_dict().items(), restored.method.state_dict().values()):
        assert torch.equal(a, b), k
    # evaluations rebuild the exported encoder from the checkpoint's record alone and get the same features
    tensors, meta = ckpt.load(run.checkpoint_path, prefix="backbone.")
    encoder, dim = build_encoder(meta["backbone"])
    encoder.load_state_dict(ckpt.strip(tensors, "backbone."), strict=True)
    views, _ = one_batch(run)
    run.method.eval()
    encoder.eval()
    with torch.no_grad():
        assert torch.allclose(encoder(views[0]), run.method.exported_encoder()(views[0]), atol=1e-5)
    assert dim == meta["feature_dim"] == encoder(views[0]).shape[1]


@pytest.mark.parametrize("name", METHODS)
def test_interrupted_and_resumed_run_equals_an_uninterrupted_run(tmp_path, name):
    full = prepare(tiny(tmp_path / "a", name))
    train(full)

    def ctrl_c_at_step_4(run, record):
        if run.step == 4:
            os.kill(os.getpid(), signal.SIGINT)  # the real signal: handled between steps

    part = prepare(tiny(tmp_path / "b", name))
    with pytest.raises(TrainingStopped) as stop:
        train(part, on_step=ctrl_c_at_step_4)
    assert stop.value.exit_code == 130
    resumed = prepare(PretrainSpec(), resume=part.dir)
    assert resumed.step == 4
    train(resumed)
    for (k, a), b in zip(full.method.state_dict().items(), resumed.method.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), k


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated upstream; export still offers it
@pytest.mark.parametrize("name,family", FAMILIES)
def test_exported_encoder_scripts_to_torchscript_with_the_same_features(tmp_path, name, family):
    """`contrastive export --format torchscript` scripts the encoder rebuilt from the checkpoint (no sizes baked in)."""
    run = prepare(tiny(tmp_path, name, epochs=1, family=family))
    run.save()
    tensors, meta = ckpt.load(run.checkpoint_path, prefix="backbone.")
    encoder, _ = build_encoder(meta["backbone"])
    encoder.load_state_dict(ckpt.strip(tensors, "backbone."))
    encoder.eval()
    scripted = torch.jit.script(encoder)
    views, _ = one_batch(run)
    with torch.no_grad():
        assert torch.allclose(scripted(views[0]), encoder(views[0]), atol=1e-5)

"""The training loop: checkpoints round-trip, Ctrl-C and NaN are handled (resume equals an uninterrupted run for
every method: test_method_contract.py)."""


import pytest
import torch
from safetensors import safe_open

from contrastive_cli import checkpoint as ckpt
from contrastive_cli.errors import UserError
from contrastive_cli.spec import PretrainSpec
from contrastive_cli.optim import lr_factor
from contrastive_cli.train import TrainingStopped, prepare, train


def tiny_spec(tmp_path, method="mocov2", **optim):
    return PretrainSpec.model_validate({
        "method": {"name": method, **({"queue_size": 64} if method == "mocov2" else {})},
        "backbone": {"name": "small_cnn"}, "data": {"source": "synthetic", "subset": 96},
        "optim": {"epochs": 3, "batch_size": 32, **optim}, "runtime": {"out": str(tmp_path / "run")}})


def test_checkpoint_round_trip_restores_every_tensor(tmp_path):
    run = prepare(tiny_spec(tmp_path))
    train(run)
    restored = prepare(PretrainSpec(), resume=run.dir)
    for (k, a), b in zip(run.method.state_dict().items(), restored.method.state_dict().values()):
        assert torch.equal(a, b), k
    assert restored.step == run.step == run.total_steps
    meta = ckpt.read_meta(run.checkpoint_path)
    assert meta["method"] == "mocov2" and meta["backbone"]["name"] == "small_cnn" and meta["feature_dim"] == 256
    assert meta["spec"]["method"]["queue_size"] == 64 and meta["data"]["fingerprint"] == run.data.fingerprint
    with safe_open(str(run.checkpoint_path), "pt") as f:
        keys = list(f.keys())
    assert "method.queue.keys" in keys and any(k.startswith("method.momentum_backbone.") for k in keys)
    assert any(k.startswith("optim.") for k in keys) and any(k.startswith("backbone.features") for k in keys)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    run = prepare(tiny_spec(tmp_path, epochs=3))
    train_steps = run.steps_per_epoch

    def poison(run_, record):
        if run_.step == train_steps + 1:  # after epoch 1's checkpoint: make the next loss NaN
            with torch.no_grad():
                run_.method.projector[0].weight.fill_(float("nan"))

    run.spec.runtime.checkpoint_every = 1
    with pytest.raises(TrainingStopped) as stop:
        train(run, on_step=lambda r, rec: poison(r, rec))
    assert stop.value.exit_code == 3 and "nan" in str(stop.value).lower()
    meta = ckpt.read_meta(run.checkpoint_path)
    assert meta["step"] == train_steps  # the epoch-1 checkpoint is intact, not overwritten by bad state
    assert not list(run.dir.glob(".*.tmp"))


def test_existing_run_directory_is_not_overwritten(tmp_path):
    run = prepare(tiny_spec(tmp_path, epochs=1))
    train(run)
    with pytest.raises(UserError, match="already holds a run"):
        prepare(tiny_spec(tmp_path, epochs=1))


def test_lr_schedule_warms_up_then_follows_a_half_cosine():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(60, 100, 0, "step") == pytest.approx(0.1) and lr_factor(80, 100, 0, "step") == pytest.approx(0.01)


@pytest.mark.parametrize("content, needle", [
    (None, "does not exist"),
    (b"\x00\x01 not a safetensors file", "not a readable safetensors file"),
])
def test_bad_checkpoint_files_get_clear_errors(tmp_path, content, needle):
    path = tmp_path / "x.safetensors"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=needle):
        ckpt.read_meta(path)


def test_truncated_and_foreign_checkpoints_are_rejected(tmp_path):
    run = prepare(tiny_spec(tmp_path, epochs=1))
    train(run)
    data = run.checkpoint_path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated"):
        ckpt.load(cut)
    from safetensors.torch import save_file
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(UserError, match="not a contrastive checkpoint"):
        ckpt.read_meta(foreign)
    with pytest.raises(UserError, match="linear-probe checkpoint"):
        ckpt.read_meta(run.checkpoint_path, kinds=("linear-probe",))


class Regression(torch.nn.Module):
    """A model whose images never meet in the batch (no batch norm, no negatives): what accumulation is exact for."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(3 * 32 * 32, 1)

    def forward(self, views, indices, progress):
        return {"loss": (self.linear(views[0].flatten(1)) - views[1].mean(dim=(1, 2, 3))[:, None]).pow(2).mean()}

    def before_optimizer_step(self, progress):
        pass

    def after_step(self, progress):
        pass


def test_accumulated_micro_batches_take_the_step_of_the_whole_batch(tmp_path):
    """--accumulate-steps K: K micro-batches of B/K, one after another, sum to the gradient of the batch B and take
    one optimiser step, for a model whose images do not interact in the batch."""
    from contrastive_cli.train import optimisation_step
    steps = {}
    for parts in (1, 4):
        run = prepare(tiny_spec(tmp_path / str(parts), "simclr", accumulate_steps=parts))
        run.method = run.model = Regression()
        run.optimizer = torch.optim.SGD(run.method.parameters(), lr=0.1, momentum=0.9)
        g = torch.Generator().manual_seed(1)
        views, indices = [torch.randn(32, 3, 32, 32, generator=g) for _ in range(2)], torch.arange(32)
        micro = [([v[i:i + 32 // parts] for v in views], indices[i:i + 32 // parts]) for i in range(0, 32, 32 // parts)]
        out = optimisation_step(run, micro)
        steps[parts] = (out["loss"].item(), run.method.linear.weight.detach().clone())
    assert steps[4][0] == pytest.approx(steps[1][0], rel=1e-6)  # the mean of the micro-batch losses
    torch.testing.assert_close(steps[4][1], steps[1][1])


def test_accumulation_keeps_the_step_count_lr_and_batch_and_splits_only_where_it_can(tmp_path):
    stats = train(prepare(tiny_spec(tmp_path, "byol", accumulate_steps=2)))
    records = [r for r in map(__import__("json").loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
               if "type" not in r]
    assert [r["step"] for r in records] == list(range(1, 10)) and stats["loss"] > 0  # 96 images / 32 per step x 3
    with pytest.raises(UserError, match="cannot be split into --accumulate-steps 3"):
        prepare(tiny_spec(tmp_path / "odd", "byol", accumulate_steps=3))

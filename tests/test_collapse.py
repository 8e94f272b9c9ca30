"""Collapse diagnostics behave as the papers define them, and `inspect-collapse` and the pretraining monitor call
constant embeddings complete collapse, embeddings in a few dimensions dimensional collapse, and others healthy."""

import copy
import json
import math

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import needs_fashion_mnist
from contrastive_cli import collapse
from contrastive_cli.cli import app
from contrastive_cli.spec import CollapseThresholds, PretrainSpec
from contrastive_cli.train import TrainingStopped, prepare, train

runner = CliRunner()
g = torch.Generator().manual_seed(0)


def gaussian(n, d):
    return torch.randn(n, d, generator=g)


def test_std_of_normalized_isotropic_embeddings_is_one_over_sqrt_d():
    for d in (16, 128, 512):
        assert collapse.std_of_normalized(gaussian(20000, d)) == pytest.approx(1 / math.sqrt(d), rel=0.02)
    assert collapse.std_of_normalized(torch.ones(100, 64) * 3) == pytest.approx(0, abs=1e-7)


def test_rankme_counts_the_dimensions_in_use():
    assert collapse.rankme(gaussian(8192, 64)) > 0.95 * 64
    low = gaussian(4096, 3) @ gaussian(3, 128)  # three directions in 128 dimensions
    assert 2 < collapse.rankme(low) <= 3.01
    assert collapse.rankme(torch.ones(100, 32)) == pytest.approx(1, abs=1e-3)


def test_spectrum_shows_the_collapsed_dimensions_and_the_variance_they_hold():
    low = gaussian(4096, 5) @ gaussian(5, 64)
    spectrum = collapse.covariance_spectrum(low)
    assert spectrum.shape == (64,) and (spectrum[:-1] >= spectrum[1:]).all()
    assert spectrum[6:].max() < 1e-6 * spectrum[0]
    assert collapse.dims_for_variance(spectrum) <= 5
    healthy = collapse.covariance_spectrum(gaussian(20000, 32))
    assert healthy.mean().item() == pytest.approx(1 / 32, rel=0.05)  # isotropic: every eigenvalue near 1/d
    assert collapse.dims_for_variance(collapse.covariance_spectrum(torch.ones(50, 8))) == 0


def test_alignment_uniformity_and_cosines_of_collapsed_and_spread_embeddings():
    z = gaussian(512, 32)
    assert collapse.alignment(z, z) == pytest.approx(0, abs=1e-6)
    assert collapse.alignment(z, gaussian(512, 32)) == pytest.approx(2, rel=0.05)  # independent unit vectors
    assert collapse.uniformity(torch.ones(64, 8)) == pytest.approx(0, abs=1e-9)
    assert collapse.uniformity(z) < -3.5  # spread on the sphere: log E exp(-2·2) ≈ -4 in high dimension
    positive, negative = collapse.pair_cosines(torch.ones(64, 8), torch.ones(64, 8))
    assert positive == pytest.approx(1) and negative == pytest.approx(1)
    positive, negative = collapse.pair_cosines(z, z + 0.1 * gaussian(512, 32))
    assert positive > 0.99 and abs(negative) < 0.05


def test_knn_agreement_is_high_for_class_clusters_and_chance_for_noise():
    labels = torch.arange(1000) % 4
    clustered = 5 * torch.eye(16)[labels] + gaussian(1000, 16)
    agree, chance = collapse.knn_agreement(clustered, labels)
    assert agree > 0.95 and chance == pytest.approx(0.25)
    assert collapse.knn_agreement(gaussian(1000, 16), labels)[0] == pytest.approx(0.25, abs=0.05)


@pytest.mark.parametrize("embeddings, verdict", [
    (lambda: torch.ones(512, 128) + 1e-6 * gaussian(512, 128), collapse.COMPLETE),
    (lambda: gaussian(512, 2) @ gaussian(2, 128), collapse.DIMENSIONAL),
    (lambda: gaussian(512, 128), collapse.HEALTHY),
])
def test_verdicts(embeddings, verdict):
    assert collapse.judge(collapse.cheap_stats(embeddings()), CollapseThresholds())[0] == verdict


# ---- inspect-collapse on checkpoints whose encoders collapse by construction ---------------------------


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A small-CNN SimCLR run on the synthetic data, trained once for the module."""
    run = prepare(PretrainSpec.model_validate({
        "method": {"name": "simclr"}, "backbone": {"name": "small_cnn"}, "data": {"subset": 256},
        "optim": {"epochs": 1, "batch_size": 64}, "runtime": {"out": str(tmp_path_factory.mktemp("collapse") / "run")}}))
    train(run)
    return run


@pytest.fixture
def make_checkpoint(base_run, tmp_path):
    """The base checkpoint, or a copy in tmp_path whose backbone `edit(backbone)` made collapse on purpose."""
    def make(edit=None):
        if edit is None:
            return base_run.checkpoint_path
        saved, home = copy.deepcopy(base_run.method.state_dict()), base_run.dir
        with torch.no_grad():
            edit(base_run.method.backbone)
        base_run.dir = tmp_path / "edited"
        base_run.dir.mkdir()
        try:
            return base_run.save()
        finally:
            base_run.method.load_state_dict(saved)
            base_run.dir = home
    return make


def constant_output(backbone):
    last_conv, last_bn = backbone.features[-1][0], backbone.features[-1][1]
    last_conv.weight.zero_()  # the last stage sees nothing: BN(0) = its bias, the same for every image
    last_bn.bias.fill_(1.0)


def four_channels(backbone):
    last_bn = backbone.features[-1][1]
    last_bn.weight[4:] = 0  # every channel but four is switched off: features live in 4 of 256 dimensions
    last_bn.bias[4:] = 0


def inspect(path, *flags, images=256):
    result = runner.invoke(app, ["inspect-collapse", str(path), "--images", str(images), "--json", *flags])
    return result, (json.loads(result.output) if result.exit_code in (0, 1) else None)


def test_constant_encoder_is_complete_collapse_with_its_numbers(make_checkpoint):
    result, report = inspect(make_checkpoint(constant_output), "--fail-on-collapse")
    assert result.exit_code == 1, result.output
    assert report["verdict"] == collapse.COMPLETE
    for rep in ("backbone", "projector"):
        r = report["representations"][rep]
        assert r["verdict"] == collapse.COMPLETE and r["spread"] < 1e-6 and r["std"] < 1e-3
        assert r["positive_cosine"] > 0.999 and r["negative_cosine"] > 0.999
        assert "nearly constant" in r["reason"]


def test_encoder_in_four_dimensions_is_dimensional_collapse(make_checkpoint):
    result, report = inspect(make_checkpoint(four_channels))
    assert result.exit_code == 0  # no --fail-on-collapse: the verdict is reported, the exit code stays 0
    backbone = report["representations"]["backbone"]
    assert backbone["verdict"] == collapse.DIMENSIONAL and backbone["rank"] <= 4.01 and backbone["dims_99"] <= 4
    assert backbone["spread"] > 0.05  # the four dimensions vary: not a constant output
    # the overall verdict is the worst one: the projector's biases swamp four small inputs, so its output is
    # nearly constant, and that is reported rather than averaged away
    assert report["verdict"] == report["representations"]["projector"]["verdict"] != collapse.HEALTHY


def test_report_plot_and_terminal_view(make_checkpoint, tmp_path):
    path = make_checkpoint()
    result = runner.invoke(app, ["inspect-collapse", str(path), "--images", "256", "--report", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    for needle in ("effective rank (RankMe)", "alignment", "uniformity", "10-NN label agreement", "spectrum", "verdict"):
        assert needle in result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert len(report["representations"]["backbone"]["spectrum"]) == 256
    assert len(report["representations"]["projector"]["spectrum"]) == 128
    with Image.open(tmp_path / "r.png") as png:
        assert png.format == "PNG" and png.width >= 800


def test_thresholds_are_overridable(make_checkpoint):
    path = make_checkpoint()
    _, lenient = inspect(path, "--min-spread", "1e-9", "--min-rank-share", "1e-9")
    _, strict = inspect(path, "--min-spread", "1e-9", "--min-rank-share", "0.99")
    _, strictest = inspect(path, "--min-spread", "1.0")
    assert lenient["verdict"] == collapse.HEALTHY and strict["verdict"] == collapse.DIMENSIONAL
    assert strictest["verdict"] == collapse.COMPLETE
    assert strict["thresholds"] == {"min_spread": 1e-9, "min_rank_share": 0.99, "max_entropy_share": 0.95,
                                    "min_marginal_share": 0.25}


def test_inspecting_a_missing_checkpoint_fails_cleanly(tmp_path):
    result = runner.invoke(app, ["inspect-collapse", str(tmp_path / "nope.safetensors")])
    assert result.exit_code == 2 and "does not exist" in result.output and "Traceback" not in result.output


def test_unwritable_report_path_fails_cleanly(make_checkpoint, tmp_path):
    (tmp_path / "file").write_text("")
    result = runner.invoke(app, ["inspect-collapse", str(make_checkpoint()), "--images", "64",
                                 "--report", str(tmp_path / "file" / "r.json")])
    text = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2 and "cannot be written" in text and "--report" in text, text  # before the work


# ---- the monitor during pretraining ---------------------------------------------------------------------


def monitored_spec(tmp_path, **monitor):
    return PretrainSpec.model_validate({
        "method": {"name": "simsiam"}, "backbone": {"name": "small_cnn"}, "data": {"subset": 128},
        "optim": {"epochs": 3, "batch_size": 64}, "monitor": {"images": 128, **monitor},
        "runtime": {"out": str(tmp_path / "run")}})


def test_monitor_logs_std_and_rank_of_both_representations_every_epoch(tmp_path):
    run = prepare(monitored_spec(tmp_path))
    train(run)
    epochs = [r for r in map(json.loads, (run.dir / "metrics.jsonl").read_text().splitlines()) if r.get("type") == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    for r in epochs:
        assert r["collapse"]["verdict"] in (collapse.HEALTHY, collapse.DIMENSIONAL, collapse.COMPLETE)
        assert set(r["collapse"]["backbone"]) == {"spread", "std_ratio", "rank", "rank_share"}
        assert r["collapse"]["projector"]["rank"] >= 1


def test_stop_on_collapse_ends_the_run_with_a_resumable_checkpoint(tmp_path):
    # a threshold no encoder meets stands in for a collapse, so the stop path is exercised in seconds
    run = prepare(monitored_spec(tmp_path, min_spread=1.0, stop_on_collapse=True))
    with pytest.raises(TrainingStopped) as stop:
        train(run)
    # the alarm needs `patience` (2) collapsed epochs in a row: the run stops after epoch 2 of 3
    assert stop.value.exit_code == 4 and "complete collapse for 2 epoch(s) in a row, up to epoch 2" in str(stop.value)
    assert run.checkpoint_path.exists() and run.step == 2 * run.steps_per_epoch
    epochs = [r for r in map(json.loads, (run.dir / "metrics.jsonl").read_text().splitlines()) if r.get("type") == "epoch"]
    assert [r["collapse"]["alarm"] for r in epochs] == [False, True]


def test_cli_warns_visibly_on_collapse(tmp_path):
    result = runner.invoke(app, ["pretrain", "--method", "simsiam", "--backbone", "small_cnn", "--subset", "128",
                                 "--batch-size", "64", "--epochs", "1", "--monitor-images", "128",
                                 "--min-spread", "1e-9", "--min-rank-share", "1.0", "--collapse-patience", "1", "--stop-on-collapse", "--out", str(tmp_path / "run")])
    assert result.exit_code == 4, result.output
    assert "Collapse" in result.output and "dimensional collapse after epoch 1" in result.output


# ---- real runs that the literature says collapse -----------------------------------------------------------

# SimSiam (Chen & He 2021, Sec. 4.1 and Table 1): without stop-gradient, or without the predictor, it collapses;
# BYOL (Grill et al. 2020, Table 5) collapses without its predictor. Two epochs of a 10k-image Fashion-MNIST
# subset with the small CNN (about a minute each) are enough for the monitor to see it after epoch 1; the same
# budget with the recipe (predictor and stop-gradient on) stays healthy, and so do the 15-epoch runs of every
# method in test_learning.py.
ABLATIONS = [("simsiam", {"stop_gradient": False}), ("simsiam", {"predictor": False}), ("byol", {"predictor": False}),
             ("simsiam", {}), ("byol", {})]


@pytest.mark.slow
@needs_fashion_mnist
@pytest.mark.parametrize("method, ablation", ABLATIONS, ids=["simsiam-no-stop-gradient", "simsiam-no-predictor",
                                                              "byol-no-predictor", "simsiam-recipe", "byol-recipe"])
def test_ablations_the_papers_report_as_collapsing_are_flagged(method, ablation, tmp_path):
    run = prepare(PretrainSpec.model_validate({
        "method": {"name": method, **ablation}, "backbone": {"name": "small_cnn"},
        "data": {"source": "fashion-mnist", "subset": 10000}, "augment": {"crop_scale": (0.2, 1.0)},
        "optim": {"epochs": 2, **({"lr": 0.2} if method == "simsiam" else {})},
        "runtime": {"out": str(tmp_path / "run")}}))
    train(run)
    monitor = [r["collapse"] for r in map(json.loads, (run.dir / "metrics.jsonl").read_text().splitlines())
               if r.get("type") == "epoch"]
    _, report = inspect(run.checkpoint_path, images=2048)
    print(f"\n{method} {ablation}: monitor {[m['verdict'] for m in monitor]} {monitor[-1]}; inspect {report['verdict']}: "
          + "; ".join(f"{n}: {r['reason']}" for n, r in report["representations"].items()))
    if ablation:  # collapsed after every epoch, so the monitor alarms once its patience (2 epochs) is used up
        assert all(m["verdict"] != collapse.HEALTHY for m in monitor) and monitor[-1]["alarm"], monitor
        assert report["verdict"] != collapse.HEALTHY, report["verdict"]
    else:
        assert not any(m["alarm"] for m in monitor), monitor
        assert report["verdict"] == collapse.HEALTHY, report["verdict"]

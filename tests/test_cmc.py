"""CMC (Tian et al. 2019) as the paper and its code describe it: the two views are the L and ab channels of one
crop in Lab colour space, each has its own encoder, L anchors are contrasted with the ab memory bank and ab anchors
with the L bank, and the representation is the concatenation of both encoders' features."""

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from conftest import needs_fashion_mnist
from contrastive_cli.cli import app
from contrastive_cli.errors import SpecError
from contrastive_cli.methods.base import build_encoder, build_method, encoder_record
from contrastive_cli.methods.cmc import LAB_MEAN, LAB_STD, rgb_to_lab
from contrastive_cli.methods.fields import DataFacts
from contrastive_cli.spec import PretrainSpec, resolve_pretrain

MEAN, STD = (0.5, 0.4, 0.3), (0.3, 0.25, 0.2)
COLOURS = {"white": (1, 1, 1), "black": (0, 0, 0), "red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1),
           "magenta": (1, 0, 1), "yellow": (1, 1, 0)}


def pixels(*names):
    return torch.tensor([COLOURS[n] for n in names], dtype=torch.float32).view(-1, 3, 1, 1)


def cmc(contrast="nce", images=64, negatives=16, backbone="small_cnn"):
    spec = PretrainSpec.model_validate({"method": {"name": "cmc", "contrast": contrast, "negatives": negatives},
                                        "backbone": {"name": backbone}, "optim": {"batch_size": 8}})
    spec = resolve_pretrain(spec, 32, images)
    torch.manual_seed(0)
    return build_method(spec, DataFacts(images, 3, MEAN, STD)), spec


def normalised(rgb):
    return (rgb - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


# ---- the views -------------------------------------------------------------------------------------------------


def test_rgb_to_lab_gives_the_cie_values_of_skimage():
    lab = rgb_to_lab(pixels("white", "black", "red")).flatten(1)
    assert torch.allclose(lab[0], torch.tensor([100.0, 0.0, 0.0]), atol=0.01)
    assert torch.allclose(lab[1], torch.zeros(3), atol=1e-4)
    assert torch.allclose(lab[2], torch.tensor([53.24, 80.09, 67.20]), atol=0.01)  # skimage.color.rgb2lab


def test_the_codes_normalisation_maps_the_srgb_gamut_onto_minus_one_to_one():
    # train_CMC.py's mean/std are the midpoints and half-ranges of L, a, b over sRGB: the extreme colours land on ±1
    lab = (rgb_to_lab(pixels("black", "white", "green", "magenta", "blue", "yellow")) -
           torch.tensor(LAB_MEAN).view(1, 3, 1, 1)) / torch.tensor(LAB_STD).view(1, 3, 1, 1)
    lab = lab.flatten(1)
    assert torch.allclose(lab[[0, 1], 0], torch.tensor([-1.0, 1.0]), atol=1e-4)  # L: black, white
    assert torch.allclose(lab[[2, 3], 1], torch.tensor([-1.0, 1.0]), atol=1e-4)  # a: green, magenta
    assert torch.allclose(lab[[4, 5], 2], torch.tensor([-1.0, 1.0]), atol=1e-4)  # b: blue, yellow


def test_one_crop_in_the_evaluations_normalisation_becomes_the_L_and_ab_views():
    method, spec = cmc()
    assert len(method.views(spec.augment, 32, MEAN, STD)) == 1  # one crop per image, no second view
    rgb = torch.rand(4, 3, 8, 8)
    l, ab = method.backbone.lab_views(normalised(rgb))
    lab = (rgb_to_lab(rgb) - torch.tensor(LAB_MEAN).view(1, 3, 1, 1)) / torch.tensor(LAB_STD).view(1, 3, 1, 1)
    assert l.shape == (4, 1, 8, 8) and ab.shape == (4, 2, 8, 8)
    assert torch.allclose(torch.cat([l, ab], 1), lab, atol=1e-4)


def test_the_recipe_has_no_colour_augmentation():
    _, spec = cmc()
    a = spec.augment
    assert a.jitter_p == 0 and a.gray_p == 0 and a.blur_p == (0, 0) and a.solarize_p == (0, 0)


# ---- the encoders ------------------------------------------------------------------------------------------------


def test_the_exported_encoder_concatenates_the_L_and_ab_encoders_features():
    method, spec = cmc()
    encoder = method.exported_encoder().eval()
    rgb = torch.rand(4, 3, 32, 32)
    l, ab = encoder.lab_views(normalised(rgb))
    with torch.no_grad():
        features = encoder(normalised(rgb))
        assert torch.allclose(features, torch.cat([encoder.l_encoder(l), encoder.ab_encoder(ab)], 1), atol=1e-6)
    # half-width small CNN per view (16-32-64-128), so the two together are as wide as the backbone (256)
    assert features.shape == (4, 256) == (4, method.feature_dim)
    # evaluations rebuild it from the checkpoint's record alone
    rebuilt, dim = build_encoder(encoder_record(spec, DataFacts(64, 3, MEAN, STD), method.feature_dim))
    rebuilt.load_state_dict(encoder.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.allclose(rebuilt.eval()(normalised(rgb)), features, atol=1e-6) and dim == 256


def test_resnet_view_encoders_are_half_width_with_one_and_two_input_channels():
    method, _ = cmc(backbone="resnet18")
    encoder = method.backbone
    assert encoder.l_encoder.conv1.in_channels == 1 and encoder.ab_encoder.conv1.in_channels == 2
    assert encoder.l_encoder.conv1.out_channels == 64  # the code keeps the stem, halves the stages
    assert [getattr(encoder.l_encoder, f"layer{i}")[-1].conv2.out_channels for i in (1, 2, 3, 4)] == [32, 64, 128, 256]
    assert method.feature_dim == 512 and method.l_head.out_features == 128


# ---- the loss ----------------------------------------------------------------------------------------------------


def direct_nce(anchors, bank, rows, z, temperature, n):
    """Eq. 12 of the paper with the code's constant Z, one term at a time."""
    k = rows.shape[1] - 1
    total = 0.0
    for i in range(len(anchors)):
        p = [math.exp(float(bank[j] @ anchors[i]) / temperature) / z for j in rows[i].tolist()]
        total -= math.log(p[0] / (p[0] + k / n))
        total -= sum(math.log((k / n) / (pj + k / n)) for pj in p[1:])
    return total / len(anchors)


def test_the_loss_is_L_to_ab_plus_ab_to_L_nce_against_the_other_views_memory_bank():
    method, _ = cmc(images=64, negatives=16)
    x, indices = normalised(torch.rand(8, 3, 32, 32)), torch.arange(8) * 3
    l_bank, ab_bank = method.l_bank.features.clone(), method.ab_bank.features.clone()
    torch.manual_seed(1)
    out = method([x], indices)
    torch.manual_seed(1)
    rows = method.l_bank.sample(indices, 16)  # the same draws as forward's
    z_l, z_ab = method.project(*method.backbone.features(x))  # train mode: the same batch statistics
    t, n = 0.07, 64
    z_l_const, z_ab_const = float(method.ab_bank.z), float(method.l_bank.z)  # set at this first step
    assert z_l_const == pytest.approx(n * torch.exp(ab_bank[rows] @ z_l.detach().unsqueeze(2) / t).mean(), rel=1e-4)
    loss_l = direct_nce(z_l.detach(), ab_bank, rows, z_l_const, t, n)  # L anchors, ab memory
    loss_ab = direct_nce(z_ab.detach(), l_bank, rows, z_ab_const, t, n)
    assert float(out["loss_l"]) == pytest.approx(loss_l, rel=1e-4)
    assert float(out["loss_ab"]) == pytest.approx(loss_ab, rel=1e-4)
    assert float(out["loss"].detach()) == pytest.approx(loss_l + loss_ab, rel=1e-4)
    assert "mi_bound" not in out  # NCE is no InfoNCE: log N - L bounds nothing here
    # each bank then moves its seen entries towards its own view's embedding
    assert torch.allclose(method.l_bank.features[indices], F.normalize(0.5 * l_bank[indices] + 0.5 * z_l.detach()),
                          atol=1e-5)
    assert torch.allclose(method.ab_bank.features[indices], F.normalize(0.5 * ab_bank[indices] + 0.5 * z_ab.detach()),
                          atol=1e-5)


def test_in_batch_contrast_is_infonce_both_ways_with_the_batch_as_candidates():
    method, _ = cmc(contrast="in-batch")
    assert not hasattr(method, "l_bank")
    x = normalised(torch.rand(8, 3, 32, 32))
    out = method([x], torch.arange(8))
    z_l, z_ab = (z.detach() for z in method.project(*method.backbone.features(x)))
    t = 0.07

    def direction(anchors, others):
        return -sum(math.log(math.exp(float(anchors[i] @ others[i]) / t) /
                             sum(math.exp(float(anchors[i] @ o) / t) for o in others))
                    for i in range(len(anchors))) / len(anchors)

    loss = direction(z_l, z_ab) + direction(z_ab, z_l)
    assert float(out["loss"].detach()) == pytest.approx(loss, rel=1e-4)
    assert float(out["mi_bound"]) == pytest.approx(math.log(8) - loss / 2, rel=1e-4)  # per direction, N = batch


# ---- colour ------------------------------------------------------------------------------------------------------


def test_grayscale_data_is_refused_by_the_spec_check():
    spec = PretrainSpec.model_validate({"method": {"name": "cmc"}, "data": {"source": "mnist"},
                                        "optim": {"batch_size": 32}})
    with pytest.raises(SpecError) as err:
        resolve_pretrain(spec, 28, 100, channels=1)
    assert any("mnist is grayscale" in p and "(--data)" in p and "colour dataset" in p for p in err.value.problems)
    resolve_pretrain(spec, 28, 100, channels=3)  # colour is fine


@needs_fashion_mnist
def test_pretrain_on_fashion_mnist_stops_with_one_clear_message(in_tmp):
    result = CliRunner().invoke(app, ["pretrain", "--method", "cmc", "--data", "fashion-mnist"])
    text = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2, text
    assert "Traceback" not in text and result.exception is None or isinstance(result.exception, SystemExit)
    assert "fashion-mnist is grayscale" in text and "L and ab channels" in text and "--data synthetic" in text
    assert not (in_tmp / "runs").exists()


# ---- learning ----------------------------------------------------------------------------------------------------
# CMC cannot run on Fashion-MNIST (grayscale), and on the embedded `synthetic` shapes its ab view is almost pure
# noise (measured: in-batch loss stays at 2 log B, kNN falls to 25%): it learns on `synthetic-colour`, the same images
# with coloured shapes (hue independent of the class), where ab shows the silhouette (synthetic.py, CHROMA).


@pytest.mark.slow
def test_pretraining_learns_the_coloured_synthetic_shapes(tmp_path):
    """L and ab views of one crop, contrasted in-batch, learn the shapes they share (weighted kNN, k=200, T=0.1,
    the learning tests' protocol): >= 2 points above the random-init encoder and raw pixels."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
    from learning_budget import synthetic_learning_run

    # The default (NCE against memory banks) did not learn within this budget (see docs/methods.md#cmc-cmc);
    # lr 0.06 (the code's 0.03 at batch 128) diverges to a constant embedding with the small CNN: 0.01.
    r = synthetic_learning_run({
        "method": {"name": "cmc", "contrast": "in-batch"}, "backbone": {"name": "small_cnn"},
        "data": {"source": "synthetic-colour"},
        "optim": {"epochs": 10, "lr": 0.01}, "runtime": {"out": str(tmp_path / "r")}}, k=200)
    pretrained, random_init, pixels = r["pretrained"], r["random_init"], r["pixels"]
    print(f"\ncoloured synthetic cmc (in-batch): pretrained {pretrained:.1f}  random-init {random_init:.1f}  "
          f"pixels {pixels:.1f}")
    assert pretrained >= random_init + 2 and pretrained >= pixels + 2

"""Claims about the batched view augmentation (contrastive_cli/augment.py), checked against torchvision."""

import math

import pytest
import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF

from contrastive_cli import augment as A
from contrastive_cli.spec import AugmentSpec

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
BYOL = dict(crop_scale=(0.08, 1.0), jitter_p=0.8, jitter=(0.4, 0.4, 0.2, 0.1), jitter_random_order=True,
            gray_p=0.2, blur_p=(1.0, 0.1), solarize_p=(0.0, 0.2))
IDENTITY = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, jitter=(0.4, 0.4, 0.4, 0.1),
                jitter_random_order=False, gray_p=0.0, blur_p=(0.0, 0.0), solarize_p=(0.0, 0.0))


def spec(**overrides) -> AugmentSpec:
    return AugmentSpec(**{**BYOL, **overrides})


def images(n=8, c=3, side=32, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def gen(seed=0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def normalised(x: torch.Tensor) -> torch.Tensor:
    x = x.float() / 255
    return (x.expand(-1, 3, -1, -1) - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def unnormalised(y: torch.Tensor) -> torch.Tensor:
    return y * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)


# ---- output contract ----

def test_identity_config_returns_the_normalised_input():
    x = images()
    y = A.ViewAugment(AugmentSpec(**IDENTITY), 32, MEAN, STD)(x, gen())
    assert y.shape == (8, 3, 32, 32) and y.dtype == torch.float32
    torch.testing.assert_close(y, normalised(x), atol=1e-5, rtol=0)


def test_output_is_normalised_and_resized_to_the_view_size():
    y = A.ViewAugment(spec(), 24, MEAN, STD)(images(side=32), gen())
    assert y.shape == (8, 3, 24, 24) and y.dtype == torch.float32
    x01 = unnormalised(y)
    assert x01.min() >= -1e-5 and x01.max() <= 1 + 1e-5  # every op keeps [0, 1] before normalising


def test_one_channel_input_gives_three_equal_channels():
    aug = A.ViewAugment(spec(jitter_p=1.0, gray_p=1.0, solarize_p=(1.0, 1.0)), 28, MEAN, STD)
    x01 = unnormalised(aug(images(c=1, side=28), gen()))
    assert x01.shape == (8, 3, 28, 28)
    torch.testing.assert_close(x01[:, 0], x01[:, 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(x01[:, 0], x01[:, 2], atol=1e-5, rtol=0)


def test_two_views_of_the_same_images_differ_and_parameters_vary_across_the_batch():
    x, g = images(), gen()
    view1, view2 = A.ViewAugment(spec(), 32, MEAN, STD, view=0), A.ViewAugment(spec(), 32, MEAN, STD, view=1)
    assert not torch.allclose(view1(x, g), view2(x, g))
    p = view1.sample(64, g, "cpu")
    assert p["box"].std(0).min() > 0.01 and p["factors"].std(0).min() > 0.01
    assert p["flip"].any() and not p["flip"].all()
    assert len({tuple(o) for o in p["order"].tolist()}) > 5


def test_same_seed_reproduces_a_batch_and_other_seeds_do_not():
    aug, x = A.ViewAugment(spec(), 32, MEAN, STD, view=1), images()
    assert torch.equal(aug(x, gen(3)), aug(x, gen(3)))
    assert not torch.allclose(aug(x, gen(3)), aug(x, gen(4)))


# ---- parameter statistics ----

def test_parameter_rates_and_crop_ranges_match_the_configuration():
    n = 20000
    s = spec(crop_scale=(0.2, 0.9), crop_ratio=(0.5, 2.0), flip_p=0.3, jitter_p=0.8, gray_p=0.2)
    for view, solarize_p in ((0, 0.0), (1, 0.2)):
        p = A.ViewAugment(s, 96, MEAN, STD, view=view).sample(n, gen(view), "cpu")
        x0, y0, w, h = p["box"].unbind(1)
        area, ratio = w * h, w / h
        assert area.min() >= 0.2 - 1e-6 and area.max() <= 0.9 + 1e-6
        assert area.min() < 0.21 and area.max() > 0.85  # the whole range is used
        assert ratio.min() >= 0.5 - 1e-5 and ratio.max() <= 2.0 + 1e-5
        assert ratio.min() < 0.55 and ratio.max() > 1.8
        assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + w <= 1 + 1e-6).all() and (y0 + h <= 1 + 1e-6).all()
        for flag, rate in (("flip", 0.3), ("jitter", 0.8), ("gray", 0.2), ("blur", (1.0, 0.1)[view]),
                           ("solarize", solarize_p)):
            se = math.sqrt(rate * (1 - rate) / n)
            assert abs(p[flag].float().mean().item() - rate) <= 4 * se + 1e-9, flag
        b, c, sat, hue = p["factors"].unbind(1)
        assert b.min() >= 0.6 and b.max() <= 1.4 and sat.min() >= 0.8 and hue.abs().max() <= 0.1
        assert abs(c.mean().item() - 1.0) < 0.01  # uniform around 1
        sigma_range = (0.1 * 96 / 224, 2.0 * 96 / 224)  # blur_sigma is given for 224 px
        assert p["sigma"].min() >= sigma_range[0] and p["sigma"].max() <= sigma_range[1]


def test_crop_distribution_matches_torchvision_random_resized_crop():
    n, side, scale, ratio = 20000, 224, (0.08, 1.0), (3 / 4, 4 / 3)
    ours = A.ViewAugment(spec(crop_scale=scale, crop_ratio=ratio), side, MEAN, STD).sample(n, gen(), "cpu")["box"]
    ours_area = ours[:, 2] * ours[:, 3]
    torch.manual_seed(0)
    img = torch.zeros(3, side, side)
    theirs = torch.tensor([T.RandomResizedCrop.get_params(img, list(scale), list(ratio))[2:] for _ in range(3000)])
    theirs_area = theirs.prod(1).float() / side ** 2
    quantiles = torch.linspace(0.05, 0.95, 19)
    gap = (ours_area.quantile(quantiles) - theirs_area.quantile(quantiles)).abs().max()
    assert gap < 0.04, gap  # same distribution, including the acceptance of large crops only near ratio 1


def test_crop_falls_back_to_a_centred_crop_at_the_nearest_ratio_when_nothing_fits():
    # Ratio >= 3 on a square image never fits with area >= 0.9: torchvision takes the full width, height W/3.
    aug = A.ViewAugment(spec(crop_scale=(0.9, 1.0), crop_ratio=(3.0, 4.0)), 32, MEAN, STD)
    box = aug.sample(5, gen(), "cpu")["box"]
    torch.testing.assert_close(box, torch.tensor([[0.0, 1 / 3, 1.0, 1 / 3]]).expand(5, 4))


def test_crop_keeps_pixel_aspect_ratio_on_non_square_images():
    aug = A.ViewAugment(spec(crop_ratio=(0.9, 1.1)), 32, MEAN, STD)
    w, h = aug.sample(2000, gen(), "cpu", aspect=2.0)["box"][:, 2:].unbind(1)
    pixel_ratio = (w * 64) / (h * 32)  # a 32 x 64 (h x w) source
    assert pixel_ratio.min() >= 0.9 - 1e-4 and pixel_ratio.max() <= 1.1 + 1e-4


# ---- geometry against torchvision ----

def test_crop_resize_and_flip_match_torchvision_resized_crop():
    x = images().float() / 255
    box = torch.tensor([[4 / 32, 8 / 32, 16 / 32, 20 / 32]]).expand(8, 4)
    flip = torch.arange(8) % 2 == 0
    out = A.crop_resize_flip(x, box, flip, 32)
    expected = TF.resized_crop(x, top=8, left=4, height=20, width=16, size=[32, 32], antialias=False)
    expected = torch.where(flip.view(-1, 1, 1, 1), TF.horizontal_flip(expected), expected)
    # The outermost output pixels differ by design: torchvision clamps to the cut-out crop's edge pixels,
    # we interpolate with the real neighbours just outside the box.
    torch.testing.assert_close(out[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1], atol=1e-5, rtol=0)


def test_downscaled_crops_of_large_sources_are_area_averaged():
    x = images(side=64).float() / 255
    out = A.crop_resize_flip(x, torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand(8, 4), torch.zeros(8, dtype=torch.bool), 32)
    torch.testing.assert_close(out, torch.nn.functional.avg_pool2d(x, 2), atol=1e-5, rtol=0)


# ---- colour operations against torchvision ----

@pytest.mark.parametrize("op, reference, factor, atol", [
    (A.adjust_brightness, TF.adjust_brightness, 1.3, 1e-5),
    (A.adjust_brightness, TF.adjust_brightness, 0.6, 1e-5),
    (A.adjust_contrast, TF.adjust_contrast, 1.4, 1e-5),
    (A.adjust_contrast, TF.adjust_contrast, 0.5, 1e-5),
    (A.adjust_saturation, TF.adjust_saturation, 1.8, 1e-5),
    (A.adjust_saturation, TF.adjust_saturation, 0.2, 1e-5),
    (A.adjust_hue, TF.adjust_hue, 0.1, 1e-4),
    (A.adjust_hue, TF.adjust_hue, -0.45, 1e-4),
])
def test_colour_ops_match_torchvision(op, reference, factor, atol):
    x = images(4).float() / 255
    x[0, :, :4, :4] = 0.5  # gray pixels: hue undefined, must stay gray
    x[1, :, :4, :4] = 0.0  # black pixels: saturation undefined
    out = op(x, torch.full((4,), factor))
    torch.testing.assert_close(out, reference(x, factor), atol=atol, rtol=0)


def test_grayscale_solarize_and_blur_match_torchvision():
    x = images(4, side=40).float() / 255
    torch.testing.assert_close(A.grayscale(x), TF.rgb_to_grayscale(x), atol=1e-5, rtol=0)
    torch.testing.assert_close(A.solarize(x), TF.solarize(x, 0.5), atol=0, rtol=0)
    sigmas = (0.3, 1.0, 1.7, 2.5)
    out = A.gaussian_blur(x, torch.tensor(sigmas), radius=4)
    for i, sigma in enumerate(sigmas):
        torch.testing.assert_close(out[i], TF.gaussian_blur(x[i], [9, 9], [sigma, sigma]), atol=1e-5, rtol=0)


def test_jitter_applies_each_op_once_in_each_samples_own_order():
    aug = A.ViewAugment(spec(**{**IDENTITY, "jitter_p": 1.0, "jitter_random_order": True,
                                "jitter": (0.8, 0.8, 0.8, 0.2)}), 32, (0.0,) * 3, (1.0,) * 3)
    x = images(24)
    p = aug.sample(24, gen(), "cpu")
    out = aug.apply(x, p)
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for i in range(24):
        expected = x[i].float() / 255
        for op in p["order"][i].tolist():
            expected = ops[op](expected, p["factors"][i, op].item())
        torch.testing.assert_close(out[i], expected, atol=1e-4, rtol=0)


def test_fixed_order_is_brightness_contrast_saturation_hue():
    aug = A.ViewAugment(spec(**{**IDENTITY, "jitter_p": 1.0}), 32, MEAN, STD)
    assert (aug.sample(16, gen(), "cpu")["order"] == torch.arange(4)).all()


def test_only_flagged_samples_are_grayed_and_solarized():
    aug = A.ViewAugment(spec(**{**IDENTITY, "gray_p": 0.5, "solarize_p": (0.5, 0.5)}), 32, MEAN, STD)
    x = images(32)
    p = aug.sample(32, gen(), "cpu")
    expected = x.float() / 255
    expected = torch.where(p["gray"].view(-1, 1, 1, 1), TF.rgb_to_grayscale(expected, 3), expected)
    expected = torch.where(p["solarize"].view(-1, 1, 1, 1), TF.solarize(expected, 0.5), expected)
    torch.testing.assert_close(unnormalised(aug.apply(x, p)), expected, atol=1e-5, rtol=0)
    assert 0 < p["gray"].sum() < 32 and 0 < p["solarize"].sum() < 32


# ---- blur switch ----

def test_blur_is_off_below_min_blur_size_and_on_above_it():
    def views(side, blur_p):
        aug = A.ViewAugment(spec(blur_p=(blur_p, blur_p), min_blur_size=64), side, MEAN, STD)
        return aug(images(side=side), gen(7))
    assert torch.equal(views(32, 1.0), views(32, 0.0))
    assert not torch.allclose(views(96, 1.0), views(96, 0.0))


def test_blur_touches_only_flagged_samples_with_a_kernel_of_about_a_tenth_of_the_side():
    aug = A.ViewAugment(spec(blur_p=(0.5, 0.5)), 96, MEAN, STD)
    assert aug.blur_radius == 4  # 9 taps at 96 px (23 at 224)
    assert A.ViewAugment(spec(), 224, MEAN, STD).blur_radius == 11
    x = images(16, side=96)
    p = aug.sample(16, gen(), "cpu")
    blurred, sharp = aug.apply(x, p), aug.apply(x, {**p, "blur": torch.zeros(16, dtype=torch.bool)})
    changed = (blurred - sharp).flatten(1).abs().amax(1) > 0
    assert torch.equal(changed, p["blur"]) and p["blur"].any()


# ---- evaluation and probe views ----

def test_center_view_follows_resize_then_centre_crop():
    x = images(2, side=32)
    torch.testing.assert_close(A.center_view(x, 32, MEAN, STD), normalised(x))
    large = torch.randint(0, 256, (2, 3, 300, 400), dtype=torch.uint8, generator=gen())
    expected = TF.center_crop(TF.resize(large.float() / 255, 256, antialias=True), [224, 224])
    torch.testing.assert_close(unnormalised(A.center_view(large, 224, MEAN, STD)), expected, atol=1e-5, rtol=0)
    small = A.center_view(images(2, c=1, side=28), 32, MEAN, STD)
    assert small.shape == (2, 3, 32, 32)


def test_crop_flip_view_changes_geometry_only():
    aug = A.crop_flip_view((1.0, 1.0), 32, MEAN, STD)
    x = images(16)
    p = aug.sample(16, gen(), "cpu")
    expected = torch.where(p["flip"].view(-1, 1, 1, 1), normalised(x).flip(-1), normalised(x))
    torch.testing.assert_close(aug.apply(x, p), expected, atol=1e-5, rtol=0)


def test_unresolved_spec_is_rejected():
    with pytest.raises(ValueError, match="jitter_p"):
        A.ViewAugment(AugmentSpec(crop_scale=(0.2, 1.0)), 32, MEAN, STD)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_for_the_same_parameters():
    aug, x = A.ViewAugment(spec(), 96, MEAN, STD), images(16, side=96)
    g = torch.Generator(device="cuda").manual_seed(0)
    out = aug(x.cuda(), g)
    assert out.device.type == "cuda"
    p = aug.sample(16, torch.Generator(device="cuda").manual_seed(0), "cuda")
    torch.testing.assert_close(out, aug.apply(x.cuda(), p))
    cpu = aug.apply(x, {k: v.cpu() for k, v in p.items()})
    torch.testing.assert_close(out.cpu(), cpu, atol=1e-3, rtol=0)


# ---- the views themselves follow each method's recipe (statistics of a large batch) ----

METHODS = ("simclr", "mocov2", "byol", "simsiam")
N_VIEWS = 4096


def recipe(method: str, size: int) -> AugmentSpec:
    from contrastive_cli.spec import PretrainSpec, resolve_pretrain
    return resolve_pretrain(PretrainSpec.model_validate({"method": {"name": method}}), size, 10 ** 6).augment


def within_4_se(flags: torch.Tensor, p: float) -> bool:
    return abs(flags.float().mean().item() - p) <= 4 * math.sqrt(p * (1 - p) / len(flags)) + 1e-9


def ks_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    grid = torch.cat([a, b]).sort().values
    cdf = lambda x: torch.searchsorted(x.sort().values, grid, right=True) / len(x)
    return (cdf(a) - cdf(b)).abs().max().item()


def ks_critical(n: int, m: int) -> float:
    return 1.95 * math.sqrt((n + m) / (n * m))  # alpha = 0.001


@pytest.mark.parametrize("method", METHODS)
def test_view_crops_and_flips_follow_the_recipe(method):
    """Views of coordinate ramps (x in channel 0, y in channel 1) reveal each view's crop box and flip."""
    side = 32
    s = recipe(method, side).model_copy(update={"jitter_p": 0.0, "gray_p": 0.0, "solarize_p": (0.0, 0.0)})
    centres = (torch.arange(side) + 0.5) / side  # pixel centres in relative coordinates: interpolation is exact
    ramps = torch.stack([centres.expand(side, side), centres[:, None].expand(side, side), torch.zeros(side, side)])
    views = A.ViewAugment(s, side, (0.0,) * 3, (1.0,) * 3)(ramps.expand(N_VIEWS, 3, side, side), gen())
    x, y = views[:, 0].mean(1), views[:, 1].mean(2)  # x along each row, y down each column
    inner = side / (side - 5)  # pixels 2 and side-3: clear of the border clamp for every allowed box
    width, height = (x[:, -3] - x[:, 2]).abs() * inner, (y[:, -3] - y[:, 2]) * inner
    area, ratio = width * height, width / height
    (lo, hi), (rlo, rhi) = s.crop_scale, s.crop_ratio
    assert area.min() >= lo - 0.005 and area.max() <= hi + 0.005 and area.min() < lo + 0.02 and area.max() > hi - 0.05
    assert ratio.min() >= rlo - 0.01 and ratio.max() <= rhi + 0.01
    torch.manual_seed(0)  # torchvision's own sampler, on a large image so that pixel rounding does not matter
    big = torch.zeros(1, 1024, 1024)
    reference = torch.tensor([T.RandomResizedCrop.get_params(big, list(s.crop_scale), list(s.crop_ratio))[2:]
                              for _ in range(2000)]).prod(1) / 1024 ** 2
    assert ks_distance(area, reference) < ks_critical(len(area), len(reference))
    assert within_4_se(x[:, -3] < x[:, 2], s.flip_p)


@pytest.mark.parametrize("method", METHODS)
def test_view_jitter_rate_and_brightness_factors_follow_the_recipe(method):
    """On a constant gray image every colour op but brightness is the identity, so each view shows its factor."""
    side, level = 8, 0.25  # 0.25 x the largest factor stays below the solarize threshold
    s = recipe(method, 32)
    for view in (0, 1):
        out = A.ViewAugment(s, side, (0.0,) * 3, (1.0,) * 3, view)(torch.full((N_VIEWS, 1, side, side), level), gen(view))
        factor = out[:, 0].mean((1, 2)) / level
        jittered = (factor - 1).abs() > 1e-5
        assert within_4_se(jittered, s.jitter_p)
        b = s.jitter[0]
        factors = factor[jittered]
        assert factors.min() >= 1 - b - 1e-5 and factors.max() <= 1 + b + 1e-5
        uniform = torch.linspace(1 - b, 1 + b, 2001)
        assert ks_distance(factors, uniform) < ks_critical(len(factors), len(uniform))


@pytest.mark.parametrize("method", METHODS)
def test_view_gray_and_solarize_rates_follow_the_recipe(method):
    s, side = recipe(method, 32), 8
    for view in (0, 1):
        # Unequal channels stay unequal under every op but grayscale (no recipe's jitter zeroes the saturation,
        # and no channel solarizes onto another's value).
        colour = torch.tensor([0.9, 0.15, 0.35]).view(1, 3, 1, 1).expand(N_VIEWS, 3, side, side)
        out = A.ViewAugment(s, side, (0.0,) * 3, (1.0,) * 3, view)(colour, gen(view))
        assert within_4_se((out[:, 0] - out[:, 1]).abs().amax((1, 2)) < 1e-5, s.gray_p)
        plain = s.model_copy(update={"jitter_p": 0.0})
        out = A.ViewAugment(plain, side, (0.0,) * 3, (1.0,) * 3, view)(torch.full((N_VIEWS, 1, side, side), 0.75), gen(view))
        assert within_4_se((out[:, 0].mean((1, 2)) - 0.25).abs() < 1e-5, s.solarize_p[view])

"""Context Encoders (Pathak et al. 2016) as the paper describes them: a region of the image is set to the data mean,
the encoder's feature map goes through a channel-wise fully-connected bottleneck and a decoder, the loss is L2 on the
hidden pixels only, optionally joined with an adversarial loss, and the representation is the plain backbone."""

import pytest
import torch

from conftest import resolved_method
from contrastive_cli.errors import SpecError
from contrastive_cli.methods.base import build_method
from contrastive_cli.methods.fields import DataFacts
from contrastive_cli.methods.inpainting import ChannelwiseFC, block_masks, central_mask, hide, masked_l2
from contrastive_cli.models import SmallCNN
from contrastive_cli.spec import PretrainSpec, resolve_pretrain


def inpainting(image_size=28, **method):
    spec = resolved_method("inpainting", image_size, **method)
    torch.manual_seed(0)
    return build_method(spec, DataFacts(1000, 1, (0.5,) * 3, (0.25,) * 3)), spec


# ---- masks -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size, start, side", [(28, 7, 14), (32, 8, 16)])
def test_the_central_mask_is_exactly_the_centre_square_a_quarter_of_the_image(size, start, side):
    mask = central_mask(3, size)
    expected = torch.zeros(size, size)
    expected[start:start + side, start:start + side] = 1
    assert mask.shape == (3, 1, size, size) and torch.equal(mask[1, 0], expected)
    assert mask[0].sum() == size * size / 4


@pytest.mark.parametrize("size", [28, 32, 64])
def test_random_blocks_cover_between_one_block_and_a_quarter_of_the_image_differently_per_image(size):
    torch.manual_seed(0)
    mask = block_masks(500, size)
    cover = mask.mean(dim=(1, 2, 3))
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert cover.min() >= (size // 6) ** 2 / size ** 2 and cover.max() <= 0.25
    assert cover.std() > 0.01 and len(torch.unique(mask.flatten(1), dim=0)) == 500  # each image its own
    assert cover.mean() > 0.1  # typically several blocks, not one


def test_masks_come_from_the_global_generator_that_checkpoints_save():
    torch.manual_seed(1)
    a = block_masks(4, 28)
    torch.manual_seed(1)
    assert torch.equal(a, block_masks(4, 28))


def test_the_method_draws_the_mask_it_is_asked_for():
    method, _ = inpainting(inpaint_mask="central")
    assert torch.equal(method.masks(torch.zeros(2, 3, 28, 28)), central_mask(2, 28))


# ---- what the encoder sees and what the loss counts --------------------------------------------------------------


def test_the_masked_input_carries_nothing_of_the_hidden_pixels():
    torch.manual_seed(0)
    x, mask = torch.randn(4, 3, 28, 28), block_masks(4, 28)
    other = x + 5 * torch.randn_like(x) * mask  # the same images but for the hidden pixels
    assert torch.equal(hide(x, mask), hide(other, mask))
    assert (hide(x, mask) * mask).abs().sum() == 0  # hidden pixels at the mean: 0 after normalisation
    assert torch.equal(hide(x, mask) * (1 - mask), x * (1 - mask))  # the context is untouched


def test_the_loss_is_l2_on_the_hidden_pixels_only():
    torch.manual_seed(0)
    x, mask = torch.randn(2, 3, 28, 28), central_mask(2, 28)
    prediction = torch.randn_like(x)
    loss = masked_l2(prediction, x, mask)
    changed = prediction + 100 * torch.randn_like(x) * (1 - mask)  # only the visible pixels differ
    assert torch.equal(masked_l2(changed, x, mask), loss)
    hidden = mask.expand_as(x).bool()
    assert torch.allclose(loss, (prediction - x)[hidden].pow(2).mean())


def test_the_decoder_predicts_the_whole_view_from_the_feature_map():
    method, _ = inpainting(image_size=28)
    assert method.inpaint(torch.randn(2, 3, 28, 28)).shape == (2, 3, 28, 28)
    out = method([torch.randn(4, 3, 28, 28)])
    assert set(out) == {"loss", "reconstruction"} and torch.isfinite(out["loss"])


def test_the_channelwise_layer_connects_positions_within_a_channel_only():
    layer = ChannelwiseFC(channels=8, side=3, out_channels=4)
    assert layer.weight.shape == (8, 9, 9)  # C x (hw)^2, not (C hw)^2
    f = torch.randn(2, 8, 3, 3)
    g = f.clone()
    g[:, 5] += torch.randn(2, 3, 3)
    y = lambda t: torch.einsum("bcp,cpq->bcq", t.flatten(2), layer.weight)
    changed = (y(f) - y(g)).abs().sum(dim=(0, 2))
    assert changed[5] > 0 and changed[torch.arange(8) != 5].sum() == 0
    assert layer(f).shape == (2, 4, 3, 3)  # the 1x1 conv mixes channels into the decoder's width


# ---- the adversarial term ----------------------------------------------------------------------------------------


def test_adversarial_is_off_by_default_and_has_no_discriminator():
    method, _ = inpainting()
    assert not hasattr(method, "discriminator")


def grads(module):
    return [p.grad for p in module.parameters()]


def test_each_side_of_the_adversarial_loss_trains_only_its_own_network():
    method, _ = inpainting(adversarial_weight=0.5)
    x, mask = torch.randn(4, 3, 28, 28), central_mask(4, 28)
    completed = hide(x, mask) + method.inpaint(hide(x, mask)) * mask
    critic, fooling = method.adversarial_losses(x, completed)
    fooling.backward(retain_graph=True)  # the generator's term: the discriminator gets no gradient
    assert all(g is None for g in grads(method.discriminator))
    assert any(g is not None and g.abs().sum() > 0 for g in grads(method.backbone))
    method.zero_grad(set_to_none=True)
    critic.backward()  # the discriminator's term: the encoder and decoder get none
    assert all(g is None for g in grads(method.backbone) + grads(method.decoder))
    assert all(g is not None and g.abs().sum() > 0 for g in grads(method.discriminator))


def test_the_joint_loss_weighs_reconstruction_and_adversarial_as_the_paper():
    method, _ = inpainting(adversarial_weight=0.001)
    out = method([torch.randn(4, 3, 28, 28)])
    expected = 0.999 * out["reconstruction"] + 0.001 * out["adversarial_loss"] + out["discriminator_loss"]
    assert torch.allclose(out["loss"], expected)
    out["loss"].backward()
    assert all(p.grad is not None for p in method.parameters())


# ---- spec ----------------------------------------------------------------------------------------------------------


def test_the_exported_encoder_is_the_plain_backbone_on_the_whole_image():
    method, _ = inpainting()
    assert isinstance(method.exported_encoder(), SmallCNN)
    assert method.exported_encoder()(torch.randn(2, 3, 28, 28)).shape == (2, method.feature_dim)


def test_a_vit_backbone_is_refused_with_the_conv_backbones_named():
    spec = PretrainSpec.model_validate({"method": {"name": "inpainting"}, "optim": {"batch_size": 8},
                                        "backbone": {"name": "vit_tiny", "depth": 1, "patch_size": 8}})
    with pytest.raises(SpecError, match="small_cnn"):
        resolve_pretrain(spec, 32, 100)


def test_the_recipe_is_adamw_with_crops_and_no_colour_augmentation():
    spec = resolved_method("inpainting", 28)
    assert spec.optim.optimizer == "adamw" and spec.method.inpaint_mask == "blocks"
    a = spec.augment
    assert a.jitter_p == 0 and a.gray_p == 0 and a.blur_p == (0, 0) and a.solarize_p == (0, 0)
    assert type(spec.method).pretext and not type(spec.method).vit_backbone

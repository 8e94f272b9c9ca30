"""Vision Transformer backbones: torchvision's VisionTransformer at the DeiT/DINO sizes with small patches for small
images, the CLS token as the feature, fixed sine-cosine or learned position embeddings, interpolated when evaluated at
another image size; every command takes them (exports: tests/test_export.py; the method contract:
tests/test_method_contract.py)."""

import json

import pytest
import torch
from typer.testing import CliRunner

from contrastive_cli.cli import app
from contrastive_cli.errors import SpecError
from contrastive_cli.models import ViT, build_backbone, sincos_position_embedding
from contrastive_cli.spec import PretrainSpec, default_patch_size, resolve_pretrain

runner = CliRunner()
VIT = ["--backbone", "vit_tiny", "--depth", "1", "--patch-size", "8", "--subset", "64", "--batch-size", "32",
       "--epochs", "1", "--monitor-images", "64"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def resolved(**sections):
    spec = PretrainSpec.model_validate({"backbone": {"name": "vit_tiny"}, **sections})
    return resolve_pretrain(spec, image_size=sections.get("data", {}).get("image_size", 32), n_images=1000)


@pytest.mark.parametrize("name,width,heads", [("vit_tiny", 192, 3), ("vit_small", 384, 6), ("vit_base", 768, 12)])
def test_the_named_sizes_are_deit_widths_with_twelve_blocks_and_the_cls_token_as_feature(name, width, heads):
    net, dim = build_backbone(name, image_size=32, patch_size=8)
    assert dim == width and len(net.encoder.layers) == 12
    assert net.encoder.layers[0].self_attention.num_heads == heads
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, width)


@pytest.mark.parametrize("side,patch", [(28, 4), (32, 4), (64, 16), (96, 16), (224, 16)])
def test_default_patch_gives_small_images_a_grid_near_8x8_and_large_ones_16px_patches(side, patch):
    assert default_patch_size(side) == patch


def test_position_embeddings_are_interpolated_for_another_image_size():
    torch.manual_seed(0)
    net = ViT(32, 8, 192, 3, 1).eval()
    assert torch.equal(net.position_embedding(4, 4), net.encoder.pos_embedding)  # the training grid: unchanged
    wider = net.position_embedding(6, 6)
    assert wider.shape == (1, 37, 192) and torch.equal(wider[:, 0], net.encoder.pos_embedding[:, 0])  # CLS kept
    assert net(torch.randn(2, 3, 48, 48)).shape == (2, 192)


def test_sincos_embedding_is_fixed_and_encodes_column_then_row():
    pos = sincos_position_embedding(4, 192)[0, 1:].view(4, 4, 192)  # [row, col, channel]
    assert torch.equal(pos[0, :, :96], pos[3, :, :96])  # the first half depends on the column only
    assert torch.equal(pos[:, 0, 96:], pos[:, 3, 96:])  # the second half on the row only
    assert not torch.equal(pos[0, 0], pos[0, 1]) and not torch.equal(pos[0, 0], pos[1, 0])
    net = ViT(32, 8, 192, 3, 1, pos_embed="sincos")
    assert not net.encoder.pos_embedding.requires_grad
    torch.testing.assert_close(net.encoder.pos_embedding, sincos_position_embedding(4, 192))


def test_the_vit_geometry_is_checked_with_the_flag_to_change():
    with pytest.raises(SpecError) as err:
        resolved(backbone={"name": "vit_tiny", "patch_size": 5})
    assert "--patch-size" in str(err.value) and "32 px is not a multiple" in str(err.value)
    with pytest.raises(SpecError) as err:
        resolve_pretrain(PretrainSpec.model_validate({"backbone": {"name": "resnet18", "depth": 6}}), 32, 1000)
    assert "backbone.depth (--depth)" in str(err.value) and "vit_*" in str(err.value)
    with pytest.raises(SpecError) as err:
        resolved(method={"name": "cmc"})
    assert "cmc builds a convolutional encoder" in str(err.value)


def test_defaults_resolve_to_a_full_depth_model_with_learned_positions():
    b = resolved(method={"name": "simclr"}).backbone
    assert (b.patch_size, b.depth, b.pos_embed) == (4, 12, "learned")


def test_every_command_takes_a_vit_checkpoint(tmp_path):
    run = tmp_path / "run"
    result = invoke("pretrain", *VIT, "--method", "byol", "--out", run)
    assert result.exit_code == 0, result.output
    for command in (["knn-eval", run, "--test-subset", "100"],
                    ["knn-eval", run, "--test-subset", "100", "--image-size", "48"],  # interpolated positions
                    ["linear-probe", run, "--epochs", "1", "--cached", "--test-subset", "100"],
                    ["transfer", run, "--shots", "2", "--epochs", "1", "--test-subset", "100"],
                    ["inspect-collapse", run, "--images", "64"]):
        result = invoke(*command, "--json")
        assert result.exit_code == 0, (command, result.output)
        assert json.loads(result.output.strip().splitlines()[-1])

"""The practitioner's backbones and starting points: `--backbone timm:NAME` trains any timm model (its pooled feature,
num_classes=0) and every command takes its checkpoint; `export` writes weights that load strictly into
timm.create_model; `--init` starts the backbone from a safetensors file or from torchvision's / timm's cached
pretrained weights, never downloading and never unpickling a user's file, once: a resumed run keeps its own."""

import hashlib
import json
import sys
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from contrastive_cli import checkpoint as ckpt
from contrastive_cli.augment import center_view
from contrastive_cli.cli import app
from contrastive_cli.errors import SpecError, UserError
from contrastive_cli.evaluate import load_encoder
from contrastive_cli.models import build_backbone, split_batchnorm
from contrastive_cli.spec import PretrainSpec, resolve_pretrain
from contrastive_cli.train import prepare, train
from cli_output import fails_cleanly

runner = CliRunner()
ATOL = 1e-5
TINY = ["--subset", "32", "--batch-size", "16", "--epochs", "1", "--monitor-images", "0", "--device", "cpu"]
RESNET = ["--backbone", "timm:resnet10t", "--method", "simclr"]
VIT = ["--backbone", "timm:vit_tiny_patch16_224", "--depth", "1", "--method", "mocov3",  # one block, 4 px patches
       "--proj-hidden-dim", "256", "--pred-hidden-dim", "256"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])



def spec(tmp_path: Path, backbone: dict, method: str = "simclr") -> PretrainSpec:
    """A two-step run of `backbone` on 32 synthetic images (32 px)."""
    return PretrainSpec.model_validate({
        "method": {"name": method}, "backbone": backbone, "data": {"subset": 32},
        "optim": {"batch_size": 16, "epochs": 1}, "monitor": {"images": 0},
        "runtime": {"out": str(tmp_path / "run"), "device": "cpu"}})


def same_features(a: torch.nn.Module, b: torch.nn.Module, size: int = 32) -> None:
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x), b.eval()(x), atol=ATOL, rtol=0)


def with_statistics(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Batch-norm statistics that are not the defaults, so a load that skipped the buffers would show."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    return model


# ---- --backbone timm:NAME -------------------------------------------------------------------------


@pytest.mark.parametrize("flags", [RESNET, VIT], ids=["resnet10t", "vit_tiny"])
def test_a_timm_model_pretrains_evaluates_and_exports_weights_that_load_strictly_into_timm(flags, tmp_path):
    run = tmp_path / "run"
    result = invoke("pretrain", *flags, *TINY, "--out", run)
    assert result.exit_code == 0, result.output
    knn = invoke("knn-eval", run, "--subset", "64", "--test-subset", "50", "--json")
    assert knn.exit_code == 0, knn.output
    report = json.loads(knn.output.strip().splitlines()[-1])
    name = flags[1].removeprefix("timm:")
    assert report["feature_dim"] == timm.create_model(name, num_classes=0, **({"depth": 1} if "vit" in name else {})
                                                      ).num_features
    exported = invoke("export", run, "--json")
    assert exported.exit_code == 0, exported.output
    with safe_open(str(run / "checkpoint.backbone.safetensors"), "pt") as f:
        info = json.loads(f.metadata()["timm"])
    assert info["model"] == name and info["kwargs"]["num_classes"] == 0
    model = timm.create_model(info["model"], **info["kwargs"])  # timm alone, with what the file says
    model.load_state_dict(load_file(run / "checkpoint.backbone.safetensors"), strict=True)
    encoder, meta = load_encoder(run, torch.device("cpu"))
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    x = center_view(images, 32, meta["normalize"]["mean"], meta["normalize"]["std"])
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), encoder(x), atol=ATOL, rtol=0)


def test_a_timm_vit_is_a_vit_small_patches_on_small_views_its_own_positions_and_the_transformer_recipe():
    s = resolve_pretrain(PretrainSpec.model_validate({"method": {"name": "mocov3"}, "backbone": {
        "name": "timm:vit_tiny_patch16_224", "depth": 1}}), image_size=32, n_images=1000)
    assert s.backbone.is_vit and s.backbone.patch_size == 4 and s.backbone.pos_embed is None  # not MoCo v3's sincos
    assert s.method.freeze_patch_embed and s.optim.optimizer == "adamw"
    large = resolve_pretrain(PretrainSpec.model_validate({"method": {"name": "simclr"}, "backbone": {
        "name": "timm:vit_small_patch14_dinov2"}}), image_size=224, n_images=1000)
    assert large.backbone.patch_size == 14 and large.backbone.depth is None  # its own, from 64 px up
    assert not PretrainSpec.model_validate({"backbone": {"name": "timm:resnet10t"}}).backbone.is_vit


def test_timm_names_are_checked_with_close_names_and_options_it_cannot_take_are_refused(tmp_path):
    fails_cleanly(invoke("pretrain", "--backbone", "timm:vit_tiny_patch16", "--print-spec"),
                  "timm has no model 'vit_tiny_patch16'", "vit_tiny_patch16_224")
    fails_cleanly(invoke("pretrain", "--backbone", "timm:", "--print-spec"), "needs a model name")
    with pytest.raises(SpecError) as err:
        resolve_pretrain(spec(tmp_path, {"name": "timm:vit_tiny_patch16_224", "pos_embed": "sincos"}), 32, 1000)
    assert "backbone.pos_embed (--pos-embed)" in str(err.value)
    with pytest.raises(SpecError) as err:
        resolve_pretrain(spec(tmp_path, {"name": "timm:resnet10t"}, method="cmc"), 32, 1000)
    assert "cmc builds a convolutional encoder of its own and cannot use a timm model" in str(err.value)


def test_mocos_split_batch_norm_keeps_timms_norm_and_activation_layers_whole():
    net = timm.create_model("test_efficientnet", num_classes=0).eval()  # BatchNormAct2d: BN, then its activation
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = net(x)
        torch.testing.assert_close(split_batchnorm(net, 8)(x), before)


def test_sync_batch_norm_refuses_timms_norm_and_activation_layers_rather_than_drop_the_activation():
    from contrastive_cli.distributed import sync_batch_norm
    net = timm.create_model("efficientnet_b0", pretrained=False, num_classes=0)
    with pytest.raises(UserError, match="BatchNormAct2d.*--no-sync-bn"):
        sync_batch_norm(net, torch.device("cpu"))
    resnet = timm.create_model("resnet10t", pretrained=False, num_classes=0)  # plain BatchNorm2d: converted
    assert sync_batch_norm(resnet, torch.device("cpu")) is resnet


def test_a_missing_timm_names_the_extra_to_install(monkeypatch, tmp_path):
    checkpoint = prepare(spec(tmp_path, {"name": "timm:resnet10t"})).save()
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` raise ImportError
    fails_cleanly(invoke("pretrain", "--backbone", "timm:resnet10t", *TINY, "--out", tmp_path / "new"),
                  "'timm'", "pip install 'contrastive[timm]'")
    assert not (tmp_path / "new").exists()
    fails_cleanly(invoke("knn-eval", checkpoint), "pip install 'contrastive[timm]'")  # rebuilding its encoder


# ---- --init ---------------------------------------------------------------------------------------


def test_init_path_loads_a_timm_state_dict_into_the_backbone_and_its_momentum_copy_before_any_step(tmp_path):
    source = with_statistics(timm.create_model("resnet10t"))  # with its classifier fc.*, which is dropped
    weights = tmp_path / "r10t.safetensors"
    save_file(source.state_dict(), weights)
    s = spec(tmp_path, {"name": "timm:resnet10t", "init": str(weights)}, method="mocov2")
    run = prepare(s.model_copy(update={"method": s.method.model_copy(update={"queue_size": 32})}))
    source.reset_classifier(0)
    same_features(run.method.backbone, source)
    same_features(run.method.momentum_backbone, source)  # the key encoder starts from them too
    meta = ckpt.read_meta(run.save())
    assert meta["spec"]["backbone"]["init"] == str(weights)
    assert meta["init"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()


def test_init_path_takes_a_torchvision_state_dict(tmp_path):
    source = with_statistics(torchvision.models.resnet18())
    save_file(source.state_dict(), tmp_path / "tv.safetensors")
    run = prepare(spec(tmp_path, {"name": "resnet18", "init": str(tmp_path / "tv.safetensors")}))
    source.fc = torch.nn.Identity()
    same_features(run.method.backbone, source)


def test_init_from_224px_timm_vit_weights_resamples_positions_and_patches_to_the_small_views(tmp_path):
    source = timm.create_model("vit_tiny_patch16_224", depth=1)  # 16 px patches, 14x14 grid, a head
    save_file(source.state_dict(), tmp_path / "vit.safetensors")
    run = prepare(spec(tmp_path, {"name": "timm:vit_tiny_patch16_224", "depth": 1,
                                  "init": str(tmp_path / "vit.safetensors")}))
    vit = run.method.backbone
    assert vit.patch_embed.proj.weight.shape[-1] == 4 and vit.pos_embed.shape[1] == 1 + 8 * 8
    assert torch.equal(vit.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)


def test_init_weights_of_another_architecture_are_refused_naming_keys(tmp_path):
    save_file(torchvision.models.resnet18().state_dict(), tmp_path / "r18.safetensors")
    with pytest.raises(UserError, match=r"does not fit the backbone: \d+ keys missing \(conv1\.0\.weight"):
        prepare(spec(tmp_path, {"name": "timm:resnet10t", "init": str(tmp_path / "r18.safetensors")}))
    assert not (tmp_path / "run").exists()


def test_pickled_init_files_are_refused_with_the_conversion_and_other_files_must_be_safetensors(tmp_path):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "w.pt")
    run = ["pretrain", "--method", "simclr", *TINY, "--out", tmp_path / "run"]
    fails_cleanly(invoke(*run, "--init", tmp_path / "w.pt"), "pickled", "st.save_file(torch.load(", "weights_only=True")
    (tmp_path / "w.safetensors").write_bytes((tmp_path / "w.pt").read_bytes())  # a pickle by another name
    fails_cleanly(invoke(*run, "--init", tmp_path / "w.safetensors"), "is not a readable safetensors file")
    assert not (tmp_path / "run").exists()


def test_init_torchvision_reads_only_the_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"  # ResNet18_Weights.IMAGENET1K_V1
    with pytest.raises(UserError, match="not in the local cache") as err:
        prepare(spec(tmp_path, {"name": "resnet18", "init": "torchvision"}))
    assert str(cached) in str(err.value) and "--init PATH" in str(err.value)
    source = with_statistics(torchvision.models.resnet18())
    cached.parent.mkdir(parents=True)
    torch.save({k: v for k, v in source.state_dict().items() if "num_batches_tracked" not in k}, cached)  # as 2017's
    run = prepare(spec(tmp_path, {"name": "resnet18", "init": "torchvision"}))
    source.fc = torch.nn.Identity()
    same_features(run.method.backbone, source)
    assert run.init["weights"] == "ResNet18_Weights.IMAGENET1K_V1" and run.init["file"] == str(cached)


def test_init_timm_reads_only_the_hugging_face_and_torch_hub_caches(tmp_path, monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(UserError, match="not in the local cache") as err:
        prepare(spec(tmp_path, {"name": "timm:resnet10t", "init": "timm"}))
    assert str(tmp_path / "hf") in str(err.value) and "--init PATH" in str(err.value)
    repo = tmp_path / "hf" / "models--timm--resnet10t.c3_in1k"  # what timm.create_model(pretrained=True) leaves
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    source = with_statistics(timm.create_model("resnet10t"))
    save_file(source.state_dict(), repo / "snapshots" / "0123abcd" / "model.safetensors")
    run = prepare(spec(tmp_path, {"name": "timm:resnet10t", "init": "timm"}))
    source.reset_classifier(0)
    same_features(run.method.backbone, source)
    assert run.init["weights"] == "timm/resnet10t.c3_in1k"


def test_a_resumed_run_keeps_its_own_weights_and_the_record_of_its_init(tmp_path):
    net, _ = build_backbone("small_cnn")
    weights = tmp_path / "cnn.safetensors"
    save_file(with_statistics(net).state_dict(), weights)
    run = prepare(spec(tmp_path, {"name": "small_cnn", "init": str(weights)}))
    train(run)
    record = ckpt.read_meta(run.checkpoint_path)["init"]
    weights.unlink()  # not read again: the checkpoint's weights win
    given = PretrainSpec.model_validate({"optim": {"epochs": 2}})
    resumed = prepare(given, resume=run.dir)
    saved = ckpt.strip(ckpt.load(run.checkpoint_path)[0], "backbone.")
    assert all(torch.equal(v, saved[k]) for k, v in resumed.method.backbone.state_dict().items())
    assert not torch.equal(saved["features.0.0.weight"], net.state_dict()["features.0.0.weight"])  # it trained
    train(resumed)
    assert ckpt.read_meta(resumed.checkpoint_path)["init"] == record

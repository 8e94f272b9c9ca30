"""`contrastive export`: every artefact, loaded the way a user would load it, computes what the checkpoint's
encoder computes (to 1e-5), and says in its metadata how to feed it and where it came from."""

import csv
import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

from contrastive_cli import checkpoint as ckpt, synthetic
from contrastive_cli.augment import center_view
from contrastive_cli.cli import app
from contrastive_cli.data import open_dataset
from contrastive_cli.evaluate import extract, features, load_encoder
from contrastive_cli.models import build_backbone
from contrastive_cli.spec import PretrainSpec
from contrastive_cli.train import prepare
from cli_output import fails_cleanly

runner = CliRunner()
ATOL = 1e-5


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def exported(*args) -> dict:
    result = invoke("export", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)



def make_checkpoint(folder: Path, method: dict, backbone) -> Path:
    """A real pretraining checkpoint (written by Run.save) whose BN statistics are not the identity, so an
    artefact that ran batch norm in training mode, or dropped the buffers, would not match."""
    backbone = {"name": backbone} if isinstance(backbone, str) else backbone
    spec = PretrainSpec.model_validate({"method": method, "backbone": backbone,
                                        "data": {"subset": 64}, "optim": {"batch_size": 32, "epochs": 1},
                                        "runtime": {"out": str(folder), "device": "cpu"}})
    run = prepare(spec)
    torch.manual_seed(1)
    for module in run.method.backbone.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.1)
    return run.save()


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("export") / "small", {"name": "simclr"}, "small_cnn")


@pytest.fixture(scope="module")
def r18(tmp_path_factory) -> Path:  # MoCo v2: its ShuffleBN backbone must still export plain torchvision keys
    return make_checkpoint(tmp_path_factory.mktemp("export") / "r18", {"name": "mocov2", "queue_size": 64}, "resnet18")


@pytest.fixture(scope="module")
def vit(tmp_path_factory) -> Path:  # DINO's family: a two-block ViT-tiny with 8 px patches on the 32 px synthetic data
    return make_checkpoint(tmp_path_factory.mktemp("export") / "vit", {"name": "simclr"},
                           {"name": "vit_tiny", "depth": 2, "patch_size": 8})


def encoder_and_input(checkpoint: Path, batch: int = 3, size=None):
    """The checkpoint's encoder, and a normalised input batch of the size the artefact documents."""
    backbone, meta = load_encoder(checkpoint, torch.device("cpu"))
    size = size or meta["image_size"]
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return backbone, center_view(images, size, meta["normalize"]["mean"], meta["normalize"]["std"]), meta


def check_metadata(info: dict, checkpoint: Path, kind: str) -> None:
    meta = ckpt.read_meta(checkpoint)
    assert info["format"] == "contrastive-export" and info["kind"] == kind
    assert info["image_size"] == meta["image_size"] and info["normalize"] == meta["normalize"]
    assert info["backbone"] == meta["backbone"] and info["feature_dim"] == meta["feature_dim"]
    assert info["source"]["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert info["source"]["method"] == meta["method"] and info["source"]["data"] == meta["data"]
    assert f"[N, 3, {meta['image_size']}, {meta['image_size']}]" in info["input"]


def decoded(metadata: dict[str, str]) -> dict:
    out = {}
    for k, v in metadata.items():
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def test_export_is_a_listed_command():
    assert "export" in invoke("--help").output


# ---- the backbone -----------------------------------------------------------------------------------


def test_safetensors_backbone_loads_strictly_into_plain_torchvision_resnet18(r18):
    report = exported(r18)
    path = r18.with_name("checkpoint.backbone.safetensors")
    assert report["out"] == str(path) and report["format"] == "safetensors"
    model = torchvision.models.resnet18()
    model.fc = torch.nn.Identity()
    model.load_state_dict(load_file(path), strict=True)
    backbone, x, _ = encoder_and_input(r18)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), backbone(x), atol=ATOL, rtol=0)
    with safe_open(str(path), "pt") as f:
        check_metadata(decoded(f.metadata()), r18, "backbone")


def test_vit_safetensors_loads_strictly_into_torchvision_vision_transformer_with_the_same_arguments(vit):
    exported(vit)
    kwargs = ckpt.read_meta(vit)["backbone"]["kwargs"]  # image_size 32, patch_size 8, depth 2, pos_embed learned
    model = torchvision.models.VisionTransformer(kwargs["image_size"], kwargs["patch_size"], num_layers=kwargs["depth"],
                                                 num_heads=3, hidden_dim=192, mlp_dim=768)  # ViT-tiny
    model.heads = torch.nn.Identity()  # the CLS token is the feature
    model.load_state_dict(load_file(vit.with_name("checkpoint.backbone.safetensors")), strict=True)
    backbone, x, _ = encoder_and_input(vit)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), backbone(x), atol=ATOL, rtol=0)


def test_small_cnn_safetensors_loads_strictly_into_build_backbone(small, tmp_path):
    exported(small, "--out", tmp_path / "weights.safetensors")
    model, _ = build_backbone("small_cnn")
    model.load_state_dict(load_file(tmp_path / "weights.safetensors"), strict=True)
    backbone, x, _ = encoder_and_input(small)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), backbone(x), atol=ATOL, rtol=0)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
@pytest.mark.parametrize("which", ["small", "r18", "vit"])
def test_torchscript_runs_without_contrastive_at_any_batch_and_image_size(which, request, tmp_path):
    checkpoint = request.getfixturevalue(which)
    exported(checkpoint, "--format", "torchscript", "--out", tmp_path / "model.pt")
    extra = {"contrastive.json": ""}
    program = torch.jit.load(str(tmp_path / "model.pt"), _extra_files=extra)
    assert not program.training
    check_metadata(json.loads(extra["contrastive.json"]), checkpoint, "backbone")
    for batch, size in ((1, None), (5, 48)):  # scripted, not traced: nothing was baked in
        backbone, x, _ = encoder_and_input(checkpoint, batch, size)
        with torch.no_grad():
            torch.testing.assert_close(program(x), backbone(x), atol=ATOL, rtol=0)


@pytest.mark.parametrize("which", ["small", "r18", "vit"])
def test_onnx_runs_in_onnxruntime_with_a_dynamic_batch_axis(which, request):
    import onnxruntime as ort  # the test extra installs it (and the onnx extra)
    checkpoint = request.getfixturevalue(which)
    report = exported(checkpoint, "--format", "onnx")
    assert report["out"] == str(checkpoint.with_name("checkpoint.onnx")) and report["opset"] >= 17
    session = ort.InferenceSession(report["out"], providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    size = report["image_size"]
    assert inp.name == "images" and inp.shape[1:] == [3, size, size] and isinstance(inp.shape[0], str)
    assert out.name == "features" and out.shape[1] == report["feature_dim"]
    for batch in (1, 5):
        backbone, x, _ = encoder_and_input(checkpoint, batch)
        (features,) = session.run(None, {"images": x.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(features), backbone(x), atol=ATOL, rtol=0)
    check_metadata(decoded(session.get_modelmeta().custom_metadata_map), checkpoint, "backbone")


def test_a_missing_onnx_package_names_the_extra_to_install(small, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # makes `import onnxscript` raise ImportError
    fails_cleanly(invoke("export", small, "--format", "onnx", "--out", tmp_path / "m.onnx"),
                  "onnxscript", "pip install 'contrastive[onnx]'")
    assert list(tmp_path.iterdir()) == []


# ---- embeddings ---------------------------------------------------------------------------------------


def test_embeddings_are_the_encoder_features_with_labels_classes_and_split_positions(small):
    report = exported(small, "--embeddings", "--split", "test", "--subset", 50)
    path = small.with_name("checkpoint.embeddings.test.safetensors")
    assert report["out"] == str(path) and report["images"] == 50 and report["labels"] and not report["files"]
    tensors = load_file(path)
    with safe_open(str(path), "pt") as f:
        info = decoded(f.metadata())
    check_metadata(info, small, "embeddings")
    assert info["classes"] == list(synthetic.CLASSES) and info["data"]["split"] == "test"
    whole = open_dataset("synthetic", "test")
    index = tensors["indices"]
    assert len(index.unique()) == 50 and torch.equal(tensors["labels"], whole.labels[index])
    backbone, meta = load_encoder(small, torch.device("cpu"))
    subset = open_dataset("synthetic", "test", subset=50, seed=0)
    features, _ = extract(backbone, subset, meta["image_size"], meta["normalize"], torch.device("cpu"), 16, 0)
    torch.testing.assert_close(tensors["features"], features, atol=ATOL, rtol=0)
    with torch.no_grad():  # and index points at the right images of the whole split
        direct = backbone(center_view(whole.images[index[:8]], 32, meta["normalize"]["mean"], meta["normalize"]["std"]))
    torch.testing.assert_close(tensors["features"][:8], direct, atol=ATOL, rtol=0)


def test_embeddings_of_an_unlabeled_folder_as_csv_and_safetensors_keep_file_paths(small, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(5):
        Image.new("RGB", (40, 30), (i * 50, 100, 200 - i * 30)).save(folder / f"img{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    exported(small, "--embeddings", "--data", folder, "--out", tmp_path / "e.safetensors")
    report = exported(small, "--embeddings", "--data", folder, "--format", "csv", "--out", tmp_path / "e.csv")
    assert report["images"] == 5 and not report["labels"] and report["files"] and report["skipped_files"] == 1
    tensors = load_file(tmp_path / "e.safetensors")
    with safe_open(str(tmp_path / "e.safetensors"), "pt") as f:
        info = decoded(f.metadata())
    assert "labels" not in tensors and info["classes"] is None
    assert [str(Path(info["root"]) / f) for f in info["files"]] == [str(folder / f"img{i}.png") for i in range(5)]
    assert tensors["indices"].tolist() == [1, 2, 3, 4, 5]  # positions in the file listing: broken.png is 0
    with open(tmp_path / "e.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][:3] == ["index", "file", "f0"] and len(rows[0]) == 2 + report["feature_dim"] and len(rows) == 6
    assert [r[1] for r in rows[1:]] == [str(folder / f"img{i}.png") for i in range(5)]
    from_csv = torch.tensor([[float(v) for v in r[2:]] for r in rows[1:]])
    assert torch.equal(from_csv, tensors["features"])  # 9 significant digits round-trip float32 exactly
    backbone, meta = load_encoder(small, torch.device("cpu"))
    photos = open_dataset(str(folder), "test", image_size=meta["image_size"])
    feats, labels, _ = features(backbone, photos, 32, meta["normalize"], torch.device("cpu"), 8, 0)
    assert labels is None
    torch.testing.assert_close(tensors["features"], feats, atol=ATOL, rtol=0)


# ---- errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, needles", [
    (["--format", "tflite"], ["--format", "'safetensors', 'torchscript', 'onnx' or 'csv'", "tflite"]),
    (["--format", "csv"], ["--format csv is for --embeddings"]),
    (["--format", "onnx", "--embeddings"], ["--embeddings writes 'safetensors' or 'csv'"]),
    (["--out", "no/such/folder/model.onnx"], ["no/such/folder", "does not exist", "mkdir -p"]),
    (["--out", "."], ["is a folder", "file name"]),
    (["--split", "test", "--data", "cifar10"], ["--data, --split apply only to --embeddings"]),
])
def test_bad_requests_fail_before_any_work(small, in_tmp, args, needles):
    fails_cleanly(invoke("export", small, *args), *needles)
    assert list(in_tmp.iterdir()) == []


def test_an_unwritable_folder_is_named(small, monkeypatch):
    folder = small.parent
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == folder else real(p, mode))
    fails_cleanly(invoke("export", small), f"The folder {folder} is not writable", "--out")


def test_a_checkpoint_without_a_backbone_is_refused(small, in_tmp):
    meta = ckpt.read_meta(small)
    ckpt.save(in_tmp / "heads.safetensors", {"method.projector.0.weight": torch.zeros(2, 2)},
              {k: v for k, v in meta.items() if k not in ("path", "format", "format_version", "versions")})
    fails_cleanly(invoke("export", in_tmp / "heads.safetensors"), "holds no backbone weights")
    assert sorted(p.name for p in in_tmp.iterdir()) == ["heads.safetensors"]


def test_exports_are_atomic_and_overwrite_in_place(small, tmp_path):
    out = tmp_path / "w.safetensors"
    out.write_bytes(b"old")
    exported(small, "--out", out)
    assert load_file(out) and sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]  # no temp files

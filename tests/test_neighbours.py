"""`contrastive neighbours` finds what the encoder finds similar, says where each neighbour is, and draws it; `export
--map` draws the embeddings in 2-D. Bad requests and missing optional packages fail with one clear paragraph."""

import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from contrastive_cli import synthetic
from contrastive_cli.cli import app
from contrastive_cli.data import open_dataset
from contrastive_cli.neighbours import CELL, HEADER, PAD, TILE
from contrastive_cli.spec import PretrainSpec
from contrastive_cli.train import prepare
from cli_output import fails_cleanly

runner = CliRunner()
TAB10 = {(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
         (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)}  # matplotlib's class colours


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def ok(*args) -> dict:
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)



@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """An untrained small-CNN SimCLR checkpoint on the synthetic data: retrieval of an image by itself needs no
    training, only an encoder that embeds the same pixels the same way."""
    spec = PretrainSpec.model_validate({"method": {"name": "simclr"}, "backbone": {"name": "small_cnn"},
                                        "data": {"subset": 64}, "optim": {"batch_size": 32, "epochs": 1},
                                        "runtime": {"out": str(tmp_path_factory.mktemp("nb") / "run"), "device": "cpu"}})
    return prepare(spec).save()


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> Path:
    """A flat folder of 12 synthetic test images as PNG files: img00.png .. img11.png."""
    folder = tmp_path_factory.mktemp("gallery")
    images = open_dataset("synthetic", "test").images[:12]
    for i, image in enumerate(images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"img{i:02d}.png")
    return folder


# ---- neighbours ---------------------------------------------------------------------------------------------


def test_an_image_of_the_gallery_finds_itself_first_at_similarity_one(small, gallery):
    query = gallery / "img03.png"
    report = ok("neighbours", small, "--query", query, "--gallery", gallery, "-k", 4)
    (found,) = report["queries"]
    first, *others = found["neighbours"]
    assert found["query"] == str(query) and first["file"] == str(query) and first["rank"] == 1
    assert first["similarity"] == pytest.approx(1.0, abs=1e-5)
    similarities = [n["similarity"] for n in found["neighbours"]]
    assert similarities == sorted(similarities, reverse=True) and all(n["file"] != str(query) for n in others)


def test_json_has_each_query_with_k_ranked_neighbours_whose_index_and_class_point_into_the_split(small, gallery):
    queries = gallery.parent / "queries"
    queries.mkdir(exist_ok=True)
    for name in ("img00.png", "img05.png"):
        (queries / name).write_bytes((gallery / name).read_bytes())
    report = ok("neighbours", small, "--query", queries, "--gallery", "synthetic", "--split", "test",
                "--subset", 200, "--k", 3)
    assert set(report) == {"checkpoint", "image_size", "feature_dim", "k", "gallery", "queries", "sheet", "seconds"}
    assert report["gallery"] == {"data": "synthetic", "split": "test", "images": 200, "skipped_files": 0,
                                 "classes": list(synthetic.CLASSES)}
    assert [q["query"] for q in report["queries"]] == [str(queries / "img00.png"), str(queries / "img05.png")]
    whole = open_dataset("synthetic", "test")
    for q, own in zip(report["queries"], (0, 5)):
        assert [n["rank"] for n in q["neighbours"]] == [1, 2, 3]
        first = q["neighbours"][0]  # test image 0 (5) is a row of the gallery only if the subset drew it
        assert first["index"] == own or first["similarity"] < 1 - 1e-5
        for n in q["neighbours"]:
            assert set(n) == {"rank", "similarity", "split", "index", "file", "label", "class"}
            assert n["split"] == "test" and n["file"] is None
            assert n["label"] == int(whole.labels[n["index"]]) and n["class"] == synthetic.CLASSES[n["label"]]


def test_without_gallery_the_checkpoints_own_data_is_searched_in_both_splits(small, gallery):
    report = ok("neighbours", small, "--query", gallery / "img00.png", "--subset", 400, "-k", 50)
    assert report["gallery"]["data"] == "synthetic" and report["gallery"]["split"] == "all"
    assert report["gallery"]["images"] == 400
    assert {n["split"] for n in report["queries"][0]["neighbours"]} == {"train", "test"}


def test_the_contact_sheet_has_a_row_per_query_and_the_query_then_k_neighbours_per_row(small, gallery, tmp_path):
    sheet = tmp_path / "sheets" / "sheet.png"
    report = ok("neighbours", small, "--query", gallery, "--gallery", gallery, "-k", 3, "--sheet", sheet)
    assert report["sheet"] == str(sheet) and len(report["queries"]) == 12
    with Image.open(sheet) as image:
        assert image.format == "PNG" and image.size == ((3 + 1) * CELL[0], HEADER + 12 * CELL[1])
        tiles = [image.crop((c * CELL[0] + PAD, HEADER + PAD, c * CELL[0] + PAD + TILE, HEADER + PAD + TILE))
                 for c in range(2)]
        assert tiles[0].tobytes() == tiles[1].tobytes()  # the first query's first neighbour is itself
    assert sorted(p.name for p in sheet.parent.iterdir()) == ["sheet.png"]  # written atomically: no temp file


@pytest.mark.parametrize("args, needles", [
    (["--query", "no/such.png"], ["The query no/such.png does not exist"]),
    (["-k", 20], ["-k 20 asks for more neighbours than the gallery", "(12 images)", "Pass -k 12 or less"]),
    (["--sheet", "sheet.jpg"], ["--sheet sheet.jpg must be a .png file"]),
    (["-k", 0], ["k (--k)", "greater than or equal to 1"]),
])
def test_bad_requests_are_one_clear_paragraph(small, gallery, in_tmp, args, needles):
    defaults = {"--query": gallery / "img00.png"}
    query = [] if "--query" in args else ["--query", defaults["--query"]]
    fails_cleanly(invoke("neighbours", small, "--gallery", gallery, *query, *args), *needles)
    assert list(in_tmp.iterdir()) == []


def test_an_unreadable_query_is_named(small, gallery, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    fails_cleanly(invoke("neighbours", small, "--query", tmp_path / "broken.png", "--gallery", gallery),
                  f"The query image {tmp_path / 'broken.png'} cannot be read")


def test_under_torchrun_it_refuses_to_run_as_several_processes(small, gallery, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    fails_cleanly(invoke("neighbours", small, "--query", gallery), "neighbours runs as one process")


# ---- export --map -------------------------------------------------------------------------------------------


def test_tsne_map_is_written_next_to_the_embeddings(small):
    report = ok("export", small, "--embeddings", "--split", "test", "--subset", 80, "--map", "tsne")
    path = small.with_name("checkpoint.embeddings.test.map.png")
    assert report["map"] == str(path) and report["out"] == str(small.with_name("checkpoint.embeddings.test.safetensors"))
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (850, 650)
        colours = {pixel for _, pixel in image.convert("RGB").getcolors(1 << 20)}
    assert TAB10 <= colours  # the 80 images hold all ten classes: ten colours, each in the legend


def test_umap_map_goes_to_map_out(small, tmp_path):  # the one UMAP test: its first import compiles with numba
    report = ok("export", small, "--embeddings", "--split", "test", "--subset", 60, "--map", "umap",
                "--out", tmp_path / "e.csv", "--format", "csv", "--map-out", tmp_path / "map.png")
    assert report["map"] == str(tmp_path / "map.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.csv", "map.png"]
    with Image.open(tmp_path / "map.png") as image:
        assert image.format == "PNG" and image.size == (850, 650)


def test_the_tsne_map_is_reproducible():
    from contrastive_cli.embedding_map import project
    features = torch.randn(40, 16, generator=torch.Generator().manual_seed(0))
    assert (project("tsne", features, 0) == project("tsne", features, 0)).all()


@pytest.mark.parametrize("method, missing", [("tsne", ["sklearn", "sklearn.manifold"]), ("umap", ["umap"]),
                                             ("tsne", ["matplotlib", "matplotlib.figure"])])
def test_a_missing_map_package_names_the_extra_before_any_work(small, tmp_path, monkeypatch, method, missing):
    for module in missing:
        monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    fails_cleanly(invoke("export", small, "--embeddings", "--map", method, "--out", tmp_path / "e.safetensors"),
                  f"--map {method} needs the Python package '{missing[-1]}'", "pip install 'contrastive[map]'")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, needles", [
    (["--map", "tsne"], ["--map tsne draws a map of dataset embeddings; add --embeddings or drop --map"]),
    (["--embeddings", "--map-out", "m.png"], ["--map-out names the file of the embeddings map"]),
    (["--embeddings", "--map", "umap", "--map-out", "m.jpg"], ["--map-out m.jpg must be a .png file"]),
    (["--embeddings", "--map", "pca"], ["map (--map)", "'tsne' or 'umap'"]),
])
def test_bad_map_requests_fail_before_any_work(small, in_tmp, args, needles):
    fails_cleanly(invoke("export", small, *args), *needles)
    assert list(in_tmp.iterdir()) == []


def test_features_of_a_query_are_those_of_the_same_image_in_the_gallery(small, gallery):
    """The reason self-retrieval is exact: a query file is decoded and viewed as a folder gallery's images are."""
    from contrastive_cli.evaluate import features, load_encoder
    from contrastive_cli.neighbours import decode_queries
    backbone, meta = load_encoder(small, torch.device("cpu"))
    size, norm, cpu = meta["image_size"], meta["normalize"], torch.device("cpu")
    q, _, _ = features(backbone, decode_queries([str(gallery / "img07.png")], size, norm), size, norm, cpu, 16, 0)
    g, _, _ = features(backbone, open_dataset(str(gallery), "train", image_size=size), size, norm, cpu, 16, 0)
    torch.testing.assert_close(q[0], g[7], atol=1e-6, rtol=0)  # a flat folder's every split is all of it, in order

"""Datasets: folders (ImageFolder, ImageNet-style, flat), named datasets, synthetic, batching."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from contrastive_cli import data, synthetic
from contrastive_cli.data import native_size, open_dataset, stored_size
from contrastive_cli.errors import UserError

RED, BLUE = (220, 20, 20), (20, 20, 220)


def save_image(path: Path, colour=RED, size=(20, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def image_folder(root: Path, per_class: int = 20) -> Path:
    for i in range(per_class):
        save_image(root / "cats" / f"c{i}.png", RED)
        save_image(root / "dogs" / f"d{i}.JPG", BLUE)
    return root


def flat_folder(root: Path, count: int = 6) -> Path:
    for i in range(count):
        save_image(root / f"img{i}.png", (i * 40, 100, 50))
    return root


def all_batches(images, indices, batch_size, **kwargs):
    out = list(images.batches(indices, batch_size, **kwargs))
    return (torch.cat([b[0] for b in out]), [b[1] for b in out], torch.cat([b[2] for b in out]), out)


# ---------------------------------------------------------------- folders

def test_image_folder_labels_and_classes(tmp_path):
    root = image_folder(tmp_path / "pets")
    train = open_dataset(str(root), "train", image_size=32)
    test = open_dataset(str(root), "test", image_size=32)
    assert train.classes == test.classes == ["cats", "dogs"]
    assert len(train) + len(test) == 40 and 0 < len(test) < 10  # ~10% held out, disjoint
    assert train.images.shape == (len(train), 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.channels == 3 and train.size == 32 and train.index is None
    assert [Path(f).parent.name for f in train.files] == [train.classes[y] for y in train.labels]  # paths are kept
    for part in (train, test):  # red images are cats, blue ones dogs
        red = part.images[:, 0].float().mean((1, 2)) > part.images[:, 2].float().mean((1, 2))
        assert torch.equal(part.labels, (~red).long())
    assert open_dataset(str(root), "pretrain", image_size=32).fingerprint == train.fingerprint
    assert open_dataset(str(root), "test", image_size=32).fingerprint == test.fingerprint  # stable split
    assert train.mean == data.IMAGENET_STATS[0]


def test_imagenet_style_train_and_val(tmp_path):
    for split, count in (("train", 6), ("val", 3)):
        for cls, colour in (("n01", RED), ("n02", BLUE)):
            for i in range(count):
                save_image(tmp_path / split / cls / f"{i}.jpeg", colour)
    train = open_dataset(str(tmp_path), "train", image_size=24)
    test = open_dataset(str(tmp_path), "test", image_size=24)
    assert (len(train), len(test)) == (12, 6)
    assert train.classes == test.classes == ["n01", "n02"]
    assert test.labels.tolist() == [0] * 3 + [1] * 3 and test.name.endswith(":val")
    assert len(open_dataset(str(tmp_path), "pretrain", image_size=24)) == 12


def test_val_class_missing_from_train_is_an_error(tmp_path):
    save_image(tmp_path / "train" / "a" / "0.png")
    save_image(tmp_path / "val" / "b" / "0.png")
    with pytest.raises(UserError, match="'b'"):
        open_dataset(str(tmp_path), "test")


def test_flat_folder_is_unlabeled(tmp_path):
    root = flat_folder(tmp_path)
    for split in ("pretrain", "train", "test"):
        images = open_dataset(str(root), split, image_size=16)
        assert len(images) == 6 and images.labels is None and images.classes is None


def test_default_folder_size_and_centre_crop(tmp_path):
    wide = Image.new("RGB", (300, 100), RED)
    wide.paste(BLUE, (100, 0, 200, 100))  # the middle third is blue: exactly the centre crop
    wide.save(tmp_path / "wide.png")
    Image.new("L", (90, 120), 77).save(tmp_path / "gray.png")  # gray files still give 3 channels
    images = open_dataset(str(tmp_path), "pretrain")
    assert images.size == 256 and images.images.shape == (2, 3, 256, 256)
    gray, wide = images.images[0].int(), images.images[1].int()
    assert (gray == 77).all()
    assert (wide[2, 8:-8, 8:-8] > 200).all() and (wide[0, 8:-8, 8:-8] < 40).all()


def test_corrupt_file_skipped_or_strict(tmp_path, monkeypatch):
    root = flat_folder(tmp_path / "photos", 5)
    bad = root / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 definitely not a jpeg")
    images = open_dataset(str(root), "pretrain", image_size=16)
    assert len(images) == 5 and images.skipped == [str(bad)]
    assert str(bad) not in images.files and images.index.tolist() == [1, 2, 3, 4, 5]  # rows -> listing positions
    with pytest.raises(UserError, match="broken.jpg"):
        open_dataset(str(root), "pretrain", image_size=16, strict=True)

    monkeypatch.setattr(data, "IN_MEMORY_LIMIT", 0)  # the same when streaming from disk
    streamed = open_dataset(str(root), "pretrain", image_size=16)
    assert len(streamed) == 6 and streamed.images is None
    for _ in range(2):  # a second epoch meets the file again but counts it once
        batch_images, _, index, _ = all_batches(streamed, torch.arange(6), 4)
        assert len(batch_images) == 5 and str(bad) not in [streamed.files[i] for i in index]
    assert streamed.skipped == [str(bad)]
    strict = open_dataset(str(root), "pretrain", image_size=16, strict=True)
    with pytest.raises(UserError, match="broken.jpg"):
        all_batches(strict, torch.arange(6), 4)


def test_empty_or_unreadable_folder_is_an_error(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(UserError, match="no image files found"):
        open_dataset(str(tmp_path), "pretrain")
    (tmp_path / "a.png").write_bytes(b"garbage")
    with pytest.raises(UserError, match="none of the images"):
        open_dataset(str(tmp_path), "pretrain")


def test_unknown_name_lists_the_choices(tmp_path):
    with pytest.raises(UserError) as err:
        open_dataset("cifar-10", "train")
    message = str(err.value)
    assert "'cifar-10'" in message and "did you mean 'cifar10'" in message
    assert all(name in message for name in ("synthetic", "stl10", "fashion-mnist")) and "folder" in message
    with pytest.raises(UserError, match="nowhere"):
        native_size(str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="is a file"):
        open_dataset(str(save_image(tmp_path / "one.png")), "train")


@pytest.mark.parametrize("name", ["cifar10", "stl10", "mnist"])
def test_missing_named_dataset_without_download(tmp_path, name):
    with pytest.raises(UserError) as err:
        open_dataset(name, "train", root=tmp_path)
    assert f"{name} was not found under {tmp_path}" in str(err.value) and "--download" in str(err.value)
    assert not any(tmp_path.iterdir())  # nothing fetched or created


# ---------------------------------------------------------------- named datasets

def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_in_torchvision_layout(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    pixels = np.arange(7 * 28 * 28).reshape(7, 28, 28) % 256
    write_idx(raw / "t10k-images-idx3-ubyte", pixels)
    write_idx(raw / "t10k-labels-idx1-ubyte", np.arange(7))
    test = open_dataset("mnist", "test", root=tmp_path)
    assert test.images.shape == (7, 1, 28, 28) and test.labels.tolist() == list(range(7))
    assert torch.equal(test.images[:, 0], torch.from_numpy(pixels).to(torch.uint8))
    assert test.mean == (0.1307,) * 3 and test.channels == 1 and test.name == "mnist:test"
    with pytest.raises(UserError, match="not found"):  # only the test split is there
        open_dataset("mnist", "train", root=tmp_path)
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09\x01")
    with pytest.raises(UserError, match="not a valid"):
        open_dataset("mnist", "test", root=tmp_path)


def test_idx_files_with_a_false_size_or_a_damaged_gzip_are_refused(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw / "t10k-images-idx3-ubyte", np.zeros((7, 28, 28)))
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x7f\xff\xff\xff" + bytes(7))  # claims 2 GB
    with pytest.raises(UserError, match="not a valid"):
        open_dataset("mnist", "test", root=tmp_path)
    (raw / "t10k-labels-idx1-ubyte").unlink()
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00 not gzip data")
    with pytest.raises(UserError, match="not a valid"):
        open_dataset("mnist", "test", root=tmp_path)


@pytest.mark.skipif(not data.DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's fashion-mnist is not installed")
def test_fashion_mnist_from_debian(tmp_path):
    train = open_dataset("fashion-mnist", "train", root=tmp_path)
    test = open_dataset("fashion-mnist", "test", root=tmp_path)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert train.labels.unique().tolist() == list(range(10)) and test.labels.bincount().tolist() == [1000] * 10
    assert len(train.classes) == 10 and train.size == 28 and train.fingerprint != test.fingerprint
    assert abs(train.images.float().mean().item() / 255 - train.mean[0]) < 1e-3


def test_synthetic_is_deterministic_and_balanced():
    train = open_dataset("synthetic", "train", seed=5)
    assert train.images.shape == (5000, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels.bincount().tolist() == [500] * 10 and len(train.classes) == 10
    synthetic.generate.cache_clear()  # regenerate from scratch: same bytes
    again = open_dataset("synthetic", "pretrain")
    assert torch.equal(again.images, train.images) and again.fingerprint == train.fingerprint
    test = open_dataset("synthetic", "test")
    assert len(test) == 1000 and test.labels.bincount().tolist() == [100] * 10
    assert not torch.equal(test.images, train.images[:1000]) and test.fingerprint != train.fingerprint
    mean, std = synthetic.channel_stats(train.images)  # the hardcoded stats are the measured ones
    assert np.allclose(mean, train.mean, atol=2e-4) and np.allclose(std, train.std, atol=2e-4)
    assert native_size("synthetic") == 32 and train.name == "synthetic:train"


def test_subset_is_seeded(tmp_path):
    first = open_dataset("synthetic", "train", subset=100, seed=1)
    same = open_dataset("synthetic", "train", subset=100, seed=1)
    other = open_dataset("synthetic", "train", subset=100, seed=2)
    assert len(first) == 100 and first.labels.shape == (100,)
    assert torch.equal(first.images, same.images) and first.fingerprint == same.fingerprint
    assert not torch.equal(first.images, other.images) and first.fingerprint != other.fingerprint
    with pytest.raises(UserError, match=r"--test-subset 5000 asks for more images than synthetic \(test split\) "
                                        r"holds \(1000\)\. Pass --test-subset 1000 or less"):
        open_dataset("synthetic", "test", subset=5000, subset_flag="--test-subset")  # not silently fewer
    assert len(open_dataset("synthetic", "test", subset=5000, subset_flag=None)) == 1000  # an upper bound: all
    assert len(open_dataset(str(flat_folder(tmp_path)), "pretrain", subset=4, image_size=8)) == 4
    whole = open_dataset("synthetic", "train")
    assert torch.equal(whole.images[first.index], first.images) and whole.index is None  # subset rows -> positions


# ---------------------------------------------------------------- batches and fingerprints

def test_in_memory_batches_follow_the_given_order():
    images = open_dataset("synthetic", "test")
    order = torch.randperm(1000, generator=torch.Generator().manual_seed(0))
    got, labels, index, batches = all_batches(images, order, 300)
    assert torch.equal(index, order) and torch.equal(got, images.images[order])
    assert torch.equal(torch.cat(labels), images.labels[order]) and [len(b[0]) for b in batches] == [300] * 3 + [100]
    assert [len(b[0]) for b in images.batches(order, 300, drop_last=True)] == [300] * 3


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_batches_follow_the_given_order(tmp_path, monkeypatch, workers):
    root = image_folder(tmp_path / "pets", per_class=6)
    in_memory = open_dataset(str(root), "train", image_size=16)
    monkeypatch.setattr(data, "IN_MEMORY_LIMIT", 3)
    streamed = open_dataset(str(root), "train", image_size=16)
    assert streamed.images is None and len(streamed.files) == len(in_memory)
    assert streamed.fingerprint == in_memory.fingerprint  # same data, however it is held
    order = torch.randperm(len(streamed), generator=torch.Generator().manual_seed(1))
    got, labels, index, _ = all_batches(streamed, order, 4, workers=workers)
    assert torch.equal(index, order) and torch.equal(got, in_memory.images[order])
    assert torch.equal(torch.cat(labels), in_memory.labels[order])


def test_fingerprint_changes_with_the_data(tmp_path):
    root = flat_folder(tmp_path)
    before = open_dataset(str(root), "pretrain", image_size=16).fingerprint
    assert open_dataset(str(root), "pretrain", image_size=16).fingerprint == before
    assert open_dataset(str(root), "pretrain", image_size=8).fingerprint != before
    save_image(root / "img0.png", RED, size=(40, 30))  # same name, new content
    changed = open_dataset(str(root), "pretrain", image_size=16).fingerprint
    save_image(root / "extra.png")
    assert len({before, changed, open_dataset(str(root), "pretrain", image_size=16).fingerprint}) == 3


def test_sizes():
    assert [stored_size(s) for s in (32, 64, 96, 224)] == [32, 64, 110, 256]
    assert [native_size(n) for n in ("mnist", "fashion-mnist", "cifar10", "cifar100", "svhn", "stl10")] == \
        [28, 28, 32, 32, 32, 96]


def test_synthetic_colour_is_synthetic_with_coloured_shapes():
    """Same images, classes and grey levels; only the shapes' chroma (hue independent of the class) is added, so
    methods whose views are colour channels (CMC's ab) see the silhouette there."""
    from contrastive_cli import synthetic
    plain, colour = open_dataset("synthetic", "test"), open_dataset("synthetic-colour", "test")
    assert torch.equal(plain.labels, colour.labels) and colour.mean == synthetic.COLOUR_MEAN
    luma = torch.tensor(synthetic.LUMA).view(1, 3, 1, 1)
    grey = lambda x: (x.float() * luma).sum(1)  # noqa: E731
    assert (grey(plain.images) - grey(colour.images)).abs().mean() < 2.0  # of 255 (1.16): clamping moves a few
    assert (colour.images.float() - plain.images.float()).abs().mean() > 3  # 4.6: shapes cover part of the image
    assert synthetic.channel_stats(colour.images)[0] != synthetic.channel_stats(plain.images)[0]

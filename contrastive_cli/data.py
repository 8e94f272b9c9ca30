"""Datasets as uint8 image sets: the embedded synthetic set, torchvision datasets and image folders.

Everything small enough is held in memory as one uint8 tensor [N, C, S, S] so batches are plain
slices (the augmentation runs batched on the device); folders of more than IN_MEMORY_LIMIT images
stream from disk, decoded by PIL in DataLoader workers. Unreadable files are skipped and
counted, or stop the run with --strict.
"""

from __future__ import annotations

import difflib
import gzip
import hashlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Literal, Optional

import numpy as np
import torch

from . import synthetic
from .errors import UserError

Split = Literal["pretrain", "train", "test"]
Stats = tuple[tuple[float, float, float], tuple[float, float, float]]

DEFAULT_ROOT = Path("~/.cache/contrastive/datasets")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
IN_MEMORY_LIMIT = 20_000  # folders (after split and subset) up to this many images are decoded once at open
IN_MEMORY_BYTES = 4 << 30  # ... and only while they fit in this much memory (20000 at 256 px: 3.9 GB)
HELD_OUT_FRACTION = 0.1   # share of an ImageFolder's images that form its "test" split
FOLDER_SIZE = 224         # default view side for folders
IDX_CHUNK = 1 << 20  # bytes decompressed per read of an idx file
FINGERPRINT_IMAGES = 1024  # in-memory fingerprints hash about this many evenly spaced images

IMAGENET_STATS: Stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CIFAR_STATS: Stats = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))


def _gray(mean: float, std: float) -> Stats:
    return (mean,) * 3, (std,) * 3  # views are 3-channel, so gray stats repeat


NAMED: dict[str, tuple[int, Stats]] = {  # name -> (native side, normalisation stats)
    "synthetic": (synthetic.SIZE, (synthetic.MEAN, synthetic.STD)),
    "synthetic-colour": (synthetic.SIZE, (synthetic.COLOUR_MEAN, synthetic.COLOUR_STD)),
    "cifar10": (32, CIFAR_STATS),
    "cifar100": (32, CIFAR_STATS),
    "stl10": (96, IMAGENET_STATS),
    "mnist": (28, _gray(0.1307, 0.3081)),
    "fashion-mnist": (28, _gray(0.2860, 0.3530)),
    "svhn": (32, ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970))),  # SVHN's own stats
}
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DIGITS = [str(d) for d in range(10)]


@dataclass
class ImageSet:
    name: str
    images: Optional[torch.Tensor]  # uint8 [N, C, S, S] when in memory, else None
    files: Optional[list[str]]      # image paths (folders), else None
    labels: Optional[torch.Tensor]  # int64 [N], None when unlabeled
    classes: Optional[list[str]]
    channels: int
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    fingerprint: str
    skipped: list[str] = field(default_factory=list)
    strict: bool = False
    index: Optional[torch.Tensor] = None  # each image's position in the whole split (after --subset); None: row i is i

    def __len__(self) -> int:
        return len(self.images) if self.images is not None else len(self.files)

    def batches(self, indices: torch.Tensor, batch_size: int, *, workers: int = 0, drop_last: bool = False
                ) -> Iterator[tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]]:
        """Yield (uint8 images [B,C,S,S], labels [B] or None, dataset indices [B]) in the given order.

        File-backed sets skip unreadable files (the batch is just smaller, the path goes to
        `skipped`) unless strict, where a UserError names the file.
        """
        chunks = list(torch.as_tensor(indices, dtype=torch.long).split(batch_size))
        if drop_last and chunks and len(chunks[-1]) < batch_size:
            chunks.pop()
        if self.images is None:
            yield from self._stream(chunks, workers)
            return
        for index in chunks:  # one gather per batch, no per-image Python work
            yield self.images[index], None if self.labels is None else self.labels[index], index

    def _stream(self, chunks: list[torch.Tensor], workers: int):
        decoder = _ChunkDecoder(self.files, chunks, self.size, self.channels, self.strict)
        # batch_size=None: each worker decodes a whole chunk; the loader keeps the chunks in order.
        loader = torch.utils.data.DataLoader(decoder, batch_size=None, num_workers=workers,
                                             pin_memory=torch.cuda.is_available())
        yielded = 0
        for images, index, failures in loader:
            self._note_unreadable(failures)
            if len(index):
                yielded += len(index)
                yield images, None if self.labels is None else self.labels[index], index
        if chunks and not yielded and self.skipped:
            raise UserError(f"none of the images read from {self.name} could be decoded "
                            f"(first unreadable file: {self.skipped[0]})",
                            "check that the files are images, or point --data at another folder")

    def _note_unreadable(self, failures: list[tuple[str, str]]) -> None:
        for path, reason in failures:
            if self.strict:
                raise UserError(f"cannot read image file {path} ({reason})",
                                "fix or delete the file, or run without --strict to skip unreadable files")
            if path not in self.skipped:  # later epochs meet the same files again
                self.skipped.append(path)


class _ChunkDecoder(torch.utils.data.Dataset):
    """Item i is chunk i decoded: (uint8 images, indices that decoded, [(path, reason)] that did not)."""

    def __init__(self, files: list[str], chunks: list[torch.Tensor], size: int, channels: int, strict: bool):
        self.files, self.chunks, self.size, self.channels, self.strict = files, chunks, size, channels, strict

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int):
        images, kept, failures = [], [], []
        for index in self.chunks[i].tolist():
            try:
                images.append(decode_image(self.files[index], self.size, self.channels))
                kept.append(index)
            except Exception as err:  # PIL raises many types for bad files; all mean "unreadable"
                # Report instead of raising: the main process turns it into a UserError or a skip.
                failures.append((self.files[index], f"{type(err).__name__}: {err}"))
                if self.strict:
                    break
        empty = torch.empty(0, self.channels, self.size, self.size, dtype=torch.uint8)
        return torch.stack(images) if images else empty, torch.tensor(kept, dtype=torch.long), failures


def eight_bit(img):
    """High-bit-depth grayscale (16-bit PNG, 32-bit integer or float TIFF) as 8-bit 'L', by its range: PIL's own
    conversion clips 16-bit values at 255 (nearly all white) and truncates floats in [0, 1] to 0 (all black)."""
    from PIL import Image

    if img.mode not in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return img
    pixels = np.asarray(img, dtype=np.float64)
    top = float(np.nanmax(pixels)) if pixels.size else 0.0
    if img.mode.startswith("I;16"):
        full = 65535.0
    elif img.mode == "F" and top <= 1.0:
        full = 1.0  # float images in [0, 1]
    else:  # 32-bit integers or floats: 8- or 16-bit ranges as such, anything wider by its maximum
        full = 255.0 if top <= 255 else 65535.0 if top <= 65535 else top
    return Image.fromarray(np.clip(np.nan_to_num(pixels) / full * 255 + 0.5, 0, 255).astype(np.uint8), "L")


def decode_image(path: str, size: int, channels: int) -> torch.Tensor:
    """uint8 [C, size, size]: shorter side resized to `size`, centre-cropped, C = 1 (gray) or 3 (RGB)."""
    from PIL import Image

    mode = "RGB" if channels == 3 else "L"
    with Image.open(path) as img:
        img.draft(mode, (size, size))  # JPEGs decode at 1/2..1/8 scale when still >= size: much faster
        img = eight_bit(img).convert(mode)
        width, height = img.size
        side = min(width, height)
        box = ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)
        pixels = np.array(img.resize((size, size), Image.BILINEAR, box=box))  # crop+resize in one pass
    tensor = torch.from_numpy(pixels)
    return tensor.permute(2, 0, 1).contiguous() if channels == 3 else tensor.unsqueeze(0)


# ---------------------------------------------------------------- public entry points

def stored_size(image_size: int) -> int:
    """Side at which folder images are decoded: views of 224 are cropped from 256 (the 8/7 rule)."""
    return image_size if image_size <= 64 else round(image_size * 8 / 7)


def native_size(source: str, root: Optional[Path] = None) -> int:
    """The dataset's native image side (folders: the default view size), without loading anything."""
    if source in NAMED:
        return NAMED[source][0]
    _existing_folder(source)
    return FOLDER_SIZE


def open_dataset(source: str, split: Split, *, root: Optional[Path] = None, download: bool = False,
                 strict: bool = False, subset: Optional[int] = None, seed: int = 0,
                 image_size: Optional[int] = None, classes: Optional[list[str]] = None,
                 subset_flag: Optional[str] = "--subset") -> ImageSet:
    """Open `split` of a named dataset or a folder; `classes` keeps only those classes (names or indices,
    relabelled 0..k-1 in the order given), then `subset` keeps a seeded random N of the images left. A subset
    larger than the data is an error naming `subset_flag`, or, when that is None, all the images (an upper bound)."""
    if split not in ("pretrain", "train", "test"):
        raise ValueError(f"split must be 'pretrain', 'train' or 'test', not {split!r}")
    if source in NAMED:
        root = Path(root or DEFAULT_ROOT).expanduser()
        return _open_named(source, split, root, download, (subset, subset_flag), seed, classes)
    folder = _existing_folder(source)
    return _open_folder(folder, split, strict, (subset, subset_flag), seed, stored_size(image_size or FOLDER_SIZE),
                        classes)


def _existing_folder(source: str) -> Path:
    path = Path(source).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise UserError(f"--data '{source}' is a file, not a folder of images",
                        "point --data at the folder that holds the images, or name a dataset")
    guess = difflib.get_close_matches(source.lower(), NAMED, n=1)
    hint = f" (did you mean '{guess[0]}'?)" if guess else ""
    raise UserError(f"--data '{source}' is neither a known dataset nor an existing folder{hint}",
                    f"name one of {', '.join(NAMED)}, or give the path of a folder of images that exists")


def select_classes(wanted: list[str], classes: Optional[list[str]], labels, name: str) -> list[int]:
    """Label indices of the `wanted` classes, in the order given. Each entry is a class name (exact, else
    case-insensitive) or an index; names win, so a folder class called '3' is found by name first."""
    if labels is None:
        raise UserError(f"{name} has no labels, so --classes cannot pick classes from it",
                        "drop --classes, or use a labeled dataset (class subfolders or a named dataset)")
    classes = classes or [str(i) for i in range(int(torch.as_tensor(labels).max()) + 1)]
    folded = {}
    for i, c in enumerate(classes):
        folded.setdefault(c.casefold(), []).append(i)
    picked = []
    for item in wanted:
        if item in classes:
            index = classes.index(item)
        elif len(folded.get(item.casefold(), [])) == 1:
            index = folded[item.casefold()][0]
        elif item.isdigit() and int(item) < len(classes):
            index = int(item)
        else:
            listing = ", ".join(f"{i} {c}" if c != str(i) else c for i, c in enumerate(classes[:40]))
            listing += f", … ({len(classes) - 40} more)" if len(classes) > 40 else ""
            raise UserError(f"--classes: {name} has no class '{item}'; its {len(classes)} classes are: {listing}",
                            "pass class names or indices from that list, comma-separated")
        if index in picked:
            raise UserError(f"--classes names the class '{classes[index]}' twice ('{item}')",
                            "list each class once")
        picked.append(index)
    return picked


def _keep_classes(wanted: list[str], classes: Optional[list[str]], labels, name: str
                  ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(indices of the images of the `wanted` classes, in dataset order; their labels 0..k-1 in the order
    wanted; the kept class names in that order)."""
    picked = select_classes(wanted, classes, labels, name)
    labels = torch.as_tensor(labels, dtype=torch.long)
    lookup = torch.full((int(labels.max()) + 1 if classes is None else len(classes),), -1, dtype=torch.long)
    lookup[torch.tensor(picked)] = torch.arange(len(picked))
    mapped = lookup[labels]
    keep = (mapped >= 0).nonzero().squeeze(1)
    names = classes or [str(i) for i in range(len(lookup))]
    return keep, mapped[keep], [names[i] for i in picked]


def _subset(count: int, subset: tuple[Optional[int], Optional[str]], seed: int, where: str) -> Optional[torch.Tensor]:
    """Sorted indices of a seeded random subset, or None when the whole set is kept. `subset` is (N, the flag that
    gave it); a flag of None makes N an upper bound."""
    subset, flag = subset
    if subset is not None and subset > count and flag is not None:
        raise UserError(f"{flag} {subset} asks for more images than {where} holds ({count})",
                        f"pass {flag} {count} or less, or leave {flag} out to use all {count}")
    if subset is None or subset >= count:
        return None
    pick = torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:subset]
    return pick.sort().values  # dataset order: neighbouring files stay neighbours on disk


def _digest(*parts: bytes) -> str:
    h = hashlib.sha1()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))  # length-prefixed so parts cannot run together
        h.update(part)
    return h.hexdigest()[:16]


def _tensor_fingerprint(images: torch.Tensor, labels: Optional[torch.Tensor]) -> str:
    step = max(1, len(images) // FINGERPRINT_IMAGES)  # sampled: hashing all of STL-10 takes seconds
    return _digest(repr(tuple(images.shape)).encode(),
                   b"" if labels is None else labels.numpy().tobytes(),
                   images[::step].contiguous().numpy().tobytes())


# ---------------------------------------------------------------- named datasets

def _open_named(name: str, split: Split, root: Path, download: bool, subset: tuple, seed: int,
                wanted: Optional[list[str]] = None) -> ImageSet:
    images, labels, classes, split_read = _load_named(name, split, root, download)
    if wanted is not None:
        keep, labels, classes = _keep_classes(wanted, classes, labels, f"{name} ({split_read} split)")
        images = images[keep]
    keep = _subset(len(images), subset, seed, f"{name} ({split_read} split)")
    if keep is not None:
        images, labels = images[keep], None if labels is None else labels[keep]
    (mean, std) = NAMED[name][1]
    return ImageSet(name=f"{name}:{split_read}", images=images, files=None, labels=labels, classes=classes,
                    channels=images.shape[1], size=images.shape[-1], mean=mean, std=std,
                    fingerprint=_tensor_fingerprint(images, labels), index=keep)


def _load_named(name: str, split: Split, root: Path, download: bool):
    """(uint8 images [N,C,H,W], int64 labels or None, classes or None, name of the split read)."""
    train = split != "test"
    if name in ("synthetic", "synthetic-colour"):
        images, labels = synthetic.generate("train" if train else "test", colour=name == "synthetic-colour")
        return images, labels, list(synthetic.CLASSES), "train" if train else "test"
    if name in ("mnist", "fashion-mnist"):
        images, labels = _load_idx(name, train, root, download)
        return images, labels, FASHION_CLASSES if name == "fashion-mnist" else DIGITS, "train" if train else "test"
    import torchvision.datasets as tvd

    if name in ("cifar10", "cifar100"):
        cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
        ds = _torchvision(name, root, download, lambda: cls(str(root), train=train, download=download))
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # stored as NHWC
        return images, torch.tensor(ds.targets, dtype=torch.long), list(ds.classes), "train" if train else "test"
    if name == "svhn":
        part = "train" if train else "test"
        ds = _torchvision(name, root, download, lambda: tvd.SVHN(str(root), split=part, download=download))
        return torch.from_numpy(ds.data), torch.from_numpy(ds.labels).long(), DIGITS, part
    part = {"pretrain": "train+unlabeled", "train": "train", "test": "test"}[split]
    ds = _torchvision(name, root, download, lambda: tvd.STL10(str(root), split=part, download=download))
    if part == "train+unlabeled":  # 100k of the 105k images have no label (-1): treat it all as unlabeled
        return torch.from_numpy(ds.data), None, None, part
    return torch.from_numpy(ds.data), torch.from_numpy(ds.labels).long(), list(ds.classes), part


def _missing(name: str, root: Path, also: str = "") -> UserError:
    return UserError(f"{name} was not found under {root}{also}",
                     "pass --download to fetch it into --data-root, or point --data-root at a folder that holds it")


def _torchvision(name: str, root: Path, download: bool, build):
    try:
        return build()
    except ImportError as err:  # SVHN's .mat files need scipy
        raise UserError(f"reading {name} needs the Python package '{err.name}'",
                        f"install it (pip install {err.name}) or use another dataset") from None
    except (RuntimeError, OSError) as err:  # torchvision: "Dataset not found or corrupted"; network errors
        if not download:
            raise _missing(name, root) from None
        raise UserError(f"could not download {name} into {root} ({err})",
                        "check the network connection and that --data-root is writable, "
                        "or put the dataset's files there by hand") from None


def _load_idx(name: str, train: bool, root: Path, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST-format idx files, parsed directly (gzip + frombuffer: well under a second)."""
    folder = root / ("FashionMNIST" if name == "fashion-mnist" else "MNIST") / "raw"
    places = [folder, root] + ([DEBIAN_FASHION_MNIST] if name == "fashion-mnist" else [])
    prefix = "train" if train else "t10k"
    found = _find_idx(places, prefix)
    if found is None and download:
        import torchvision.datasets as tvd

        cls = tvd.FashionMNIST if name == "fashion-mnist" else tvd.MNIST
        _torchvision(name, root, download, lambda: cls(str(root), train=train, download=True))
        found = _find_idx([folder], prefix)
    if found is None:
        raise _missing(name, root, f" (nor in {DEBIAN_FASHION_MNIST})" if name == "fashion-mnist" else "")
    images, labels = (_read_idx(path) for path in found)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(f"the {name} files {found[0]} and {found[1]} do not match",
                        "delete them and fetch the dataset again (--download)")
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def _find_idx(places: list[Path], prefix: str) -> Optional[tuple[Path, Path]]:
    for place in places:
        pair = []
        for kind in ("images-idx3", "labels-idx1"):
            stem = place / f"{prefix}-{kind}-ubyte"
            pair += [p for p in (stem, stem.with_name(stem.name + ".gz")) if p.is_file()][:1]
        if len(pair) == 2:
            return pair[0], pair[1]
    return None


def _idx_size_matches(path: Path, expected: int) -> bool:
    """The file's (uncompressed) size is the header's; gzip keeps it modulo 2**32 in its last four bytes."""
    if path.suffix != ".gz":
        return path.stat().st_size == expected
    with open(path, "rb") as raw:
        raw.seek(-4, os.SEEK_END)
        return int.from_bytes(raw.read(4), "little") == expected % 2 ** 32


def _read_idx(path: Path) -> np.ndarray:
    """A writable array read straight into its own memory (no bytes object and copy: the peak is its size)."""
    bad = UserError(f"{path} is not a valid uint8 idx file (truncated or corrupted)",
                    "delete it and fetch the dataset again (--download)")
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            head = f.read(4)
            ndim = head[3] if len(head) == 4 else 0
            dims = f.read(4 * ndim)
            if head[:3] != b"\x00\x00\x08" or not ndim or len(dims) != 4 * ndim:
                raise bad
            shape = tuple(int(d) for d in np.frombuffer(dims, ">u4"))
            if not _idx_size_matches(path, 4 + 4 * ndim + int(np.prod(shape))):  # before allocating it
                raise bad
            array = np.empty(shape, np.uint8)
            view, filled = memoryview(array).cast("B"), 0
            while filled < array.size:  # in chunks: gzip would decompress into a full-size temporary
                got = f.readinto(view[filled:filled + IDX_CHUNK])
                if not got:
                    raise bad
                filled += got
            if f.read(1):
                raise bad
    except (OSError, EOFError):  # a damaged gzip stream
        raise bad from None
    return array


# ---------------------------------------------------------------- folders

def _scan(folder: Path) -> list[tuple[str, int]]:
    """(posix path relative to folder, bytes) of every image file below it, sorted; hidden entries skipped."""
    found, pending = [], [folder]
    while pending:
        with _listing(pending.pop()) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    pending.append(Path(entry.path))
                elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                    try:
                        size = entry.stat().st_size
                    except OSError:  # a broken link: keep it, decoding will skip or stop on it
                        size = -1
                    found.append((Path(entry.path).relative_to(folder).as_posix(), size))
    return sorted(found)


def _listing(folder: Path):
    """os.scandir, with a folder that cannot be read (permissions, a dead mount) a clear error, not skipped:
    a class silently missing would be a wrong answer."""
    try:
        return os.scandir(folder)
    except OSError as err:
        raise UserError(f"The folder {folder} cannot be read ({err.strerror or err})",
                        f"give your user read access to it (e.g. chmod -R u+rX {folder}), or point --data at a "
                        "readable copy") from None


def _labeled(found: list[tuple[str, int]], classes: Optional[list[str]] = None):
    """ImageFolder reading of a scan: files in class subfolders (top-level files ignored), else flat."""
    in_subfolders = [(rel, size) for rel, size in found if "/" in rel]
    if not in_subfolders:
        return found, None, None
    classes = classes or sorted({rel.split("/", 1)[0] for rel, _ in in_subfolders})
    index_of = {name: i for i, name in enumerate(classes)}
    labels = [index_of.get(rel.split("/", 1)[0], -1) for rel, _ in in_subfolders]
    return in_subfolders, labels, classes


def _held_out(rel: str) -> float:
    """Stable position in [0, 1) of a file for the held-out split (same on every machine and run)."""
    return int(hashlib.md5(rel.encode()).hexdigest()[:8], 16) / 2 ** 32


def labelled_split_sizes(source: str, root: Optional[Path] = None,
                         classes: Optional[list[str]] = None) -> Optional[tuple[int, int]]:
    """(train, test) image counts when `source` has labelled train and test splits, else None. A folder is listed,
    not decoded (open_dataset decodes folders of up to IN_MEMORY_LIMIT images)."""
    try:
        if source in NAMED or classes:
            sets = [open_dataset(source, split, root=root, classes=classes) for split in ("train", "test")]
            labelled = [(len(s), s.labels is not None) for s in sets]
        else:
            labelled = [(len(found), labels is not None)
                        for _, found, labels, _, _ in (_folder_split(_existing_folder(source), split)
                                                       for split in ("train", "test"))]
    except (UserError, OSError, ValueError):
        return None
    return tuple(n for n, _ in labelled) if all(ok and n for n, ok in labelled) else None


def _folder_split(folder: Path, split: Split):
    """(folder the paths are relative to, [(rel, bytes)], labels or None, classes or None, split name)."""
    with _listing(folder) as entries:
        subfolders = {e.name for e in entries if e.is_dir()}
    evaluation = next((name for name in ("val", "test") if name in subfolders), None)  # ImageNet: val
    if "train" in subfolders and evaluation:  # ImageNet-style root
        train = _labeled(_scan(folder / "train"))
        if split != "test":
            return folder / "train", *train, "train"
        found, labels, classes = _labeled(_scan(folder / evaluation), train[2])
        if labels is not None and -1 in labels:
            stray = found[labels.index(-1)][0].split("/", 1)[0]
            raise UserError(f"{folder / evaluation} has a class folder '{stray}' that {folder / 'train'} lacks",
                            "give both splits the same class folders")
        return folder / evaluation, found, labels, classes, evaluation
    found, labels, classes = _labeled(_scan(folder))
    if labels is None:  # flat folder: unlabeled, every split is all of it
        return folder, found, None, None, "all"
    position = [_held_out(rel) for rel, _ in found]
    test = [p < HELD_OUT_FRACTION for p in position]
    if not any(test) and len(found) > 1:  # tiny folders still get a test image
        test[position.index(min(position))] = True
    keep = [t == (split == "test") for t in test]
    pick = lambda items: [item for item, k in zip(items, keep) if k]
    return folder, pick(found), pick(labels), classes, "test" if split == "test" else "train"


def _open_folder(folder: Path, split: Split, strict: bool, subset: tuple, seed: int, size: int,
                 wanted: Optional[list[str]] = None) -> ImageSet:
    base, found, labels, classes, split_read = _folder_split(folder, split)
    if wanted is not None and found:
        keep, labels, classes = _keep_classes(wanted, classes, labels, f"{folder} ({split_read} split)")
        found, labels = [found[i] for i in keep.tolist()], labels.tolist()
    if not found:
        held_out = base == folder and split_read != "all"  # the ImageFolder's hashed split came out empty
        raise UserError(f"no image files found in {base}" + (f" for the {split_read} split" if held_out else ""),
                        f"put images ({', '.join(sorted(e[1:] for e in IMAGE_EXTENSIONS))}) in it, directly or "
                        "in one subfolder per class, or point --data at another folder")
    keep = _subset(len(found), subset, seed, f"{base} ({split_read} split)")
    if keep is not None:
        found = [found[i] for i in keep.tolist()]
        labels = None if labels is None else [labels[i] for i in keep.tolist()]
    listing = "\n".join(f"{rel}\t{nbytes}" for rel, nbytes in found).encode()
    streamed = ImageSet(
        name=f"{folder}:{split_read}", images=None, files=[str(base / rel) for rel, _ in found],
        labels=None if labels is None else torch.tensor(labels, dtype=torch.long), classes=classes,
        channels=3, size=size, mean=IMAGENET_STATS[0], std=IMAGENET_STATS[1], strict=strict,
        fingerprint=_digest(b"folder", str(size).encode(), listing,
                            b"" if labels is None else np.asarray(labels, np.int64).tobytes()), index=keep)
    fits = len(streamed) <= IN_MEMORY_LIMIT and len(streamed) * 3 * size * size <= IN_MEMORY_BYTES
    return _into_memory(streamed) if fits else streamed


def _into_memory(streamed: ImageSet) -> ImageSet:
    """Decode every file once (in worker processes when there are many) into one uint8 tensor, filled in place
    so that the peak is the images' own size, not twice it (a list of batches, then their concatenation)."""
    workers = min(4, os.cpu_count() or 1) if len(streamed) > 2000 else 0  # workers cost ~1 s to start
    images = torch.empty(len(streamed), streamed.channels, streamed.size, streamed.size, dtype=torch.uint8)
    kept, filled = [], 0
    for batch, _, index in streamed.batches(torch.arange(len(streamed)), 256, workers=workers):
        images[filled:filled + len(batch)] = batch  # unreadable files leave no gap: the rows stay in file order
        filled += len(batch)
        kept.append(index)
    kept = torch.cat(kept) if kept else torch.zeros(0, dtype=torch.long)
    if len(kept) == len(streamed):  # nothing unreadable: rows are unchanged
        return replace(streamed, images=images)
    labels = None if streamed.labels is None else streamed.labels[kept]
    index = kept if streamed.index is None else streamed.index[kept]
    return replace(streamed, images=images[:filled], files=[streamed.files[i] for i in kept.tolist()], labels=labels,
                   index=index)

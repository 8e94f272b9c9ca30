"""`contrastive neighbours`: the gallery images nearest to each query image in the encoder's feature space.

Query and gallery are embedded alike: the centre view at the checkpoint's image size and normalisation (as the
evaluations and `export --embeddings` see them), ranked by cosine similarity, the kNN evaluation's measure. So an
image of the gallery used as a query finds itself first, at similarity 1. The contact sheet is drawn with Pillow
(it ships with torchvision): no extra package.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from . import checkpoint as ckpt
from .data import IMAGE_EXTENSIONS, NAMED, ImageSet, decode_image
from .errors import UserError
from .evaluate import checkpoint_data, features, load_encoder, open_data
from .runtime import default_workers, pick_device
from .spec import NeighboursDataSpec, NeighboursSpec

TILE = 96  # side of a thumbnail on the contact sheet; 28-32 px images are scaled up by about 3
PAD = 6  # around each thumbnail
CAPTION = 32  # two lines of 12 px text under each thumbnail
HEADER = 24  # one line of text above the rows
CELL = (TILE + 2 * PAD, TILE + CAPTION + PAD)  # one thumbnail with its caption: a sheet is (k + 1) x queries cells


def neighbours(spec: NeighboursSpec) -> dict:
    """The k most similar gallery images of every query, with where each one is and its class; and the contact
    sheet when asked for."""
    t0 = time.perf_counter()
    source = ckpt.resolve_path(spec.checkpoint)
    queries = query_files(spec.query)
    if spec.sheet is not None:  # before the work, not after
        ckpt.check_output(spec.sheet, "--sheet", (source,), "sheet")
    device = pick_device(spec.runtime.device)
    backbone, meta = load_encoder(source, device)
    gallery, splits = open_gallery(spec.data, meta, spec.runtime.seed)
    name = gallery.name.rsplit(":", 1)[0]
    if spec.k > len(gallery):
        raise UserError(f"-k {spec.k} asks for more neighbours than the gallery {name} holds ({len(gallery)} images)",
                        f"pass -k {len(gallery)} or less, or a larger --gallery")
    size, norm = meta["image_size"], meta["normalize"]
    query_set = decode_queries(queries, gallery.size, norm)
    batch, workers = spec.runtime.batch_size, default_workers(spec.runtime.workers)
    q, _, _ = features(backbone, query_set, size, norm, device, batch, 0)
    g, labels, rows = features(backbone, gallery, size, norm, device, batch, workers)
    if spec.k > len(rows):  # the files that could not be decoded left fewer than k
        raise UserError(f"-k {spec.k} asks for more neighbours than the {len(rows)} readable images of the gallery "
                        f"{name} ({len(gallery.skipped)} unreadable files skipped)", f"pass -k {len(rows)} or less")
    similarity, nearest = (F.normalize(q, dim=1) @ F.normalize(g, dim=1).T).topk(spec.k, dim=1)
    index = rows if gallery.index is None else gallery.index[rows]  # each row's position in its split
    classes = gallery.classes

    def item(rank: int, j: int, s: float) -> dict:
        row, label = int(rows[j]), None if labels is None else int(labels[j])
        return {"rank": rank, "similarity": round(s, 6), "split": splits[row], "index": int(index[j]),
                "file": None if gallery.files is None else gallery.files[row], "label": label,
                "class": classes[label] if classes and label is not None and 0 <= label < len(classes) else None}

    result = {"checkpoint": str(source), "image_size": size, "feature_dim": g.shape[1], "k": spec.k,
              "gallery": {"data": name, "split": spec.data.split, "images": len(rows),
                          "skipped_files": len(gallery.skipped), "classes": classes},
              "queries": [{"query": path, "neighbours": [item(r + 1, j, s) for r, (j, s) in
                                                         enumerate(zip(nearest[i].tolist(), similarity[i].tolist()))]}
                          for i, path in enumerate(queries)],
              "sheet": None}
    if spec.sheet is not None:
        thumbs = [[query_set.images[i]] + [thumbnail(gallery, int(rows[j])) for j in nearest[i].tolist()]
                  for i in range(len(queries))]
        title = f"{Path(source).parent.name}/{Path(source).name} · gallery {name} ({len(rows)} images) · cosine similarity"
        write_sheet(spec.sheet, thumbs, result["queries"], title)
        result["sheet"] = str(spec.sheet)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return result


# ---- the query and the gallery ------------------------------------------------------------------------


def query_files(path: Path) -> list[str]:
    """An image file, or every image file below a folder (hidden ones skipped), sorted."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"The query {path} does not exist", "pass --query with an image file or a folder of images")
    if path.is_file():
        return [str(path)]
    found = sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not found:
        raise UserError(f"The query folder {path} holds no image files",
                        f"put images ({', '.join(sorted(e[1:] for e in IMAGE_EXTENSIONS))}) in it, or pass --query "
                        "with an image file")
    return found


def decode_queries(files: list[str], side: int, norm: dict) -> ImageSet:
    """The query images as RGB squares of the gallery's stored `side` (a folder's decoding; a named dataset's native
    size), so that the centre view resizes both alike and a gallery image used as a query has its features. An
    unreadable query stops the command: it was asked for by name."""
    images = []
    for path in files:
        try:
            images.append(decode_image(path, side, 3))
        except Exception as err:  # PIL raises many types for bad files; all mean "unreadable"
            raise UserError(f"The query image {path} cannot be read ({type(err).__name__}: {err})",
                            "pass --query with an image file (or a folder of them) that opens") from None
    return ImageSet(name="query", images=torch.stack(images), files=list(files), labels=None, classes=None, channels=3,
                    size=side, mean=tuple(norm["mean"]), std=tuple(norm["std"]), fingerprint="")


def split_of(data: ImageSet) -> str:
    return data.name.rsplit(":", 1)[1]  # "synthetic:test" -> "test"; a flat folder's is "all"


def open_gallery(spec: NeighboursDataSpec, meta: dict, seed: int) -> tuple[ImageSet, list[str]]:
    """The gallery (by default the checkpoint's own data) and each of its rows' split. --split all joins both splits
    (a flat folder has only one, 'all'), then --subset draws from the whole."""
    if spec.split != "all":
        data = open_data(spec, meta, spec.split, seed, spec.subset)
        return data, [split_of(data)] * len(data)
    parts = [open_data(spec, meta, "train", seed, None)]
    if split_of(parts[0]) != "all":
        try:
            parts.append(open_data(spec, meta, "test", seed, None))
        except UserError:  # a folder's held-out split may be empty (one image; --classes of images all in train)
            if checkpoint_data(spec, meta).source in NAMED:
                raise
    data = joined(parts)
    splits = [split_of(p) for p in parts for _ in range(len(p))]
    if spec.subset is not None:
        if spec.subset > len(data):
            raise UserError(f"--subset {spec.subset} asks for more images than the gallery {data.name} holds "
                            f"({len(data)})", f"pass --subset {len(data)} or less, or leave it out")
        keep = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:spec.subset].sort().values
        data, splits = taken(data, keep), [splits[i] for i in keep.tolist()]
    return data, splits


def joined(parts: list[ImageSet]) -> ImageSet:
    """The splits of one dataset as one set; rows keep their position in their own split in `index`."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    in_memory = all(p.images is not None for p in parts)
    labelled = all(p.labels is not None for p in parts)
    return replace(first, name=first.name.rsplit(":", 1)[0] + ":all",
                   images=torch.cat([p.images for p in parts]) if in_memory else None,
                   files=None if first.files is None else [f for p in parts for f in p.files],
                   labels=torch.cat([p.labels for p in parts]) if labelled else None,
                   index=torch.cat([torch.arange(len(p)) if p.index is None else p.index for p in parts]),
                   fingerprint="+".join(p.fingerprint for p in parts), skipped=[s for p in parts for s in p.skipped])


def taken(data: ImageSet, keep: torch.Tensor) -> ImageSet:
    rows = keep.tolist()
    return replace(data, images=None if data.images is None else data.images[keep],
                   files=None if data.files is None else [data.files[i] for i in rows],
                   labels=None if data.labels is None else data.labels[keep],
                   index=keep if data.index is None else data.index[keep])


def thumbnail(data: ImageSet, row: int) -> torch.Tensor:
    """uint8 [C, S, S] of a gallery row: from memory, or decoded again from its file."""
    return data.images[row] if data.images is not None else decode_image(data.files[row], data.size, data.channels)


# ---- the contact sheet --------------------------------------------------------------------------------


def write_sheet(path: Path, rows: list[list[torch.Tensor]], queries: list[dict], title: str) -> None:
    """One row per query: the query's thumbnail (shaded), then its neighbours, each with rank, similarity and class
    (or file name, or dataset index) under it. Written atomically."""
    from PIL import Image, ImageDraw, ImageFont

    columns = len(rows[0])
    sheet = Image.new("RGB", (columns * CELL[0], HEADER + len(rows) * CELL[1]), "white")
    draw = ImageDraw.Draw(sheet)
    try:  # Pillow's bundled scalable font (Pillow >= 10.1); the older bitmap font otherwise
        draw.font = ImageFont.load_default(size=12)
    except TypeError:
        pass
    draw.text((PAD, 6), fitted(draw, title, sheet.width - 2 * PAD), fill="black")
    for r, (thumbs, query) in enumerate(zip(rows, queries)):
        y = HEADER + r * CELL[1]
        draw.rectangle([0, y, CELL[0] - 1, y + CELL[1] - 1], fill=(232, 236, 242))  # the query's cell
        captions = [("query", Path(query["query"]).name)] + [
            (f"{n['rank']}  {n['similarity']:.3f}",
             n["class"] or (Path(n["file"]).name if n["file"] else f"{n['split']} #{n['index']}"))
            for n in query["neighbours"]]
        for c, (image, (first, second)) in enumerate(zip(thumbs, captions)):
            x = c * CELL[0]
            sheet.paste(as_tile(image), (x + PAD, y + PAD))
            draw.text((x + PAD, y + PAD + TILE + 2), first, fill="black")
            draw.text((x + PAD, y + PAD + TILE + 15), fitted(draw, second, CELL[0] - PAD), fill=(70, 70, 70))
        draw.line([CELL[0] - 1, y, CELL[0] - 1, y + CELL[1] - 1], fill=(150, 160, 175))
    try:
        ckpt.atomic_write(Path(path), lambda tmp: sheet.save(tmp, format="PNG"))
    except OSError as err:
        raise UserError(f"Could not write the contact sheet {path} ({err.strerror or err})",
                        "check the free disk space and the folder's permissions, or choose another --sheet") from None


def as_tile(image: torch.Tensor):
    """uint8 [C, S, S] as a TILE x TILE RGB thumbnail: small images scaled up without blurring their pixels."""
    from PIL import Image

    pixels = image.permute(1, 2, 0).numpy()
    picture = Image.fromarray(pixels[..., 0], "L") if pixels.shape[2] == 1 else Image.fromarray(pixels, "RGB")
    return picture.convert("RGB").resize((TILE, TILE), Image.NEAREST if image.shape[-1] <= 64 else Image.LANCZOS)


def fitted(draw, text: str, width: float) -> str:
    """`text`, cut with an ellipsis to fit `width` pixels."""
    if draw.textlength(text) <= width:
        return text
    while text and draw.textlength(text + "…") > width:
        text = text[:-1]
    return text + "…"

"""The zoo table: every registered method pretrained at one fixed budget on Fashion-MNIST, evaluated the same way,
written into docs/methods.md (between the ZOO markers) with a PNG bar chart.

    python examples/zoo_table.py                       # all methods, ~15-25 min on 2 CPU cores
    python examples/zoo_table.py --methods simclr byol --no-write
    python examples/zoo_table.py --vit-methods mocov3        # which methods also get a ViT row (default: the ViT tests')

Budget (the learning tests' budget): small CNN, 10,000 training images, 15 epochs, batch 256, crops of 20-100%,
each method's own recipe otherwise. Evaluation: weighted kNN (T 0.1, k 20 and 200) with 10,000 training images
as the bank and the whole test split (10,000) as queries; a linear probe on cached centre-view features of the same
10,000 images (100 epochs, lr 1, step schedule); images/s of pretraining and its minutes. Methods that need colour
(CMC) cannot run on grayscale data and are listed without figures. Reference rows: raw pixels, and each method's
encoder at random initialisation is not repeated (same architecture: one random-init small CNN row).

ViT rows: the learning tests' ViT budget and settings (tests/test_learning.py VIT_BUDGET and VIT_PER_METHOD: a
2-block ViT-tiny with 7 px patches, 5k images), each method's ViT recipe, each after a random-init row of its own ViT
(the recipes differ in position embeddings: MoCo v3's are fixed sine-cosine, DINO's learned).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from contrastive_cli.data import open_dataset  # noqa: E402
from contrastive_cli.evaluate import knn_eval, linear_probe, weighted_knn  # noqa: E402
from contrastive_cli.methods import SPECS  # noqa: E402
from contrastive_cli.spec import KnnSpec, LinearProbeSpec, PretrainSpec  # noqa: E402
from contrastive_cli.train import prepare, train  # noqa: E402

BUDGET = {"backbone": {"name": "small_cnn"}, "data": {"source": "fashion-mnist", "subset": 10000},
          "optim": {"epochs": 15}, "augment": {"crop_scale": (0.2, 1.0)}}
BANK = 10000
START, END = "<!-- ZOO:START (examples/zoo_table.py writes this block) -->", "<!-- ZOO:END -->"


def sections(overrides: dict) -> dict:
    """{'optim__lr': 0.1, 'backbone': 'x'} -> {'optim': {'lr': 0.1}, 'backbone': {'name': 'x'}}."""
    out: dict = {}
    for key, value in overrides.items():
        section, field = key.split("__") if "__" in key else (key, "name")
        if section in ("epochs", "subset"):
            section, field = {"epochs": ("optim", "epochs"), "subset": ("data", "subset")}[section]
        out.setdefault(section, {})[field] = value
    return out


def per_method_overrides(family: str = "cnn") -> dict:
    """The learning tests' per-method settings (tests/test_learning.py PER_METHOD, or VIT_BUDGET and
    VIT_PER_METHOD for ViT rows), so the table and the tests agree."""
    import test_learning as t
    if family == "vit":
        return {m: sections({**t.VIT_BUDGET, **t.VIT_PER_METHOD.get(m, {})}) for m in SPECS}
    return {method: sections(overrides) for method, overrides in t.PER_METHOD.items()}


def merged(overrides: dict) -> dict:
    spec = json.loads(json.dumps(BUDGET))
    for section, fields in overrides.items():
        spec.setdefault(section, {}).update(fields)
    return spec


def run_method(name: str, out: Path, overrides: dict, family: str = "cnn") -> dict:
    spec = merged(overrides)
    spec["method"] = {**spec.get("method", {}), "name": name}  # keeps the test's method settings (head widths, ...)
    spec["runtime"] = {"out": str(out)}
    shutil.rmtree(out, ignore_errors=True)
    run = prepare(PretrainSpec.model_validate(spec))
    t0 = time.perf_counter()
    stats = train(run)
    minutes = (time.perf_counter() - t0) / 60
    knn = knn_eval(KnnSpec(checkpoint=run.checkpoint_path, k=[20, 200], data={"subset": BANK}))
    probe = linear_probe(LinearProbeSpec(checkpoint=run.checkpoint_path, cached=True, data={"subset": BANK},
                                         optim={"lr": 1.0}))
    top1 = {r["k"]: r["top1"] for r in knn["results"]}
    return {"method": name if family == "cnn" else f"{name} (ViT)", "paper": SPECS[name].paper, "knn20": top1[20], "knn200": top1[200],
            "probe": probe["top1"], "images_per_s": round(stats["images_per_s"]), "minutes": round(minutes, 1),
            "mi_bound": round(stats["mi_bound"], 2) if "mi_bound" in stats else None,
            "collapse": stats.get("collapse", {}).get("verdict")}


def pixel_row() -> dict:
    bank = open_dataset("fashion-mnist", "train", subset=BANK, seed=0)
    test = open_dataset("fashion-mnist", "test")
    r = weighted_knn(bank.images.flatten(1).float(), bank.labels, test.images.flatten(1).float(), test.labels,
                     [20, 200], 0.1, 10)
    return {"method": "raw pixels", "knn20": r[20]["top1"], "knn200": r[200]["top1"]}


def random_init_row(out: Path, overrides: dict | None = None, label: str = "random-init small CNN",
                    method: str = "simclr") -> dict:
    """An encoder at random initialisation (the small CNN, or a ViT row's ViT as `method`'s recipe builds it): a
    0-epoch stand-in, evaluated like the trained encoders."""
    from contrastive_cli import checkpoint as ckpt
    shutil.rmtree(out, ignore_errors=True)
    spec = merged(overrides or {})
    spec["method"] = {**(spec.get("method", {}) if method != "simclr" else {}), "name": method}
    spec["runtime"] = {"out": str(out)}
    run = prepare(PretrainSpec.model_validate(spec))
    run.save()
    knn = knn_eval(KnnSpec(checkpoint=run.checkpoint_path, k=[20, 200], data={"subset": BANK}))
    probe = linear_probe(LinearProbeSpec(checkpoint=run.checkpoint_path, cached=True, data={"subset": BANK},
                                         optim={"lr": 1.0}))
    top1 = {r["k"]: r["top1"] for r in knn["results"]}
    assert ckpt.read_meta(run.checkpoint_path)["step"] == 0
    return {"method": label, "knn20": top1[20], "knn200": top1[200], "probe": probe["top1"]}


def markdown(rows: list[dict], skipped: list[str]) -> str:
    lines = [START, "", "| method | paper | kNN k=20 | kNN k=200 | linear probe (cached) | images/s | minutes | "
             "I ≥ (nats) |", "|---|---|---|---|---|---|---|---|"]
    cnn_rows = [r for r in rows if "ViT" not in r["method"]]
    for r in cnn_rows + [None] + [r for r in rows if "ViT" in r["method"]]:
        if r is None:  # the methods without a row on grayscale data close the small-CNN part
            lines += [f"| `{name}` | {SPECS[name].paper} | needs colour | – | – | – | – | – |" for name in skipped]
            continue
        cells = [f"`{r['method']}`" if "paper" in r else r["method"], r.get("paper", "–")]
        cells += [f"{r[k]:.2f}" if r.get(k) is not None else "–" for k in ("knn20", "knn200", "probe")]
        cells += [str(r[k]) if r.get(k) is not None else "–" for k in ("images_per_s", "minutes", "mi_bound")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Measured with `python examples/zoo_table.py` on {time.strftime('%Y-%m-%d')}; "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads. ![zoo](zoo.png)", "", END]
    return "\n".join(lines)


def bar_chart(rows: list[dict], path: Path) -> None:
    """Horizontal bars of kNN k=200 top-1 per method, baselines in grey."""
    from PIL import Image, ImageDraw
    lo = min(r["knn200"] for r in rows) - 2
    hi = max(r["knn200"] for r in rows) + 1
    width, bar_h, left = 760, 26, 200
    image = Image.new("RGB", (width, 40 + bar_h * len(rows)), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 10), f"weighted kNN top-1 (k=200), Fashion-MNIST, {lo:.0f}-{hi:.0f}%", fill="black")
    for i, r in enumerate(rows):
        y = 34 + i * bar_h
        length = (r["knn200"] - lo) / (hi - lo) * (width - left - 70)
        draw.text((10, y + 6), r["method"], fill="black")
        draw.rectangle([left, y + 3, left + length, y + bar_h - 3], fill="#4c72b0" if "paper" in r else "#999999")
        draw.text((left + length + 6, y + 6), f"{r['knn200']:.2f}", fill="black")
    image.save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", nargs="*", default=list(SPECS))
    ap.add_argument("--vit-methods", nargs="*", default=None, help="methods that also get a ViT row "
                    "[default: those of the ViT learning tests]")
    ap.add_argument("--out", default="runs/zoo")
    ap.add_argument("--epochs", type=int, default=BUDGET["optim"]["epochs"], help="a smoke test of the script only")
    ap.add_argument("--no-write", action="store_true", help="print the table instead of writing docs/methods.md")
    ap.add_argument("--rerun", nargs="*", default=[], help="measure these methods again even if --out holds their row")
    args = ap.parse_args()
    BUDGET["optim"]["epochs"] = args.epochs
    overrides = per_method_overrides()
    rows, skipped = [pixel_row(), random_init_row(Path(args.out) / "random-init")], []
    for name in args.methods:
        if SPECS[name].needs_colour:
            skipped.append(name)
            continue
        saved = Path(args.out) / f"{name}.json"  # rows already measured are kept unless --rerun
        if saved.exists() and name not in args.rerun:
            rows.append(json.loads(saved.read_text()))
        else:
            rows.append(run_method(name, Path(args.out) / name, overrides.get(name, {})))
            saved.write_text(json.dumps(rows[-1]))
        print(json.dumps(rows[-1]), flush=True)
    vit = per_method_overrides("vit")
    import test_learning
    for name in test_learning.VIT_METHODS if args.vit_methods is None else args.vit_methods:
        rows.append(random_init_row(Path(args.out) / f"random-init-vit-{name}", vit[name],
                                    f"random-init ViT ({name}'s)", name))
        saved = Path(args.out) / f"{name}-vit.json"
        if saved.exists() and name not in args.rerun:
            rows.append(json.loads(saved.read_text()))
        else:
            rows.append(run_method(name, Path(args.out) / f"{name}-vit", vit[name], "vit"))
            saved.write_text(json.dumps(rows[-1]))
        print(json.dumps(rows[-1]), flush=True)
    table = markdown(rows, skipped)
    if args.no_write:
        print(table)
        return
    doc = ROOT / "docs" / "methods.md"
    text = doc.read_text()
    block = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    doc.write_text(block.sub(lambda _: table, text) if block.search(text) else text.rstrip() + "\n\n" + table + "\n")
    bar_chart(rows, ROOT / "docs" / "zoo.png")
    print(f"wrote {doc} and {ROOT / 'docs' / 'zoo.png'}")


if __name__ == "__main__":
    main()

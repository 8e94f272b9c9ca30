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

Pretext tasks (relloc, jigsaw, rotation, inpainting; colorization and split-brain need colour) get rows like the
others and are also written, next to the contrastive methods, into docs/history.md with its chart (history.png).
`--data synthetic-colour` measures the history page's second table on the embedded coloured shapes, where the
colour tasks can run:

    python examples/zoo_table.py --data synthetic-colour   # the pretext tasks + SYNTH_CONTRASTIVE, ~15 min

`--from-docs` reads rows already in the docs as measured (e.g. on a fresh machine without runs/zoo), so that only
new methods are run.

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
# The table's epochs where it differs from BUDGET's (the learning tests now run shorter budgets of their own).
ZOO_EPOCHS = {"cpcv2": 10, "barlowtwins": 8, "vicreg": 8, "dino": 10}
BANK = 10000
DATA_BN_ROW = "random-init small CNN, BN statistics of the data"
START, END = "<!-- ZOO:START (examples/zoo_table.py writes this block) -->", "<!-- ZOO:END -->"
# docs/history.md: the same rows grouped by family, and the synthetic-colour table
HISTORY = {"fashion-mnist": ("<!-- HISTORY-FASHION-MNIST:START (examples/zoo_table.py) -->",
                             "<!-- HISTORY-FASHION-MNIST:END -->"),
           "synthetic-colour": ("<!-- HISTORY-SYNTHETIC-COLOUR:START (examples/zoo_table.py) -->",
                                "<!-- HISTORY-SYNTHETIC-COLOUR:END -->")}
# synthetic-colour: 5,000 images of 32 px; every pretext task and these contrastive methods (the first-stage ones the
# pretext papers were followed by, CMC with its L/ab views, and the two most used later ones)
SYNTH_BUDGET = {"backbone": {"name": "small_cnn"}, "data": {"source": "synthetic-colour"}, "optim": {"epochs": 6},
                "augment": {"crop_scale": (0.2, 1.0)}}
SYNTH_CONTRASTIVE = ["instdisc", "cmc", "simclr", "mocov2", "byol"]
# CMC on the coloured shapes: its learning test's settings (tests/test_cmc.py: in-batch negatives, lr 0.01)
SYNTH_SETTINGS = {"cmc": {"method": {"contrast": "in-batch"}, "optim": {"lr": 0.01}}}


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
    VIT_PER_METHOD for ViT rows) with the table's epochs, so the table and the tests agree on everything else."""
    import test_learning as t
    if family == "vit":
        return {m: sections({**t.VIT_BUDGET, **t.VIT_PER_METHOD.get(m, {})}) for m in SPECS}
    return {m: sections({**t.PER_METHOD.get(m, {}), **({"epochs": ZOO_EPOCHS[m]} if m in ZOO_EPOCHS else {})})
            for m in SPECS}


def merged(overrides: dict, budget: dict = BUDGET) -> dict:
    spec = json.loads(json.dumps(budget))
    for section, fields in overrides.items():
        spec.setdefault(section, {}).update(fields)
    return spec


def evaluate(checkpoint: Path, bank: int | None) -> dict:
    """kNN at k 20 and 200 and the cached linear probe (lr 1), on the checkpoint's own data."""
    knn = knn_eval(KnnSpec(checkpoint=checkpoint, k=[20, 200], data={"subset": bank}))
    probe = linear_probe(LinearProbeSpec(checkpoint=checkpoint, cached=True, data={"subset": bank},
                                         optim={"lr": 1.0}))
    top1 = {r["k"]: r["top1"] for r in knn["results"]}
    return {"knn20": top1[20], "knn200": top1[200], "probe": probe["top1"]}


def run_method(name: str, out: Path, overrides: dict, family: str = "cnn", budget: dict = BUDGET,
               bank: int | None = BANK) -> dict:
    spec = merged(overrides, budget)
    spec["method"] = {**spec.get("method", {}), "name": name}  # keeps the test's method settings (head widths, ...)
    spec["runtime"] = {"out": str(out)}
    shutil.rmtree(out, ignore_errors=True)
    run = prepare(PretrainSpec.model_validate(spec))
    t0 = time.perf_counter()
    stats = train(run)
    minutes = (time.perf_counter() - t0) / 60
    return {"method": name if family == "cnn" else f"{name} (ViT)", "paper": SPECS[name].paper,
            **evaluate(run.checkpoint_path, bank), "images_per_s": round(stats["images_per_s"]),
            "minutes": round(minutes, 1), "mi_bound": round(stats["mi_bound"], 2) if "mi_bound" in stats else None,
            "collapse": stats.get("collapse", {}).get("verdict")}


def pixel_row(source: str = "fashion-mnist", bank: int | None = BANK) -> dict:
    train_set = open_dataset(source, "train", subset=bank, seed=0)
    test = open_dataset(source, "test")
    r = weighted_knn(train_set.images.flatten(1).float(), train_set.labels, test.images.flatten(1).float(),
                     test.labels, [20, 200], 0.1, 10)
    return {"method": "raw pixels", "knn20": r[20]["top1"], "knn200": r[200]["top1"]}


def random_init_row(out: Path, overrides: dict | None = None, label: str = "random-init small CNN",
                    method: str = "simclr", budget: dict = BUDGET, bank: int | None = BANK,
                    data_bn: bool = False) -> dict:
    """An encoder at random initialisation (the small CNN, or a ViT row's ViT as `method`'s recipe builds it): a
    0-epoch stand-in, evaluated like the trained encoders; `data_bn`: with its batch-norm statistics measured on 2000
    training images (the pretext tasks' stronger control, examples/learning_budget.py recalibrated)."""
    from contrastive_cli import checkpoint as ckpt
    from learning_budget import recalibrated
    shutil.rmtree(out, ignore_errors=True)
    spec = merged(overrides or {}, budget)
    spec["method"] = {**(spec.get("method", {}) if method != "simclr" else {}), "name": method}
    spec["runtime"] = {"out": str(out)}
    run = prepare(PretrainSpec.model_validate(spec))
    if data_bn:
        norm = {"mean": list(run.data.mean), "std": list(run.data.std)}
        recalibrated(run.method.backbone, run.data.images[:2000], run.spec.data.image_size, norm)
    run.save()
    assert ckpt.read_meta(run.checkpoint_path)["step"] == 0
    return {"method": label, **evaluate(run.checkpoint_path, bank)}


def cell(r: dict, key: str) -> str:
    value = r.get(key)
    return "–" if value is None else f"{value:.2f}" if isinstance(value, float) and key in ("knn20", "knn200", "probe") \
        else str(value)


def markdown(rows: list[dict], skipped: list[str]) -> str:
    lines = [START, "", "| method | paper | kNN k=20 | kNN k=200 | linear probe (cached) | images/s | minutes | "
             "I ≥ (nats) |", "|---|---|---|---|---|---|---|---|"]
    cnn_rows = [r for r in rows if "ViT" not in r["method"]]
    for r in cnn_rows + [None] + [r for r in rows if "ViT" in r["method"]]:
        if r is None:  # the methods without a row on grayscale data close the small-CNN part
            lines += [f"| `{name}` | {SPECS[name].paper} | needs colour | – | – | – | – | – |" for name in skipped]
            continue
        cells = [f"`{r['method']}`" if "paper" in r else r["method"], r.get("paper", "–")]
        cells += [cell(r, k) for k in ("knn20", "knn200", "probe", "images_per_s", "minutes", "mi_bound")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Measured with `python examples/zoo_table.py`; rows last run on {time.strftime('%Y-%m-%d')}; "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads. ![zoo](zoo.png)", "", END]
    return "\n".join(lines)


def family(r: dict) -> str:
    name = r["method"].split(" ")[0]
    return "pretext task" if name in SPECS and SPECS[name].pretext else "instance discrimination and after" \
        if name in SPECS else "reference"


def history_markdown(rows: list[dict], source: str, skipped: list[str] = ()) -> str:
    """The history page's table for `source`: references, then the pretext tasks, then the contrastive and later
    methods, each group oldest first."""
    start, end = HISTORY[source]
    lines = [start, "", "| method | paper | family | kNN k=20 | kNN k=200 | linear probe | minutes |",
             "|---|---|---|---|---|---|---|"]
    cnn = [r for r in rows if "ViT" not in r["method"]]
    order = {"reference": 0, "pretext task": 1, "instance discrimination and after": 2}
    cnn.sort(key=lambda r: (order[family(r)], SPECS[r["method"]].year if r["method"] in SPECS else 0))
    for r in cnn:
        cells = [f"`{r['method']}`" if "paper" in r else r["method"], r.get("paper", "–"), family(r)]
        lines.append("| " + " | ".join(cells + [cell(r, k) for k in ("knn20", "knn200", "probe", "minutes")]) + " |")
    lines += [f"| `{name}` | {SPECS[name].paper} | {family({'method': name})} | needs colour | – | – | – |"
              for name in skipped]
    lines += ["", f"Written on {time.strftime('%Y-%m-%d')} by `python examples/zoo_table.py"
              f"{'' if source == 'fashion-mnist' else ' --data ' + source}`; rows measured by an earlier run are "
              "kept (on Fashion-MNIST the contrastive rows date from the zoo table's run).", "", end]
    return "\n".join(lines)


ZOO_COLUMNS = ("knn20", "knn200", "probe", "images_per_s", "minutes", "mi_bound")
HISTORY_COLUMNS = ("family", "knn20", "knn200", "probe", "minutes")


def read_rows(text: str, start: str, end: str, columns: tuple[str, ...] = ZOO_COLUMNS) -> list[dict]:
    """Rows of a table block this script wrote (--from-docs, the history chart): numbers back to numbers, '–' to
    None; `columns`: the block's columns after method and paper."""
    block = text.split(start, 1)[1].split(end, 1)[0] if start in text else ""
    lines = [line for line in block.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    rows = []
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if "needs colour" in cells:
            continue
        name, paper = cells[0].strip("`"), cells[1]
        values = dict(zip(columns, cells[2:]))
        row = {"method": name, **({"paper": paper} if paper != "–" else {})}
        for key, value in values.items():
            row[key] = value if key == "family" else None if value == "–" else int(value) if key == "images_per_s" \
                else float(value)
        rows.append(row)
    return rows


def replace_block(doc: Path, block: str, start: str, end: str) -> None:
    text = doc.read_text()
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    doc.write_text(pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n")


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


def history_chart(tables: dict[str, list[dict]], path: Path) -> None:
    """One panel per dataset: linear-probe top-1 (bars) and kNN k=200 (dots) of each method, pretext tasks in
    orange and the contrastive and later methods in blue, oldest at the top; the random-init encoder's probe dashed,
    with batch-norm statistics of the data dotted."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colours = {"pretext task": "#dd8452", "instance discrimination and after": "#4c72b0"}
    fig, axes = plt.subplots(1, len(tables), figsize=(6.2 * len(tables), 7.5), squeeze=False)
    for ax, (source, rows) in zip(axes[0], tables.items()):
        methods = [r for r in rows if "paper" in r and "ViT" not in r["method"] and r.get("probe") is not None]
        methods.sort(key=lambda r: (family(r) != "pretext task", SPECS[r["method"]].year), reverse=True)
        y = range(len(methods))
        ax.barh(y, [r["probe"] for r in methods], color=[colours[family(r)] for r in methods])
        ax.plot([r["knn200"] for r in methods], y, "k.", label="kNN k=200")
        ax.set_yticks(list(y), [r["method"] for r in methods])
        references = [r for r in rows if r["method"].startswith("random-init small CNN") and r.get("probe")]
        for r, style in zip(references, ("--", ":")):
            which = "random-init" if r["method"] != DATA_BN_ROW else "random-init, data BN"
            ax.axvline(r["probe"], color="grey", ls=style, label=f"{which} probe {r['probe']:.1f}")
        values = [r["probe"] for r in methods + references] + [r["knn200"] for r in methods]
        ax.set_xlim(min(values) - 5, max(values) + 2)
        ax.set_xlabel("top-1 (%): bars linear probe, dots kNN k=200")
        ax.set_title(source)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=3, fontsize=8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
    fig.legend(handles, list(colours), loc="upper center", ncol=2)
    fig.tight_layout(rect=(0, 0.02, 1, 0.95))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def cached_or_run(saved: Path, rerun: bool, measure) -> dict:
    """A row from `saved` (measured earlier) unless `rerun`, else measured now and saved."""
    if saved.exists() and not rerun:
        return json.loads(saved.read_text())
    saved.parent.mkdir(parents=True, exist_ok=True)
    row = measure()
    saved.write_text(json.dumps(row))
    return row


def synthetic_tables(args) -> None:
    """The history page's second table: the pretext tasks (the colour ones included) and SYNTH_CONTRASTIVE on the
    coloured synthetic shapes, at SYNTH_BUDGET, evaluated on the whole train (bank) and test splits."""
    source, out = "synthetic-colour", Path(args.out + "-synthetic-colour")
    SYNTH_BUDGET["optim"]["epochs"] = args.epochs or SYNTH_BUDGET["optim"]["epochs"]
    names = args.methods or [m for m in SPECS if SPECS[m].pretext or m in SYNTH_CONTRASTIVE]
    rows = [pixel_row(source, None),
            cached_or_run(out / "random-init.json", "random-init" in args.rerun, lambda: random_init_row(
                out / "random-init", budget=SYNTH_BUDGET, bank=None)),
            cached_or_run(out / "random-init-bn.json", "random-init-bn" in args.rerun, lambda: random_init_row(
                out / "random-init-bn", label=DATA_BN_ROW, budget=SYNTH_BUDGET, bank=None, data_bn=True))]
    for name in names:
        rows.append(cached_or_run(out / f"{name}.json", name in args.rerun, lambda: run_method(
            name, out / name, SYNTH_SETTINGS.get(name, {}), budget=SYNTH_BUDGET, bank=None)))
        print(json.dumps(rows[-1]), flush=True)
    write_history(source, rows, [], args.no_write)


def write_history(source: str, rows: list[dict], skipped: list[str], no_write: bool) -> None:
    table = history_markdown(rows, source, skipped)
    if no_write:
        print(table)
        return
    doc = ROOT / "docs" / "history.md"
    replace_block(doc, table, *HISTORY[source])
    text = doc.read_text()
    history_chart({s: read_rows(text, *HISTORY[s], HISTORY_COLUMNS) for s in HISTORY}, ROOT / "docs" / "history.png")
    print(f"wrote {doc} and {ROOT / 'docs' / 'history.png'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", choices=["fashion-mnist", "synthetic-colour"], default="fashion-mnist")
    ap.add_argument("--methods", nargs="*", default=None, help="[default: every method that runs on the data]")
    ap.add_argument("--vit-methods", nargs="*", default=None, help="methods that also get a ViT row "
                    "[default: those of the ViT learning tests]")
    ap.add_argument("--out", default="runs/zoo")
    ap.add_argument("--epochs", type=int, default=None, help="a smoke test of the script only")
    ap.add_argument("--no-write", action="store_true", help="print the tables instead of writing the docs")
    ap.add_argument("--rerun", nargs="*", default=[], help="measure these methods again even if --out holds their row")
    ap.add_argument("--from-docs", action="store_true", help="take the rows docs/methods.md already shows as measured "
                    "(a fresh machine without --out's saved rows), so that only methods without a row run")
    args = ap.parse_args()
    if args.data == "synthetic-colour":
        return synthetic_tables(args)
    BUDGET["optim"]["epochs"] = args.epochs or BUDGET["optim"]["epochs"]
    out = Path(args.out)
    if args.from_docs:  # seed --out with the documented rows
        out.mkdir(parents=True, exist_ok=True)
        for row in read_rows((ROOT / "docs" / "methods.md").read_text(), START, END):
            key = {"random-init small CNN": "random-init"}.get(row["method"], row["method"].replace(" (ViT)", "-vit"))
            if not (out / f"{key}.json").exists():
                (out / f"{key}.json").write_text(json.dumps(row))
    overrides = per_method_overrides()
    rows = [pixel_row(), cached_or_run(out / "random-init.json", "random-init" in args.rerun,
                                       lambda: random_init_row(out / "random-init")),
            cached_or_run(out / "random-init-bn.json", "random-init-bn" in args.rerun,
                          lambda: random_init_row(out / "random-init-bn", label=DATA_BN_ROW, data_bn=True))]
    skipped = []
    for name in args.methods or list(SPECS):
        if SPECS[name].needs_colour:
            skipped.append(name)
            continue
        rows.append(cached_or_run(out / f"{name}.json", name in args.rerun,
                                  lambda: run_method(name, out / name, overrides.get(name, {}))))
        print(json.dumps(rows[-1]), flush=True)
    vit = per_method_overrides("vit")
    import test_learning
    for name in test_learning.VIT_METHODS if args.vit_methods is None else args.vit_methods:
        rows.append(cached_or_run(out / f"random-init ViT ({name}'s).json", f"{name}-vit" in args.rerun,
                                  lambda: random_init_row(out / f"random-init-vit-{name}", vit[name],
                                                          f"random-init ViT ({name}'s)", name)))
        rows.append(cached_or_run(out / f"{name}-vit.json", f"{name}-vit" in args.rerun,
                                  lambda: run_method(name, out / f"{name}-vit", vit[name], "vit")))
        print(json.dumps(rows[-1]), flush=True)
    table = markdown(rows, skipped)
    if args.no_write:
        print(table)
    else:
        replace_block(ROOT / "docs" / "methods.md", table, START, END)
        bar_chart(rows, ROOT / "docs" / "zoo.png")
        print(f"wrote {ROOT / 'docs' / 'methods.md'} and {ROOT / 'docs' / 'zoo.png'}")
    write_history("fashion-mnist", rows, skipped, args.no_write)


if __name__ == "__main__":
    main()

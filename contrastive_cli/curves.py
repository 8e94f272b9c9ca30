"""Training curves from metrics.jsonl (`contrastive plot RUN...`, and the figure a finished pretrain leaves in its run
directory): loss, learning rate, online kNN top-1, effective rank and images/s against epochs, one colour per run.
matplotlib is an optional extra; the figure is drawn on a bare Figure (Agg), never through pyplot's global state."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from . import checkpoint as ckpt
from .errors import UserError
from .extras import require

FEATURE = "Drawing curves"


def read_run(path: Path) -> tuple[str, list[dict], list[dict]]:
    """(label, step records, epoch records) of a run directory or a metrics.jsonl file."""
    metrics = path / "metrics.jsonl" if path.is_dir() else path
    if not metrics.is_file():
        raise UserError(f"{path} is not a run directory with a metrics.jsonl (nor such a file)",
                        "pass the folder a `contrastive pretrain` wrote (its --out, or runs/<name>)")
    steps, epochs = [], []
    for line in metrics.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line torn by a kill: the resume drops it too
            continue
        (epochs if record.get("type") == "epoch" else steps).append(record)
    if not steps and not epochs:
        raise UserError(f"{metrics} holds no records yet", "plot it once the run has done a step")
    spec_file = metrics.parent / "spec.json"
    method = json.loads(spec_file.read_text())["method"]["name"] if spec_file.is_file() else ""
    name = metrics.parent.name
    return (f"{name} ({method})" if method and method not in name else name), steps, epochs


def fractional_epochs(steps: list[dict]) -> list[float]:
    """x of each step record: epoch e's n steps at e - 1 + 1/n, ..., e (an epoch record sits at e)."""
    per_epoch: dict[int, list[int]] = {}
    for r in steps:
        per_epoch.setdefault(r["epoch"], []).append(r["step"])
    first = {e: min(s) for e, s in per_epoch.items()}
    return [r["epoch"] - 1 + (r["step"] - first[r["epoch"]] + 1) / len(per_epoch[r["epoch"]]) for r in steps]


def draw_curves(runs: list[Path], out: Path) -> dict:
    """Write the PNG; returns what was drawn."""
    require("matplotlib", "plot", FEATURE, "read metrics.jsonl directly (one JSON record per line)")
    from matplotlib.figure import Figure
    read = [read_run(Path(p)) for p in runs]
    figure = Figure(figsize=(15, 8.4), layout="constrained")
    loss, lr, knn, rank, speed, legend = figure.subplots(2, 3).flatten()
    drawn = {"loss": 0, "lr": 0, "knn": 0, "rank": 0, "images_per_s": 0}
    for i, (label, steps, epochs) in enumerate(read):
        colour = f"C{i % 10}"
        xs, ex = fractional_epochs(steps), [e["epoch"] for e in epochs]
        if steps:
            loss.plot(xs, [r["loss"] for r in steps], color=colour, alpha=0.3, linewidth=0.8)
            lr.plot(xs, [r["lr"] for r in steps], color=colour)
            drawn["lr"] += 1
        if epochs:
            loss.plot(ex, [e["loss"] for e in epochs], color=colour, marker="o", markersize=3)
            speed.plot(ex, [e["images_per_s"] for e in epochs], color=colour, marker="o", markersize=3)
            drawn["images_per_s"] += 1
        drawn["loss"] += 1
        with_knn = [e for e in epochs if "knn" in e]
        for key, style in (("top1_k20", "--"), ("top1_k200", "-")):
            points = [(e["epoch"], e["knn"][key]) for e in with_knn if key in e["knn"]]
            if points:
                knn.plot(*zip(*points), color=colour, linestyle=style, marker="o", markersize=3)
                drawn["knn"] += 1
        with_rank = [e for e in epochs if isinstance(e.get("collapse"), dict)]
        for part, style in (("backbone", "-"), ("projector", "--")):
            points = [(e["epoch"], e["collapse"][part]["rank"]) for e in with_rank
                      if isinstance(e["collapse"].get(part), dict)]
            if points:
                rank.plot(*zip(*points), color=colour, linestyle=style, marker="o", markersize=3)
                drawn["rank"] += 1
        legend.plot([], [], color=colour, linewidth=3, label=label)
    titles = {loss: "loss (steps faint, epoch means with dots)", lr: "learning rate",
              knn: "online kNN top-1 % (solid k=200, dashed k=20)",
              rank: "effective rank (solid backbone, dashed projector)", speed: "images/s (epoch)"}
    empty = {knn: "no kNN records: pretrain with --eval-every N on labelled data",
             rank: "no collapse-monitor records (--monitor-images 0?)"}
    for axes, title in titles.items():
        axes.set_title(title, fontsize=10)
        axes.set_xlabel("epoch")
        axes.grid(alpha=0.3)
        if axes in empty and not axes.lines:
            axes.text(0.5, 0.5, empty[axes], ha="center", va="center", transform=axes.transAxes, fontsize=9,
                      color="0.4", wrap=True)
    legend.axis("off")
    legend.legend(loc="center", fontsize=10, frameon=False, title="runs")
    ckpt.atomic_write(out, lambda tmp: figure.savefig(tmp, format="png", dpi=90))
    return {"out": str(out), "runs": [label for label, _, _ in read], "panels": drawn}


def default_out(runs: list[Path]) -> Path:
    """<run>/curves.png for one run directory, curves.png in the working folder for several."""
    if len(runs) == 1:
        run = Path(runs[0])
        return (run if run.is_dir() else run.parent) / "curves.png"
    return Path("curves.png")


def run_curves(run_dir: Path, warn=print) -> Optional[str]:
    """<run>/curves.png at the end of a pretrain when matplotlib is installed (the plot extra); a run without it
    just has no figure, and a figure that cannot be written costs the run nothing (`contrastive plot` redraws it)."""
    try:
        return draw_curves([run_dir], run_dir / "curves.png")["out"]
    except UserError:  # no matplotlib
        return None
    except OSError as err:
        warn(f"curves not drawn ({err.strerror or err}); draw them later with: contrastive plot {run_dir}")
        return None

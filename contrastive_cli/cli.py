"""The `contrastive` command line: thin commands that build a spec and dispatch onto the engine."""

from __future__ import annotations

import inspect
import json
import os
from contextlib import nullcontext
from functools import wraps
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from . import __version__, distributed
from .errors import UserError
from .flags import collect, load_config, merge, spec_command
from .spec import (ExportSpec, InspectSpec, KnnSpec, LinearProbeSpec, NeighboursSpec, PlotSpec, PretrainSpec,
                   TransferSpec)

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
                  help="Self-supervised representation learning for images: pretrain → evaluate → export.")
console = Console()
errors = Console(stderr=True)


def version_callback(value: bool):
    if value:
        console.print(f"contrastive {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Optional[bool] = typer.Option(None, "--version", callback=version_callback, is_eager=True,
                                                help="Show the version and exit.")):
    pass


def user_errors(fn):
    """Turn UserError into one readable paragraph on stderr and a non-zero exit, never a traceback. Anything else is a
    bug or an environment failure: one paragraph too, with the traceback in a crash log (CONTRASTIVE_DEBUG=1 raises
    it instead)."""
    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            code = getattr(err, "exit_code", 2)
            style = "yellow" if code in (4, 130) else "red"
            title = "Stopped" if code in (3, 4, 130) else "Error"
            # escaped: messages quote user paths and commands such as pip install 'contrastive[onnx]', not markup
            if distributed.is_main():  # under torchrun every process stops alike; one says why
                errors.print(Panel(escape(str(err)), title=title, border_style=style, title_align="left"))
            raise typer.Exit(code) from None
        except KeyboardInterrupt:  # a second Ctrl-C, or one outside the training loop
            errors.print(Panel("Aborted by Ctrl-C. Checkpoints are written atomically: the last one written is "
                               "intact, and `contrastive pretrain --resume RUN_DIR` continues from it.",
                               title="Stopped", border_style="yellow", title_align="left"))
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as err:  # noqa: BLE001 - the safety net: never a bare traceback
            if os.environ.get("CONTRASTIVE_DEBUG"):
                raise
            log = crash_log(err)
            errors.print(Panel(escape(
                f"contrastive {COMMANDS.get(fn.__name__, fn.__name__)} failed unexpectedly: "
                f"{type(err).__name__}: {err}. This is not a problem with your input that we recognise; the full "
                f"traceback is in {log}. Checkpoints are written atomically, so the last one written is intact. "
                "Run again with CONTRASTIVE_DEBUG=1 to see the traceback here, and please report it with the log."),
                title="Internal error", border_style="red", title_align="left"))
            raise typer.Exit(EXIT_INTERNAL) from None
    return wrapper


COMMANDS = {"run_pretrain": "pretrain", "run_knn": "knn-eval", "run_probe": "linear-probe", "run_transfer": "transfer",
            "run_inspect": "inspect-collapse", "run_export": "export", "run_neighbours": "neighbours"}
EXIT_INTERNAL = 70  # sysexits' EX_SOFTWARE: not a user error (2), not a collapse (4), not an interrupt (130)


def crash_log(err: BaseException) -> Path:
    """The traceback, the command line and the versions, in a new file in the temp folder."""
    import platform
    import sys
    import tempfile
    import traceback
    text = (f"command: {' '.join(sys.argv)}\ncontrastive {__version__} · python {platform.python_version()} · "
            f"{platform.platform()}\n\n" + "".join(traceback.format_exception(err)))
    try:
        import torch
        text = f"torch {torch.__version__}\n" + text
    except ImportError:
        pass
    fd, path = tempfile.mkstemp(prefix="contrastive-crash-", suffix=".log")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return Path(path)


CONFIG = inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
                           default=typer.Option(None, "--config", "-c", help="YAML or JSON run spec; flags override it."))
PRINT_SPEC = inspect.Parameter("print_spec", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                               default=typer.Option(False, "--print-spec", help="Print the resolved spec and exit."))
JSON = inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                         default=typer.Option(False, "--json", help="Print machine-readable results."))
CHECKPOINT = inspect.Parameter("checkpoint", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Path,
                               default=typer.Argument(..., help="Checkpoint (.safetensors) of pretrain or transfer, or a pretrain run directory.",
                                                      show_default=False))
RESUME = inspect.Parameter("resume", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
                           default=typer.Option(None, "--resume", help=(
                               "Continue a run exactly where it stopped: its run directory or checkpoint.")))


# ---- pretrain -----------------------------------------------------------------------------------


STEP_FIELDS = {"step", "epoch", "loss", "lr", "images_per_s", "data_wait", "augment"}


def method_scalars(record: dict) -> str:
    """What the method reports besides its loss, e.g. '  I ≥ 4.91 of 6.23 nats' for the InfoNCE bound."""
    shown = {k: v for k, v in record.items() if k not in STEP_FIELDS}
    text = ""
    if "mi_bound" in shown:
        text += f"  I ≥ {shown.pop('mi_bound'):.2f} of {shown.pop('mi_max', float('nan')):.2f} nats"
    return text + "".join(f"  {k} {v:.4g}" for k, v in shown.items())


class TrainProgress:
    """Rich progress bar with loss, lr, images/s and ETA."""

    def __init__(self, total: int, start: int, disable: bool = False):
        self.bar = Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]:.4f}{task.fields[scalars]}  lr {task.fields[lr]:.4g}  "
                                       "{task.fields[ips]:.0f} img/s"), TimeElapsedColumn(), TimeRemainingColumn(),
                            console=console, transient=False, disable=disable)
        self.task = self.bar.add_task("train", total=total, completed=start, epoch=0, loss=0.0, lr=0.0, ips=0.0,
                                      scalars="")
        self.quiet = disable  # --json: stdout holds only the JSON record; a collapse warning goes to stderr

    def __call__(self, run, record, images_per_s):
        self.bar.update(self.task, completed=record["step"], epoch=record["epoch"], loss=record["loss"],
                        lr=record["lr"], ips=images_per_s, scalars=method_scalars(record))

    def epoch(self, run, stats):
        """One line per epoch with the online kNN and the collapse monitor's figures; a visible warning on
        collapse."""
        c, knn = stats.get("collapse"), stats.get("knn")
        if c is None and knn is None:
            return
        figures = "  ".join(f"{name} spread {r['spread']:.2f} rank {r['rank']:.0f}"
                            for name, r in (c or {}).items() if isinstance(r, dict))
        if knn is not None:
            top1 = "/".join(f"{v:.1f}" for key, v in knn.items() if key.startswith("top1_k"))
            ks = "/".join(key.removeprefix("top1_k") for key in knn if key.startswith("top1_k"))
            figures = f"kNN top-1 {top1} (k={ks}, {knn['seconds']:.1f} s)  " + figures
        if not self.quiet:
            console.print(f"epoch {stats['epoch']}: loss {stats['loss']:.4f}  {stats['images_per_s']:.0f} img/s  {figures}")
        if c is not None and c["alarm"]:
            (errors if self.quiet else console).print(Panel(f"{c['verdict']} after epoch {stats['epoch']}: {c['reason']}", title="Collapse",
                                border_style="yellow", title_align="left"))


@user_errors
def run_pretrain(given, config=None, print_spec=False, resume=None, as_json=False):
    console.quiet = not distributed.is_main()  # under torchrun rank 0 speaks for all
    try:
        pretrain_command(given, config, print_spec, resume, as_json)
    finally:
        distributed.shutdown()


def pretrain_command(given, config, print_spec, resume, as_json):
    from .train import RESUMABLE, prepare, train
    spec = merge(PretrainSpec, load_config(config), given)
    if resume is not None:
        def resumable(path):
            return len(path) == 2 and path[1] in RESUMABLE.get(path[0], ())
        fixed = [f.flag for f in given if not resumable(f.path)]
        if fixed or config is not None:
            allowed = ", ".join(f.flag for f in collect(PretrainSpec) if resumable(f.path))
            raise UserError(f"--resume continues a run with the spec it was started with, so "
                            f"{', '.join(fixed) or '--config'} cannot be changed",
                            f"drop those flags; on resume only {allowed} may change")
    run = prepare(spec, resume)
    if resume is not None and run.step >= run.total_steps:
        console.print(f"The run in {run.dir} is complete ({run.spec.optim.epochs} epochs, step {run.step}); "
                      f"pass --epochs with more to extend it.")
        return
    if print_spec:
        console.print_json(data=run.spec.model_dump(mode="json"))
        return
    s = run.spec
    if s.runtime.benchmark:
        if distributed.world() > 1:
            raise UserError("--benchmark measures one process; under torchrun each process would time its own "
                            "share", "run it without torchrun (the scaling figures are in docs/distributed.md)")
        return run_benchmark(run, s.runtime.benchmark, as_json)
    if not as_json:
        console.print(f"[bold]{s.method.name}[/] · {s.backbone.name} ({run.method.feature_dim}-d) · "
                      f"{run.data.name} ({len(run.data)} images, {s.data.image_size} px) · batch {s.optim.batch_size} · "
                      f"{s.optim.epochs} epochs · {run.device} → {run.dir}")
    if resume is not None and not as_json:
        console.print(f"resuming at step {run.step} of {run.total_steps}" if run.step else
                      f"{run.dir} holds no checkpoint yet (it stopped before its first): starting it again from step 0")
    progress = TrainProgress(run.total_steps, run.step, disable=as_json)
    with progress.bar:
        stats = train(run, progress, on_epoch=progress.epoch)
    from .curves import run_curves  # <run>/curves.png when matplotlib is there
    curves = run_curves(run.dir, warn=lambda text: errors.print(escape(text))) if distributed.is_main() else None
    if as_json:
        if distributed.is_main():
            print(json.dumps({**stats, "step": run.step, "checkpoint": str(run.checkpoint_path), "curves": curves}))
        return
    skipped = f", {len(run.data.skipped)} unreadable files skipped" if run.data.skipped else ""
    console.print(f"done: loss {stats.get('loss', float('nan')):.4f}, {stats.get('images_per_s', 0):.0f} img/s"
                  f"{skipped} → {run.checkpoint_path}" + (f"\ncurves → {curves}" if curves else ""))


def run_benchmark(run, steps, as_json):
    from .benchmark import benchmark
    s = run.spec
    with console.status("benchmark: warm-up", spinner="dots") if not as_json else nullcontext() as status:
        def on_block(kind, done, total):
            if status is not None:
                status.update(f"benchmark: {kind} block {done}/{total}")
        result = benchmark(run, steps, on_block)
    if as_json:
        print(json.dumps(result))
        return
    r = result
    console.print(f"[bold]benchmark[/] · {s.method.name} · {s.backbone.name} · {r['data']} ({r['images']} images, "
                  f"{r['image_size']} px) · batch {r['batch_size']} × {r['views']} views · {r['device']} "
                  f"({r['threads']} threads{', bf16' if r['amp'] else ''}) · {r['steps']} timed steps of each kind "
                  f"in {r['blocks']} alternating blocks, after {r['warmup_steps']} warm-up steps · load average "
                  f"{r['load_average'][0]:.1f} → {r['load_average'][1]:.1f}")
    table = Table()
    for col, justify in (("", "left"), ("images/s (median)", "right"), ("ms/step", "right"),
                         ("blocks (min–max images/s)", "right")):
        table.add_column(col, justify=justify)
    batch = r["batch_size"]
    for name, key in (("full step", "full"), ("model-only bound", "model_only")):
        blocks = r[f"{key}_block_images_per_s"]
        table.add_row(name, f"{r[f'{key}_images_per_s']:.1f}", f"{1000 * batch / r[f'{key}_images_per_s']:.0f}",
                      f"{min(blocks):.1f}–{max(blocks):.1f}")
    console.print(table)
    memory = (f"{r['dataset_in_memory_mib']:.0f} MiB uint8 in memory" if r["dataset_in_memory_mib"]
              else f"{r['streamed_files']} files streamed by {r['workers']} workers")
    console.print(f"ratio {r['ratio']:.3f} (median over pairs of adjacent blocks) · data wait {100 * r['data_wait_share']:.1f}% · augmentation "
                  f"{100 * r['augment_share']:.1f}% of the full step's time")
    console.print(f"peak memory: {r['peak_rss_mib']:.0f} MiB resident (process), "
                  f"{r['peak_worker_rss_mib']:.0f} MiB (largest finished worker) · data: {memory}"
                  + (f" · CUDA {r['cuda_peak_mib']:.0f} MiB allocated" if "cuda_peak_mib" in r else ""))
    if r["load_average"][0] > (os.cpu_count() or 1) and r["device"] == "cpu":
        console.print(f"[yellow]The load average was {r['load_average'][0]:.1f} on {os.cpu_count()} cores when the benchmark "
                      "started: other programs compete for the CPU, so these figures are low and noisy. If this is how "
                      "the machine is used, try OMP_WAIT_POLICY=PASSIVE (docs/performance.md#the-openmp-wait-policy).[/]")


spec_command(app, "pretrain", PretrainSpec, run_pretrain, extra=[CONFIG, PRINT_SPEC, RESUME, JSON], help=(
    "Pretrain an encoder with a self-supervised method. Writes checkpoint.safetensors, spec.json and "
    "metrics.jsonl into the run directory. Values marked 'recipe' come from the method's paper recipe. "
    "With --benchmark STEPS, measure throughput against the model-only bound instead (nothing is written)."))


# ---- evaluation -----------------------------------------------------------------------------------


def eval_spec(model, given, config, checkpoint, print_spec):
    data = load_config(config)
    data["checkpoint"] = str(checkpoint)
    spec = merge(model, data, given)
    if distributed.launched() and not (model in (KnnSpec, LinearProbeSpec) or model is ExportSpec and spec.embeddings):
        command = {"InspectSpec": "inspect-collapse", "ExportSpec": "export", "TransferSpec": "transfer",
                   "NeighboursSpec": "neighbours"}[model.__name__]
        raise UserError(f"{command} runs as one process; under torchrun every process would repeat the same work "
                        "and write the same files (knn-eval, linear-probe and export --embeddings share their "
                        "feature extraction across processes)", f"run it without torchrun: contrastive {command} ...")
    if print_spec:
        console.print_json(data=spec.model_dump(mode="json"))
    return spec


def sharded(fn):
    """An evaluation that torchrun may run as several processes sharing its feature extraction: rank 0 speaks."""
    @wraps(fn)
    def wrapper(*args, **kwargs):
        console.quiet = not distributed.is_main()
        try:
            return fn(*args, **kwargs)
        except RuntimeError as err:  # torch.distributed's errors when another process is gone
            if distributed.world() == 1 or not distributed.peer_failure(err):
                raise
            from .train import EXIT_PEER
            stopped = UserError(f"Another process of this torchrun job stopped ({str(err).strip().splitlines()[0][:200]}), "
                                "so this one stopped too", "see that process's message (torchrun prints which rank "
                                "failed and how); nothing was written")
            stopped.exit_code = EXIT_PEER
            raise stopped from None
        finally:
            distributed.shutdown()
    return wrapper


def print_json(result: dict) -> None:
    if distributed.is_main():
        print(json.dumps(result))


@user_errors
@sharded
def run_knn(given, checkpoint, config=None, print_spec=False, as_json=False):
    from .evaluate import knn_eval
    spec = eval_spec(KnnSpec, given, config, checkpoint, print_spec)
    if print_spec:
        return
    with console.status("computing features and neighbours"):
        result = knn_eval(spec)
    if as_json:
        print_json(result)
        return
    console.print(f"[bold]weighted kNN[/] · {result['data']} · bank {result['bank']} · queries {result['queries']} · "
                  f"T={result['temperature']}" + (f" · {result['skipped_files']} unreadable files skipped"
                                                  if result["skipped_files"] else ""))
    table = Table()
    for col in ("k", "top-1 %", "top-5 %"):
        table.add_column(col, justify="right")
    for r in result["results"]:
        table.add_row(str(r["k"]), f"{r['top1']:.2f}", f"{r['top5']:.2f}")
    console.print(table)


spec_command(app, "knn-eval", KnnSpec, run_knn, extra=[CHECKPOINT, CONFIG, PRINT_SPEC, JSON],
             skip=("kind", "checkpoint"), help=(
                 "Weighted kNN accuracy of frozen backbone features (InstDisc): the train split is the bank, "
                 "the test split the queries, votes are weighted by exp(cosine / T)."))


@user_errors
@sharded
def run_probe(given, checkpoint, config=None, print_spec=False, as_json=False):
    from .evaluate import linear_probe
    spec = eval_spec(LinearProbeSpec, given, config, checkpoint, print_spec)
    if print_spec:
        return
    from .checkpoint import read_meta
    from .evaluate import ENCODER_KINDS
    read_meta(spec.checkpoint, ENCODER_KINDS)  # a bad checkpoint fails before the progress bar is drawn
    bar = Progress(TextColumn("[bold]linear probe"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), TimeRemainingColumn(),
                   console=console, disable=as_json)
    task = bar.add_task("probe", total=spec.optim.epochs, loss=0.0)
    with bar:
        result = linear_probe(spec, progress=lambda done, total, loss: bar.update(task, completed=done, loss=loss))
    if as_json:
        print_json(result)
        return
    whole = (f" (the whole train split: --batch-size {spec.optim.batch_size} is larger)"
             if result["batch_size"] < spec.optim.batch_size else "")
    console.print(f"[bold]linear probe[/] · {result['data']} · {result['epochs']} epochs · batch "
                  f"{result['batch_size']}{whole} · lr {result['lr']:g}"
                  + (" · cached features" if result["cached"] else "")
                  + (f" · {result['skipped_files']} unreadable files skipped" if result["skipped_files"] else ""))
    table = Table()
    for col in ("top-1 %", "top-5 %", "probe"):
        table.add_column(col)
    table.add_row(f"{result['top1']:.2f}", f"{result['top5']:.2f}", result["probe"])
    console.print(table)


spec_command(app, "linear-probe", LinearProbeSpec, run_probe, extra=[CHECKPOINT, CONFIG, PRINT_SPEC, JSON],
             skip=("kind", "checkpoint"), help=(
                 "Linear classifier on the frozen backbone (eval mode, BN statistics frozen), MoCo's protocol by "
                 "default: SGD momentum 0.9, lr 30, no weight decay, x0.1 at 60% and 80% of the epochs."))


# ---- inspect-collapse -----------------------------------------------------------------------------


@user_errors
def run_inspect(given, checkpoint, config=None, print_spec=False, as_json=False):
    from .collapse import HEALTHY, inspect_collapse, sparkline
    spec = eval_spec(InspectSpec, given, config, checkpoint, print_spec)
    if print_spec:
        return
    with console.status("embedding centre views and augmented pairs"):
        result = inspect_collapse(spec)
    if as_json:
        print(json.dumps(result))
    else:
        print_inspection(result, sparkline)
    if spec.fail_on_collapse and result["verdict"] != HEALTHY:
        raise typer.Exit(1)


def print_inspection(result: dict, sparkline) -> None:
    reps = result["representations"]
    console.print(f"[bold]inspect-collapse[/] · {result['method'] or ''} · {result['backbone']} · {result['data']} · "
                  f"{result['images']} images")
    table = Table()
    table.add_column("")
    for name, r in reps.items():
        table.add_column(f"{name} ({r['dim']}-d)", justify="right")
    rows = [("spread 1 − |mean z/|z||²", lambda r: f"{r['spread']:.3f}"),
            ("std of z/|z|  (healthy 1/√d)", lambda r: f"{r['std']:.4f}  ({r['healthy_std']:.4f})"),
            ("effective rank (RankMe)", lambda r: f"{r['rank']:.1f} / {r['rank_max']}"),
            ("dims for 99% of variance", lambda r: str(r["dims_99"])),
            ("alignment (lower better)", lambda r: f"{r['alignment']:.3f}"),
            ("uniformity (lower better)", lambda r: f"{r['uniformity']:.3f}"),
            ("cosine: positive / other pairs", lambda r: f"{r['positive_cosine']:.3f} / {r['negative_cosine']:.3f}")]
    if all("knn_agreement" in r for r in reps.values()):
        rows.append(("10-NN label agreement (chance)", lambda r: f"{r['knn_agreement']:.3f} ({r['knn_chance']:.3f})"))
    if any("entropy_share" in r for r in reps.values()):  # a distribution (DINO's teacher): its two entropies
        rows += [("entropy / log K (uniform: 1)", lambda r: f"{r['entropy_share']:.3f}" if "entropy_share" in r else ""),
                 ("entropy of mean / log K (outputs)",
                  lambda r: f"{r['marginal_share']:.3f} ({r['outputs_in_use']:.0f})" if "marginal_share" in r else "")]
    for label, cell in rows:
        table.add_row(label, *(cell(r) for r in reps.values()))
    colour = {"healthy": "green", "dimensional collapse": "yellow", "complete collapse": "red"}
    table.add_row("verdict", *(f"[{colour[r['verdict']]}]{r['verdict']}[/]" for r in reps.values()))
    console.print(table)
    for name, r in reps.items():
        console.print(f"{name:>9} spectrum  {sparkline(r['spectrum'])}  (log eigenvalues, largest first)", overflow="ellipsis", no_wrap=True)
    named = [(n, r) for n, r in reps.items() if r["verdict"] == result["verdict"]]
    console.print(f"[bold {colour[result['verdict']]}]{result['verdict']}[/]: " +
                  "; ".join(f"{name}: {r['reason']}" for name, r in named))
    console.print(f"report {result['report']} · spectrum plot {result['plot']}")


spec_command(app, "inspect-collapse", InspectSpec, run_inspect, extra=[CHECKPOINT, CONFIG, PRINT_SPEC, JSON],
             skip=("kind", "checkpoint"), help=(
                 "Did the encoder collapse? Std of normalised embeddings vs 1/sqrt(d), effective rank, covariance "
                 "spectrum, alignment/uniformity, positive vs other cosines and kNN label agreement, for the backbone "
                 "and projector outputs; a verdict with its numbers, a JSON report and a PNG of the spectrum."))


# ---- export ---------------------------------------------------------------------------------------


@user_errors
@sharded
def run_export(given, checkpoint, config=None, print_spec=False, as_json=False):
    from .export import export
    spec = eval_spec(ExportSpec, given, config, checkpoint, print_spec)
    if print_spec:
        return
    with console.status("computing features" if spec.embeddings else f"exporting to {spec.format}"):
        result = export(spec)
    if as_json:
        print_json(result)
        return
    size, norm, size_mb = result["image_size"], result["normalize"], result["bytes"] / 1e6
    if spec.embeddings:
        columns = ["indices"] + [name for name in ("labels", "files") if result[name]]
        console.print(f"[bold]embeddings[/] · {escape(result['data'])} · {result['split']} · {result['images']} × "
                      f"{result['feature_dim']} · {', '.join(columns)}"
                      + (f" · {result['skipped_files']} unreadable files skipped" if result["skipped_files"] else ""))
    else:
        console.print(f"[bold]{result['backbone']} backbone[/] ({result['feature_dim']}-d) as {result['format']}")
        console.print(f"input: float32 [N, 3, {size}, {size}] (NCHW), RGB in [0, 1] normalised as (x - mean) / std\n"
                      f"mean {' '.join(map(str, norm['mean']))} · std {' '.join(map(str, norm['std']))}")
    written = f"{size_mb:.1f} MB" if size_mb >= 0.1 else f"{result['bytes'] / 1e3:.1f} kB"
    console.print(f"→ {escape(result['out'])} ({written}, {result['seconds']:.1f} s)")
    if result.get("map"):
        console.print(f"{spec.map} map → {escape(result['map'])}")


spec_command(app, "export", ExportSpec, run_export, extra=[CHECKPOINT, CONFIG, PRINT_SPEC, JSON],
             skip=("kind", "checkpoint"), help=(
                 "Export the backbone as safetensors weights (torchvision key names), TorchScript or ONNX, or "
                 "with --embeddings the features of a dataset (safetensors or CSV). Artefacts carry the input "
                 "size, normalisation and the source checkpoint's sha256 in their metadata."))


# ---- transfer -------------------------------------------------------------------------------------


@user_errors
def run_transfer(given, checkpoint, config=None, print_spec=False, as_json=False):
    from .checkpoint import read_meta
    from .evaluate import ENCODER_KINDS
    from .transfer import transfer
    spec = eval_spec(TransferSpec, given, config, checkpoint, print_spec)
    if print_spec:
        return
    read_meta(spec.checkpoint, ENCODER_KINDS)  # a bad checkpoint fails before the progress bar is drawn
    bar = Progress(TextColumn("[bold]{task.fields[row]}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), TimeRemainingColumn(),
                   console=console, disable=as_json)
    tasks = {}

    def progress(row, step, steps, loss):
        if row not in tasks:
            tasks[row] = bar.add_task(row, total=steps, row=row, loss=0.0)
        bar.update(tasks[row], completed=step, loss=loss)

    with bar:
        result = transfer(spec, progress=progress)
    if as_json:
        print(json.dumps(result))
        return
    shots = f"{result['shots']} shots per class" if result["shots"] else "full train split"
    console.print(f"[bold]transfer[/] · {result['data']} ({len(result['classes'])} classes, {shots}: "
                  f"{result['train_images']} images; test {result['test_images']}) · {result['epochs']} epochs = "
                  f"{result['steps']} steps of {result['batch_size']} · lr {result['lr']:g}"
                  + (f" · {result['skipped_files']} unreadable files skipped" if result["skipped_files"] else ""))
    table = Table()
    for col, justify in (("init", "left"), ("trained", "left"), ("top-1 %", "right"), ("top-5 %", "right")):
        table.add_column(col, justify=justify)
    for r in result["results"]:
        table.add_row(r["init"], r["trained"], f"{r['top1']:.2f}", f"{r['top5']:.2f}")
    if result["gain"] is not None:
        table.add_section()
        table.add_row("[bold]gain[/]", "pretrained − scratch", f"[bold]{result['gain']['top1']:+.2f}",
                      f"{result['gain']['top5']:+.2f}")
    console.print(table)
    console.print(f"fine-tuned model → {result['out']}")


spec_command(app, "transfer", TransferSpec, run_transfer, extra=[CHECKPOINT, CONFIG, PRINT_SPEC, JSON],
             skip=("kind", "checkpoint"), help=(
                 "Fine-tune the pretrained backbone with a new linear head on a labeled target dataset and report "
                 "top-1/top-5 on its test split; --shots K for K images per class, --freeze for a linear head on "
                 "the frozen backbone, --baseline scratch for the same budget from random initialisation."))


# ---- neighbours ------------------------------------------------------------------------------------


@user_errors
def run_neighbours(given, checkpoint, config=None, print_spec=False, as_json=False):
    from .neighbours import neighbours
    spec = eval_spec(NeighboursSpec, given, config, checkpoint, print_spec)
    if print_spec:
        return
    with console.status("embedding the queries and the gallery"):
        result = neighbours(spec)
    if as_json:
        print(json.dumps(result))
        return
    g = result["gallery"]
    console.print(f"[bold]neighbours[/] · {escape(g['data'])} ({g['split']}: {g['images']} images) · "
                  f"{len(result['queries'])} {'query' if len(result['queries']) == 1 else 'queries'} · k {result['k']} · "
                  f"cosine similarity of {result['feature_dim']}-d features"
                  + (f" · {g['skipped_files']} unreadable files skipped" if g["skipped_files"] else ""))
    labelled = any(n["class"] is not None or n["label"] is not None for q in result["queries"] for n in q["neighbours"])
    for q in result["queries"]:
        table = Table(title=escape(q["query"]), title_justify="left")
        for col, justify in (("#", "right"), ("cosine", "right"), ("gallery image", "left")) + (
                (("class", "left"),) if labelled else ()):
            table.add_column(col, justify=justify)
        for n in q["neighbours"]:
            where = n["file"] or f"{n['split']} #{n['index']}"
            label = n["class"] if n["class"] is not None else "" if n["label"] is None else str(n["label"])
            table.add_row(str(n["rank"]), f"{n['similarity']:.3f}", escape(where), *((escape(label),) if labelled else ()))
        console.print(table)
    if result["sheet"]:
        console.print(f"contact sheet → {escape(result['sheet'])}")


spec_command(app, "neighbours", NeighboursSpec, run_neighbours, extra=[CHECKPOINT, CONFIG, PRINT_SPEC, JSON],
             skip=("kind", "checkpoint"), help=(
                 "The gallery images most similar to each query image in the encoder's feature space (cosine "
                 "similarity of centre-view features): a table, --json, or a contact sheet PNG (--sheet). The "
                 "query is an image file or a folder of images; the gallery a folder or a named dataset, by "
                 "default the checkpoint's own data."))


# ---- plot ------------------------------------------------------------------------------------------

RUNS = inspect.Parameter("runs", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=list[Path],
                         default=typer.Argument(..., help="Run directories (or metrics.jsonl files) to draw.",
                                                metavar="RUN", show_default=False))


@user_errors
def run_plot(given, runs, as_json=False):
    from .checkpoint import check_output
    from .curves import default_out, draw_curves
    spec = merge(PlotSpec, {"runs": [str(r) for r in runs]}, given)
    out = spec.out or default_out(spec.runs)
    check_output(out, "--out", (), "plot", create_folders=False)  # never over a checkpoint
    result = draw_curves(spec.runs, out)
    if as_json:
        print_json(result)
        return
    console.print(f"[bold]curves[/] of {', '.join(map(escape, result['runs']))} → {escape(result['out'])}")


spec_command(app, "plot", PlotSpec, run_plot, extra=[RUNS, JSON], skip=("kind", "runs"), help=(
    "Draw loss, learning rate, online kNN top-1, effective rank and images/s against epochs from the metrics.jsonl "
    "of one or several runs (overlaid) as a PNG; needs the plot extra (pip install 'contrastive\\[plot]')."))


def entrypoint():
    app()


if __name__ == "__main__":
    entrypoint()

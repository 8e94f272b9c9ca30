"""The records of metrics.jsonl, also sent to the trackers practitioners already use (`--log tensorboard|wandb|mlflow`).

metrics.jsonl stays the source of truth: a tracker gets the same numbers, on one step axis (a step record at its
step, an epoch record at the step that ends the epoch), under `train/...` and `epoch/...` tags with nested values
flattened (`epoch/knn/top1_k200`, `epoch/collapse/backbone/rank`). A resumed run continues the same tracker run:
TensorBoard purges the steps after the checkpoint, W&B and MLflow reopen the run whose id `trackers.json` keeps.
A tracker that fails in the middle of a run is dropped with a warning; training goes on (the record is in
metrics.jsonl). Only rank 0 of a torchrun job logs.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path
from typing import Callable

from . import checkpoint as ckpt
from .errors import UserError
from .extras import require

IDS_FILE = "trackers.json"  # the W&B / MLflow run ids of this run directory, so a resume continues them


def leaves(tree: dict, prefix: str = "", sep: str = "/") -> dict:
    """{'a': {'b': 1}} -> {'a/b': 1}."""
    out: dict = {}
    for key, value in tree.items():
        out.update(leaves(value, f"{prefix}{key}{sep}", sep) if isinstance(value, dict) else {prefix + key: value})
    return out


def flat(record: dict, prefix: str) -> dict[str, float]:
    """Numeric leaves of a record as {tag: value}; strings (verdicts, reasons) stay in metrics.jsonl only."""
    return {tag: float(value) for tag, value in leaves(record, prefix).items()
            if isinstance(value, (int, float)) and tag.removeprefix(prefix) not in ("step", "epoch", "type")}


def tagged(record: dict, steps_per_epoch: int) -> tuple[int, dict[str, float]]:
    """The global step a record belongs to and its scalars."""
    if record.get("type") == "epoch":
        return record["epoch"] * steps_per_epoch, flat(record, "epoch/")
    return record["step"], flat(record, "train/")


def require_trackers(names) -> None:
    """Fail before any work when a tracker's package is missing."""
    for name in names:
        module, extra = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"),
                         "mlflow": ("mlflow", "mlflow")}[name]
        require(module, extra, f"--log {name}", "drop --log " + name + " (metrics.jsonl holds every record)")


class TensorBoard:
    def __init__(self, run, ids: dict):
        from torch.utils.tensorboard import SummaryWriter
        # purge_step: events a killed run wrote after its checkpoint are hidden, as metrics.jsonl drops them
        self.writer = SummaryWriter(str(run.dir / "tensorboard"), purge_step=run.step + 1 if run.step else None)
        if not run.step:
            self.writer.add_text("spec", "```\n" + json.dumps(run.spec.model_dump(mode="json"), indent=2) + "\n```")

    def write(self, step: int, scalars: dict[str, float]) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self.writer.close()


class WandB:
    def __init__(self, run, ids: dict):
        import wandb  # offline with WANDB_MODE=offline: files under <run>/wandb, `wandb sync` uploads them later
        ids.setdefault("wandb", uuid.uuid4().hex[:8])
        self.run = wandb.init(project=run.spec.runtime.wandb_project, id=ids["wandb"], resume="allow",
                              dir=str(run.dir), name=run.dir.name, config=run.spec.model_dump(mode="json"),
                              # the terminal stays ours (no stdout capture, no banner); the run's files keep the logs
                              settings=wandb.Settings(console="off", quiet=True, silent=True))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


class MLflow:
    def __init__(self, run, ids: dict):
        import logging
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial tables" on stderr
        # a SQLite store by default: MLflow 3 refuses its file store unless told (and `mlflow ui
        # --backend-store-uri sqlite:///<run>/mlflow.db` shows it)
        uri = run.spec.runtime.mlflow_uri or f"sqlite:///{(run.dir / 'mlflow.db').resolve()}"
        self.client = MlflowClient(tracking_uri=uri)
        if "mlflow" not in ids:
            name = "contrastive"
            found = self.client.get_experiment_by_name(name)
            experiment = found.experiment_id if found else self.client.create_experiment(name)
            ids["mlflow"] = self.client.create_run(experiment, run_name=run.dir.name).info.run_id
            params = [Param(k, str(v)[:500]) for k, v in leaves(run.spec.model_dump(mode="json"), sep=".").items()]
            for i in range(0, len(params), 100):  # params are set once: a resume's new --lr is in metrics
                self.client.log_batch(ids["mlflow"], params=params[i:i + 100])
        self.run_id = ids["mlflow"]

    def write(self, step: int, scalars: dict[str, float]) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        # asynchronous: a synchronous write to the SQLite store costs about 16 ms a step, a queued one about 2 ms
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in scalars.items()],
                              synchronous=False)

    def close(self) -> None:
        import mlflow
        mlflow.flush_async_logging()
        self.client.set_terminated(self.run_id)


TRACKERS = {"tensorboard": TensorBoard, "wandb": WandB, "mlflow": MLflow}
FIXES = {"tensorboard": "check that the run directory is writable",
         "wandb": "log in with `wandb login`, or run offline with WANDB_MODE=offline (sync later with `wandb sync`)",
         "mlflow": "check --mlflow-uri (a reachable server or a sqlite:///PATH), or leave it out for the store "
                   "<run>/mlflow.db"}


class Trackers:
    """The run's trackers: `write(record)` for each metrics.jsonl record, `close()` at the end."""

    def __init__(self, run, warn: Callable[[str], None] = lambda text: print(text, file=sys.stderr)):
        self.steps_per_epoch, self.warn, self.open = run.steps_per_epoch, warn, {}
        ids_path = run.dir / IDS_FILE
        ids = json.loads(ids_path.read_text()) if ids_path.exists() else {}
        started = ids.setdefault("started", [])
        for name in run.spec.runtime.log:
            try:
                self.open[name] = TRACKERS[name](run, ids)
            except Exception as err:  # noqa: BLE001 - a login, a server, a disk: the tracker's message says which
                self.close()
                raise UserError(f"--log {name} could not start a tracker run ({type(err).__name__}: "
                                f"{str(err).strip()[:300]})", FIXES[name]) from None
        if not run.spec.runtime.log:
            return
        new = [name for name in self.open if name not in started]
        ids["started"] = started + new
        ckpt.atomic_write(ids_path, lambda tmp: Path(tmp).write_text(json.dumps(ids) + "\n"))
        if run.step and new:  # a tracker added on --resume gets the records so far, from metrics.jsonl
            self.replay(run.dir / "metrics.jsonl", new)

    def replay(self, metrics: Path, names: list[str]) -> None:
        everyone, self.open = self.open, {name: self.open[name] for name in names}
        for line in metrics.read_text().splitlines() if metrics.exists() else []:
            self.write(json.loads(line))
        self.open = {name: tracker for name, tracker in everyone.items() if name not in names or name in self.open}

    def write(self, record: dict) -> None:
        step, scalars = tagged(record, self.steps_per_epoch)
        for name, tracker in list(self.open.items()):
            try:
                tracker.write(step, scalars)
            except Exception as err:  # noqa: BLE001 - a tracker's failure (network, disk) must not stop training
                del self.open[name]
                self.warn(f"--log {name} stopped at step {step} ({type(err).__name__}: {err}); training goes on "
                          "and metrics.jsonl keeps every record")

    def close(self) -> None:
        for tracker in self.open.values():
            try:
                tracker.close()
            except Exception as err:  # noqa: BLE001
                self.warn(f"closing a tracker failed ({type(err).__name__}: {err})")
        self.open = {}

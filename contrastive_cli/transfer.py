"""`contrastive transfer`: how well a pretrained representation carries to another labeled dataset.

The pretrained backbone gets a new linear head and is fine-tuned on the target's train split (the backbone at a
fraction of the head's lr), or with --freeze only the head is trained on the frozen backbone; the test split
gives top-1/top-5. --baseline scratch trains the same architecture from random initialisation on exactly the same
steps (data order, augmentation, schedule), so the gain of pretraining is one subtraction.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint as ckpt
from .augment import crop_flip_view
from .data import ImageSet
from .errors import UserError
from .evaluate import accuracy, checkpoint_data, extract, load_encoder, num_classes, open_labeled
from .methods.base import build_encoder
from .optim import decay_groups, lr_factor, make_optimizer, set_lr
from .spec import TRANSFER_MIN_STEPS, TransferSpec
from .runtime import default_workers, epoch_order, pick_device, seed_step

Progress = Callable[[str, int, int, float], None]  # (row, step, steps, loss)


class Classifier(nn.Module):
    """Backbone + linear head; state-dict keys backbone.* (as in pretrain checkpoints) and head.*."""

    def __init__(self, backbone: nn.Module, feature_dim: int, classes: int):
        super().__init__()
        self.backbone, self.head = backbone, nn.Linear(feature_dim, classes)
        nn.init.normal_(self.head.weight, std=0.01)  # as the linear probe: starts near uniform predictions
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def draw_shots(labels: torch.Tensor, shots: int, seed: int, classes: list[str]) -> torch.Tensor:
    """Indices (sorted) of `shots` images per class: one permutation of the whole split drawn from `seed`, and
    for each class the first `shots` of its images in that order. The same seed gives the same images, and a
    larger K keeps every image a smaller K drew."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    picked = []
    for c, name in enumerate(classes):
        of_class = order[labels[order] == c]
        if len(of_class) < shots:
            raise UserError(f"--shots {shots} asks for {shots} training images per class, but the class '{name}' "
                            f"has only {len(of_class)}", f"use --shots {len(of_class)} or fewer")
        picked.append(of_class[:shots])
    return torch.cat(picked).sort().values


def file_fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def fit(model: Classifier, data: ImageSet, indices: torch.Tensor, spec: TransferSpec, view: tuple, device,
        *, freeze: bool, backbone_lr_scale: float, steps_per_epoch: int, batch_size: int,
        progress: Optional[Callable[[int, float], None]] = None) -> float:
    """Train on data[indices] for the spec's epochs; returns the last step's loss. The data order of an epoch
    comes from (seed, epoch) and the augmentation of a step from (seed, step): two calls with the same spec
    see exactly the same batches of exactly the same views."""
    o, seed = spec.optim, spec.runtime.seed
    base_lr = o.lr * batch_size / 256
    model.train()
    model.backbone.requires_grad_(not freeze)
    if freeze:
        model.backbone.eval()  # BN statistics stay the pretrained ones; no backbone tensor changes
    groups = decay_groups(list(model.head.parameters()), base_lr, o)
    if not freeze:
        groups += decay_groups(list(model.backbone.parameters()), base_lr * backbone_lr_scale, o)
    optimizer = make_optimizer(groups, o, device)
    train_view = crop_flip_view(spec.crop_scale, *view)
    total, warmup = o.epochs * steps_per_epoch, round(o.warmup_epochs * steps_per_epoch)
    generator, step, workers = torch.Generator(device=device), 0, default_workers(spec.runtime.workers)
    loss = torch.tensor(float("nan"))
    for epoch in range(o.epochs):
        order = indices[epoch_order(len(indices), seed, epoch)]
        for x, y, _ in data.batches(order[:steps_per_epoch * batch_size], batch_size, workers=workers, drop_last=True):
            x = train_view(x.to(device, non_blocking=True), seed_step(generator, seed, step))
            set_lr(optimizer, lr_factor(step, total, warmup, o.schedule, o.milestones))
            loss = F.cross_entropy(model(x), y.to(device))
            if not torch.isfinite(loss):
                raise UserError(f"The loss became {loss.item()} at step {step + 1} of fine-tuning",
                                "lower --lr (or --backbone-lr-scale)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if progress is not None:
                progress(step, loss.item())
    return loss.item()


def transfer(spec: TransferSpec, progress: Optional[Progress] = None) -> dict:
    device = pick_device(spec.runtime.device)
    backbone, meta = load_encoder(spec.checkpoint, device)
    target = checkpoint_data(spec.data, meta)
    out = spec.out or default_out(meta["path"], target.source)
    ckpt.check_output(out, "--out", (Path(meta["path"]),), "transfer", spec.force)  # before the work, not after
    train_set = open_labeled(target, meta, "train", spec.runtime.seed)
    test_set = open_labeled(target, meta, "test", spec.runtime.seed)
    classes = train_set.classes or [str(i) for i in range(num_classes(train_set, test_set))]
    indices = (torch.arange(len(train_set)) if spec.shots is None
               else draw_shots(train_set.labels, spec.shots, spec.runtime.seed, classes))
    batch_size = min(spec.optim.batch_size, len(indices))  # a few-shot set smaller than the batch is one batch
    steps_per_epoch = len(indices) // batch_size
    if spec.optim.epochs is None:
        epochs = -(-TRANSFER_MIN_STEPS // steps_per_epoch)
        spec = spec.model_copy(update={"optim": spec.optim.model_copy(update={"epochs": epochs})})
    steps = spec.optim.epochs * steps_per_epoch
    size, norm = spec.data.image_size or meta["image_size"], meta["normalize"]
    view = (size, norm["mean"], norm["std"])  # the source's normalisation: what the pretrained backbone expects
    workers = default_workers(spec.runtime.workers)

    def run(name: str, model: Classifier, freeze: bool, backbone_lr_scale: float, trained: str) -> dict:
        t0 = time.perf_counter()
        report = None if progress is None else lambda step, loss: progress(name, step, steps, loss)
        final_loss = fit(model.to(device), train_set, indices, spec, view, device, freeze=freeze,
                         backbone_lr_scale=backbone_lr_scale, steps_per_epoch=steps_per_epoch,
                         batch_size=batch_size, progress=report)
        model.eval()
        logits, labels = extract(model, test_set, size, norm, device, spec.runtime.batch_size, workers)
        return {"init": name, "trained": trained, **accuracy(logits, labels), "final_loss": final_loss,
                "seconds": round(time.perf_counter() - t0, 2)}

    torch.manual_seed(spec.runtime.seed)
    model = Classifier(backbone, meta["feature_dim"], len(classes))
    trained = ("linear head (frozen backbone)" if spec.freeze
               else f"all layers (backbone lr x{spec.optim.backbone_lr_scale:g})")
    rows = [run("pretrained", model, spec.freeze, spec.optim.backbone_lr_scale, trained)]
    if spec.baseline == "scratch":
        # Nothing to preserve in a random backbone: every layer trains at the full lr, even with --freeze
        # (a frozen random backbone would measure random features, not training from scratch).
        torch.manual_seed(spec.runtime.seed)
        scratch = Classifier(build_encoder(meta["backbone"])[0], meta["feature_dim"], len(classes))
        rows.append(run("scratch", scratch, False, 1.0, "all layers (full lr)"))
    source_method = meta.get("method") or meta.get("source", {}).get("method")
    result = {
        "checkpoint": meta["path"], "method": source_method, "data": train_set.name.rsplit(":", 1)[0],
        "classes": classes, "train_images": len(indices), "test_images": len(test_set), "shots": spec.shots,
        "freeze": spec.freeze, "epochs": spec.optim.epochs, "steps": steps, "batch_size": batch_size,
        "lr": spec.optim.lr, "backbone_lr_scale": spec.optim.backbone_lr_scale, "results": rows, "top1": rows[0]["top1"], "top5": rows[0]["top5"],
        "gain": ({k: round(rows[0][k] - rows[1][k], 2) for k in ("top1", "top5")} if len(rows) > 1 else None),
        "skipped_files": len(train_set.skipped) + len(test_set.skipped)}
    resolved = spec.model_copy(update={"data": target, "checkpoint": Path(meta["path"])})
    ckpt.save(out, {**{f"backbone.{k}": v for k, v in model.backbone.state_dict().items()},
                    **{f"head.{k}": v for k, v in model.head.state_dict().items()}}, {
        "kind": "transfer", "spec": resolved.model_dump(mode="json"), "method": source_method,
        "source": {"path": meta["path"], "fingerprint": file_fingerprint(Path(meta["path"])),
                   "kind": meta["kind"], "method": source_method,
                   "data": {k: v for k, v in meta["data"].items() if k != "indices"}},
        "backbone": meta["backbone"], "feature_dim": meta["feature_dim"], "image_size": size, "normalize": norm,
        "data": {"name": train_set.name, "fingerprint": train_set.fingerprint, "images": len(indices),
                 "test_images": len(test_set), "shots": spec.shots,
                 "indices": indices.tolist() if spec.shots is not None else None},
        "classes": classes, "results": result, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    result["out"] = str(out)
    return result


def default_out(checkpoint: str, target: str) -> Path:
    """<checkpoint stem>.transfer-<target>.safetensors next to the checkpoint (a folder target: its name)."""
    path = Path(checkpoint)
    name = Path(target).name  # a named dataset, or a folder's last component
    return path.with_name(f"{path.stem}.transfer-{name}.safetensors")

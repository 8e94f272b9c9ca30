"""Frozen-backbone evaluations: weighted kNN (InstDisc) and the linear probe (MoCo protocol)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint as ckpt
from . import distributed
from .augment import center_view, crop_flip_view
from .data import ImageSet, labelled_split_sizes, open_dataset
from .errors import UserError
from .methods.base import build_encoder
from .optim import decay_groups, lr_factor, make_optimizer, set_lr
from .spec import DataSpec, EvalDataSpec, EvalRuntimeSpec, KnnSpec, LinearProbeSpec
from .runtime import default_workers, epoch_order, pick_device, seed_step


ENCODER_KINDS = ("pretrain", "transfer")  # checkpoints whose backbone.* tensors are an encoder to evaluate


def load_encoder(path: Path, device: torch.device) -> tuple[nn.Module, dict]:
    """The checkpoint's backbone (pretrain or transfer checkpoint) in eval mode with frozen weights, and the
    checkpoint's metadata."""
    tensors, meta = ckpt.load(path, kinds=ENCODER_KINDS, prefix="backbone.")
    if not tensors:
        raise UserError(f"{meta['path']} holds no backbone weights (no 'backbone.*' tensors)",
                        "pass a checkpoint written by `contrastive pretrain` or `contrastive transfer`")
    backbone, _ = build_encoder(meta["backbone"])
    backbone.load_state_dict(ckpt.strip(tensors, "backbone."), strict=True)
    backbone.eval().requires_grad_(False)
    return backbone.to(device), meta


def checkpoint_data(spec: DataSpec, meta: dict) -> DataSpec:
    """`spec` with the dataset filled in from the checkpoint's own data (source, root, classes) when --data is
    not given: a pretrain checkpoint's pretraining data, a transfer checkpoint's target data."""
    if spec.source is not None:
        return spec
    own = meta["spec"]["data"]
    return spec.model_copy(update={"source": own["source"], "root": spec.root or own.get("root"),
                                   "classes": spec.classes or own.get("classes")})


def open_data(spec: DataSpec, meta: dict, split: str, seed: int, subset: Optional[int],
              subset_flag: Optional[str] = "--subset") -> ImageSet:
    """`split` of `spec.source`, or of the checkpoint's own data (checkpoint_data) when unset."""
    spec = checkpoint_data(spec, meta)
    return open_dataset(spec.source, split, root=spec.root, download=spec.download, strict=spec.strict, subset=subset,
                        seed=seed, image_size=spec.image_size or meta["image_size"], classes=spec.classes,
                        subset_flag=subset_flag)


def open_labeled(spec: EvalDataSpec, meta: dict, split: str, seed: int) -> ImageSet:
    """The evaluation split; the checkpoint's own data by default (checkpoint_data). Evaluations need labels."""
    data = open_data(spec, meta, split, seed, *((spec.subset, "--subset") if split == "train" else
                                                (spec.test_subset, "--test-subset")))
    source = spec.source or meta["spec"]["data"]["source"]
    if data.labels is None:
        raise UserError(f"The dataset {source} has no labels ({split} split), and evaluation needs them",
                        "pass --data with a labeled dataset: a folder of class subfolders, an ImageNet-style "
                        "root with train/ and val/, or a named dataset such as cifar10")
    return data


@torch.no_grad()
def features(backbone: nn.Module, data: ImageSet, size: int, norm: dict, device: torch.device, batch_size: int,
             workers: int) -> tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """Pooled backbone features (on the CPU) of the centre view (side `size`, normalised with the checkpoint's
    `norm` {mean, std}) of every readable image, in dataset order, with their labels (None for unlabeled data) and
    row indices; unreadable files are skipped. Under torchrun each process embeds its block of the rows and every
    process receives them all (data.skipped too)."""
    if len(data) < distributed.world():
        raise UserError(f"{data.name} has {len(data)} images, fewer than the {distributed.world()} processes that "
                        "would share them", "run without torchrun, or with fewer processes")
    feats, labels, rows = [], [], []
    for x, y, index in data.batches(torch.arange(len(data))[distributed.my_share(len(data))], batch_size,
                                    workers=workers):
        feats.append(backbone(center_view(x.to(device, non_blocking=True), size, norm["mean"], norm["std"])).float().cpu())
        labels.append(y)
        rows.append(index)
    feats, rows = distributed.gather_rows(torch.cat(feats), torch.cat(rows))
    labels = None if labels[0] is None else distributed.gather_rows(torch.cat(labels))[0]
    data.skipped[:] = sorted(set(distributed.gather_list(data.skipped)))
    return feats, labels, rows


def extract(backbone: nn.Module, data: ImageSet, size: int, norm: dict, device: torch.device, batch_size: int,
            workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of every (readable) image of a labeled set, with their labels (see `features`)."""
    feats, labels, _ = features(backbone, data, size, norm, device, batch_size, workers)
    return feats, labels


def weighted_knn(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, query_labels: torch.Tensor,
                 ks: list[int], temperature: float, num_classes: int, chunk: int = 1024) -> dict[int, dict]:
    """InstDisc's weighted kNN: cosine similarity, top-k neighbours vote for their class with weight exp(s/T).

    Returns {k: {"top1": %, "top5": %}}; top-5 ranks classes by the same summed votes. The weights are taken as
    exp((s − s_max)/T), the same ranking for any T > 0 (one common factor per query) without overflow: exp(1/T)
    is inf in float32 below T ≈ 0.0113, where every class would tie at inf and the vote fall to chance.
    """
    bank, queries = F.normalize(bank, dim=1), F.normalize(queries, dim=1)
    kmax = min(max(ks), len(bank))
    hits = {k: torch.zeros(2) for k in ks}
    for start in range(0, len(queries), chunk):
        q, y = queries[start:start + chunk], query_labels[start:start + chunk]
        sim, idx = (q @ bank.T).topk(kmax, dim=1)
        neighbour_labels = bank_labels[idx]
        for k in ks:
            k_ = min(k, kmax)
            votes = torch.zeros(len(q), num_classes).scatter_add_(1, neighbour_labels[:, :k_],
                                                                  ((sim[:, :k_] - sim[:, :1]) / temperature).exp())
            ranked = votes.topk(min(5, num_classes), dim=1).indices
            hits[k][0] += (ranked[:, 0] == y).sum()
            hits[k][1] += (ranked == y[:, None]).any(dim=1).sum()
    return {k: {"top1": round(100 * h[0].item() / len(queries), 2), "top5": round(100 * h[1].item() / len(queries), 2)}
            for k, h in hits.items()}


def num_classes(*sets: ImageSet) -> int:
    return max(len(s.classes or []) for s in sets) or int(max(int(s.labels.max()) for s in sets) + 1)


def eval_device(name: str) -> torch.device:
    """The evaluation's device; under torchrun, this process's, in the process group that shares the work."""
    device = pick_device(distributed.device_for(name))
    distributed.init(device)
    return device


def knn_eval(spec: KnnSpec) -> dict:
    device = eval_device(spec.runtime.device)
    backbone, meta = load_encoder(spec.checkpoint, device)
    bank_set = open_labeled(spec.data, meta, "train", spec.runtime.seed)
    test_set = open_labeled(spec.data, meta, "test", spec.runtime.seed)
    workers = default_workers(spec.runtime.workers)
    t0 = time.perf_counter()
    view = (spec.data.image_size or meta["image_size"], meta["normalize"])
    bank, bank_labels = extract(backbone, bank_set, *view, device, spec.runtime.batch_size, workers)
    queries, labels = extract(backbone, test_set, *view, device, spec.runtime.batch_size, workers)
    results = weighted_knn(bank, bank_labels, queries, labels, spec.k, spec.temperature,
                           num_classes(bank_set, test_set))
    return {"checkpoint": meta["path"], "data": bank_set.name.rsplit(":", 1)[0], "bank": len(bank_set),
            "queries": len(test_set), "temperature": spec.temperature, "feature_dim": bank.shape[1],
            "seconds": round(time.perf_counter() - t0, 2), "skipped_files": len(bank_set.skipped) + len(test_set.skipped),
            "results": [{"k": k, **v} for k, v in results.items()]}


# ---- linear probe -------------------------------------------------------------------------------


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    ranked = logits.topk(min(5, logits.shape[1]), dim=1).indices
    return {"top1": round(100 * (ranked[:, 0] == labels).double().mean().item(), 2),
            "top5": round(100 * (ranked == labels[:, None]).any(dim=1).double().mean().item(), 2)}


def diverged(what: str, lr: float):
    raise UserError(f"The linear probe diverged: {what}; nothing was saved", f"lower --lr (now {lr:g})")


def linear_probe(spec: LinearProbeSpec, progress=None) -> dict:
    """Linear classifier on frozen features (MoCo: SGD momentum 0.9, lr 30, wd 0, x0.1 at 60%/80% of epochs).
    Under torchrun each process computes the features of its share of every batch (or, with cached features, of
    the images) and every process trains the same classifier on the whole batch: the single-process result."""
    device = eval_device(spec.runtime.device)
    backbone, meta = load_encoder(spec.checkpoint, device)
    out = spec.out or Path(meta["path"]).with_name(Path(meta["path"]).stem + ".probe.safetensors")
    ckpt.check_output(out, "--out", (Path(meta["path"]),), "linear-probe", spec.force)  # before the work, not after
    train_set = open_labeled(spec.data, meta, "train", spec.runtime.seed)
    test_set = open_labeled(spec.data, meta, "test", spec.runtime.seed)
    classes, workers, o, seed = num_classes(train_set, test_set), default_workers(spec.runtime.workers), spec.optim, spec.runtime.seed
    torch.manual_seed(seed)
    classifier = nn.Linear(meta["feature_dim"], classes).to(device)
    nn.init.normal_(classifier.weight, std=0.01)
    nn.init.zeros_(classifier.bias)
    batch_size = min(o.batch_size, len(train_set))  # a split smaller than the batch is one batch (said in the result)
    if not spec.cached and batch_size % distributed.world():
        raise UserError(f"The probe's batch of {batch_size} images cannot be shared equally by {distributed.world()} "
                        "processes", f"pass a --batch-size that is a multiple of {distributed.world()}, or --cached")
    share, local_batch = distributed.rank() * batch_size // distributed.world(), batch_size // distributed.world()
    optimizer = make_optimizer(decay_groups(list(classifier.parameters()), o.lr * batch_size / 256, o), o, device)
    norm, size = meta["normalize"], spec.data.image_size or meta["image_size"]
    train_view = crop_flip_view(spec.crop_scale, size, norm["mean"], norm["std"])
    cached = extract(backbone, train_set, size, norm, device, spec.runtime.batch_size, workers) if spec.cached else None
    steps_per_epoch = len(train_set) // batch_size
    total, warmup = o.epochs * steps_per_epoch, round((o.warmup_epochs or 0) * steps_per_epoch)
    generator, step, t0 = torch.Generator(device=device), 0, time.perf_counter()
    for epoch in range(o.epochs):
        order = epoch_order(len(train_set), seed, epoch)
        if cached is not None:
            batches = ((cached[0][i], cached[1][i]) for i in order[:steps_per_epoch * batch_size].split(batch_size))
        else:  # this process's share of each batch (all of it on one process)
            order = order[:steps_per_epoch * batch_size].view(-1, batch_size)[:, share:share + local_batch].reshape(-1)
            batches = ((x, y) for x, y, _ in train_set.batches(order, local_batch, workers=workers, drop_last=True))
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device)
            if cached is None:
                with torch.no_grad():
                    view = train_view(x, seed_step(generator, seed, step), rows=(share, batch_size))
                    x, y = distributed.gather_rows(backbone(view), y)
            set_lr(optimizer, lr_factor(step, total, warmup, o.schedule, o.milestones))
            loss = F.cross_entropy(classifier(x), y)
            if not torch.isfinite(loss):
                diverged(f"its loss became {loss.item()} at step {step + 1}", o.lr)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
        if progress is not None:
            progress(epoch + 1, o.epochs, loss.item())
    if not all(torch.isfinite(p).all() for p in classifier.parameters()):  # never save a probe of NaNs
        diverged(f"its weights became non-finite by step {step}", o.lr)
    with torch.no_grad():
        test_feats, test_labels = extract(backbone, test_set, size, norm, device, spec.runtime.batch_size, workers)
        logits = classifier(test_feats.to(device)).cpu()
    if not torch.isfinite(logits).all():
        diverged("its outputs on the test images overflow", o.lr)
    test_acc = accuracy(logits, test_labels)
    train_set.skipped[:] = sorted(set(distributed.gather_list(train_set.skipped)))
    result = {"checkpoint": meta["path"], "data": train_set.name.rsplit(":", 1)[0], "train_images": len(train_set),
              "test_images": len(test_set), "epochs": o.epochs, "lr": o.lr, "batch_size": batch_size,
              "cached": spec.cached,
              "final_loss": loss.item(), "seconds": round(time.perf_counter() - t0, 2),
              "skipped_files": len(train_set.skipped) + len(test_set.skipped), **test_acc}
    distributed.on_main(lambda: ckpt.save(
        out, {"probe.weight": classifier.weight, "probe.bias": classifier.bias},
        {"kind": "linear-probe", "spec": spec.model_dump(mode="json"), "results": result,
         "source_checkpoint": meta["path"], "classes": train_set.classes or list(range(classes)),
         "feature_dim": meta["feature_dim"]}))
    result["probe"] = str(out)
    return result


# ---- online kNN while pretraining -----------------------------------------------------------------

ONLINE_SHARE = 0.05  # of an epoch's compute that the automatic online kNN may take
MIN_ONLINE_BANK = 500  # fewer bank images make a kNN figure too noisy to follow


def resolve_online_knn(spec, images: int):
    """The spec with the online kNN's None fields filled: on every epoch with subsets sized to about 5% of an
    epoch's compute (a forward of a bank or query image costs about a third of a view's forward and backward) when
    the data has labelled train and test splits and the bank reaches MIN_ONLINE_BANK images; off otherwise."""
    m = spec.monitor
    if m.eval_every is not None and m.knn_bank is not None and m.knn_queries is not None or m.eval_every == 0:
        return spec
    splits = labelled_split_sizes(spec.data.source, spec.data.root, spec.data.classes)  # (train, test) images
    views = 2 + spec.augment.local_crops * (spec.augment.local_crop_size or spec.data.image_size) ** 2 \
        / spec.data.image_size ** 2
    budget = ONLINE_SHARE * 3 * views * images
    bank = m.knn_bank or int(min(10000, 0.8 * budget))
    every = m.eval_every if m.eval_every is not None else (1 if splits and bank >= MIN_ONLINE_BANK else 0)
    if every and splits is None:
        raise UserError(f"--eval-every {every}: the online kNN needs labelled train and test splits, and "
                        f"{spec.data.source} has none", "pass --eval-every 0, or pretrain on a labelled dataset")
    if every:
        bank = min(bank, splits[0])
        queries = min(m.knn_queries or max(1, min(2000, bank // 4)), splits[1])
    else:
        queries = m.knn_queries or max(1, bank // 4)
    return spec.model_copy(update={"monitor": m.model_copy(update={
        "eval_every": every, "knn_bank": bank, "knn_queries": queries})})


class OnlineKnn:
    """Weighted kNN top-1 of the method's exported encoder on fixed subsets (drawn with the run's seed, so a resumed
    run and `knn-eval --subset BANK --test-subset QUERIES` see the same images), centre views in eval mode: the
    training state and its RNG are untouched. Under torchrun every process embeds its share."""

    def __init__(self, spec, device: torch.device, norm: dict):
        """`norm`: the pretraining data's {mean, std}, which the checkpoint records and every evaluation uses."""
        m, d = spec.monitor, spec.data
        self.sets = [open_dataset(d.source, split, root=d.root, image_size=d.image_size, classes=d.classes,
                                  subset=size, seed=spec.runtime.seed)
                     for split, size in (("train", m.knn_bank), ("test", m.knn_queries))]
        self.spec, self.device, self.norm = spec, device, norm
        self.classes = num_classes(*self.sets)

    @torch.no_grad()
    def __call__(self, method) -> dict:
        t0 = time.perf_counter()
        encoder = method.exported_encoder()
        training = encoder.training
        encoder.eval()
        batch = EvalRuntimeSpec().batch_size  # knn-eval's feature batch: the same features to the last bit
        (bank, bank_labels), (queries, labels) = (
            extract(encoder, s, self.spec.data.image_size, self.norm, self.device, batch, 0) for s in self.sets)
        encoder.train(training)
        m = self.spec.monitor
        results = weighted_knn(bank, bank_labels, queries, labels, list(m.knn_k), m.knn_temperature, self.classes)
        return {**{f"top1_k{k}": r["top1"] for k, r in results.items()}, "seconds": round(time.perf_counter() - t0, 3)}

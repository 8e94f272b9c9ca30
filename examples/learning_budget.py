"""Does a short pretraining run beat both kNN baselines on real Fashion-MNIST? Prints the three accuracies.

    python examples/learning_budget.py --method simclr --epochs 4 --subset 10000 --backbone resnet18

The same function backs the slow learning tests (tests/test_learning.py). Baselines use the same bank,
queries, k and T: raw pixels, and the same encoder at random initialisation.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from contrastive_cli.data import open_dataset
from contrastive_cli.evaluate import extract, weighted_knn
from contrastive_cli.spec import PretrainSpec
from contrastive_cli.methods.base import build_method
from contrastive_cli.methods.fields import DataFacts
from contrastive_cli.train import prepare, train


def knn_top1(bank, bank_labels, queries, labels, k, t) -> dict[int, float]:
    """Top-1 at the tested k and, for the record, at k=20."""
    ks = sorted({k, 20})
    return {kk: r["top1"] for kk, r in weighted_knn(bank, bank_labels, queries, labels, ks, t, 10).items()}


def probe_top1(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor,
               epochs: int = 100, lr: float = 1.0, batch: int = 256, seed: int = 0) -> float:
    """Top-1 of a linear classifier on frozen (cached) features: `contrastive linear-probe --cached`'s recipe (SGD
    momentum 0.9, wd 0, lr x0.1 at 60% and 80% of the epochs, N(0, 0.01) weights) with the zoo table's lr 1."""
    g = torch.Generator().manual_seed(seed)
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    classifier = torch.nn.Linear(train.shape[1], classes)
    torch.nn.init.normal_(classifier.weight, std=0.01, generator=g)
    torch.nn.init.zeros_(classifier.bias)
    optimizer = torch.optim.SGD(classifier.parameters(), lr=lr * batch / 256, momentum=0.9)
    steps = len(train) // batch
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, [int(0.6 * epochs * steps), int(0.8 * epochs * steps)])
    for _ in range(epochs):
        for rows in torch.randperm(len(train), generator=g)[:steps * batch].view(steps, batch):
            loss = torch.nn.functional.cross_entropy(classifier(train[rows]), train_labels[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    with torch.no_grad():
        return round(100 * (classifier(test).argmax(1) == test_labels).float().mean().item(), 2)


@torch.no_grad()
def recalibrated(encoder: torch.nn.Module, images: torch.Tensor, size: int, norm: dict) -> torch.nn.Module:
    """`encoder` with its batch-norm statistics measured on `images` (uint8, centre views) instead of their initial
    0/1: a random-init control that separates learning from fitting normalisation statistics."""
    from contrastive_cli.augment import center_view
    for m in encoder.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches below
    encoder.train()
    for batch in images.split(500):
        encoder(center_view(batch, size, norm["mean"], norm["std"]))
    return encoder.eval()


def learning_run(method: str, out, *, epochs: int, subset: int, bank: int = 10000, queries: int = 2000,
                 k: int = 200, t: float = 0.1, backbone: str = "resnet18", seed: int = 0, probe: bool = False,
                 **spec_overrides) -> dict:
    """`probe`: also a linear probe (probe_top1) trained on the bank's features, scored on the queries, for the
    pretrained and the random-init encoder (results 'probe' and 'probe_random_init'), and for the random-init encoder
    with batch-norm statistics measured on the training images ('probe_random_init_bn', kNN 'random_init_bn')."""
    sections: dict = {"method": {"name": method}, "backbone": {"name": backbone},
                      "data": {"source": "fashion-mnist", "subset": subset},
                      "optim": {"epochs": epochs}, "runtime": {"out": str(out), "seed": seed},
                      "monitor": {"eval_every": 0}}  # the kNN below scores the end; per-epoch figures cost CI time
    for key, value in spec_overrides.items():  # e.g. optim__lr=0.1
        section, field = key.split("__")
        sections.setdefault(section, {})[field] = value
    run = prepare(PretrainSpec.model_validate(sections))
    bank_set = open_dataset("fashion-mnist", "train", subset=bank, seed=1)
    query_set = open_dataset("fashion-mnist", "test", subset=queries, seed=1)
    norm = {"mean": list(bank_set.mean), "std": list(bank_set.std)}

    def encoder_knn(backbone_module) -> dict:
        backbone_module.eval()
        b, bl = extract(backbone_module, bank_set, 28, norm, run.device, 1024, 0)
        q, ql = extract(backbone_module, query_set, 28, norm, run.device, 1024, 0)
        backbone_module.train()
        return {**knn_top1(b, bl, q, ql, k, t), **({"probe": probe_top1(b, bl, q, ql)} if probe else {})}

    pixels = knn_top1(bank_set.images.flatten(1).float(), bank_set.labels,
                      query_set.images.flatten(1).float(), query_set.labels, k, t)
    torch.manual_seed(seed)
    random_encoder = build_method(run.spec, DataFacts.of(run.data)).exported_encoder()
    random_init = encoder_knn(random_encoder)
    if probe:
        random_bn = encoder_knn(recalibrated(random_encoder, run.data.images[:2000], 28, norm))
    start = time.perf_counter()
    stats = train(run)
    seconds = time.perf_counter() - start
    pretrained = encoder_knn(run.method.exported_encoder())
    epochs = [json.loads(line) for line in (run.dir / "metrics.jsonl").read_text().splitlines() if '"type": "epoch"' in line]
    return {"method": method, "k": k, "pretrained": pretrained[k], "random_init": random_init[k], "pixels": pixels[k],
            "at_k20": {"pretrained": pretrained[20], "random_init": random_init[20], "pixels": pixels[20]},
            **({"probe": pretrained["probe"], "probe_random_init": random_init["probe"],
                "probe_random_init_bn": random_bn["probe"], "random_init_bn": random_bn[k]} if probe else {}),
            "train_seconds": round(seconds, 1), "images_per_s": round(stats["images_per_s"], 1),
            "final_loss": stats["loss"], "collapse_monitor": [e["collapse"]["verdict"] for e in epochs if "collapse" in e],
            "collapse_alarms": [e["collapse"]["alarm"] for e in epochs if "collapse" in e]}


def synthetic_learning_run(sections: dict, k: int, probe: bool = False) -> dict:
    """The same comparison on the embedded synthetic data (`sections`: a PretrainSpec dict whose data source is
    'synthetic' or 'synthetic-colour'): kNN top-1 at `k` (T 0.1, bank = train, queries = test) of the pretrained
    encoder, the same encoder at random initialisation, and raw pixels; `probe`: also linear probes (probe_top1)
    trained on the train split's features for both encoders ('probe', 'probe_random_init') and for the random-init
    encoder with batch-norm statistics measured on the data ('probe_random_init_bn', kNN 'random_init_bn')."""
    run = prepare(PretrainSpec.model_validate(sections))
    source = run.spec.data.source
    bank, queries = open_dataset(source, "train"), open_dataset(source, "test")
    norm = {"mean": list(bank.mean), "std": list(bank.std)}

    def knn(encoder) -> tuple[float, float | None]:
        encoder.eval()
        b, bl = extract(encoder, bank, bank.size, norm, run.device, 1000, 0)
        q, ql = extract(encoder, queries, bank.size, norm, run.device, 1000, 0)
        return weighted_knn(b, bl, q, ql, [k], 0.1, 10)[k]["top1"], probe_top1(b, bl, q, ql) if probe else None

    torch.manual_seed(0)
    random_encoder = build_method(run.spec, DataFacts.of(run.data)).exported_encoder()
    random_init, probe_random_init = knn(random_encoder)
    controls = {}
    if probe:  # the random-init encoder with batch-norm statistics measured on the training images
        controls["random_init_bn"], controls["probe_random_init_bn"] = knn(
            recalibrated(random_encoder, run.data.images[:2000], bank.size, norm))
    pixels = weighted_knn(bank.images.flatten(1).float(), bank.labels, queries.images.flatten(1).float(),
                          queries.labels, [k], 0.1, 10)[k]["top1"]
    train(run)
    pretrained, probe_pretrained = knn(run.method.exported_encoder())
    return {"pretrained": pretrained, "random_init": random_init, "pixels": pixels,
            **({"probe": probe_pretrained, "probe_random_init": probe_random_init, **controls} if probe else {})}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="simclr")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--subset", type=int, default=10000)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--out", default="runs/learning-budget")
    ap.add_argument("--set", nargs="*", default=[], help="section__field=value overrides, e.g. optim__lr=0.1")
    args = ap.parse_args()
    overrides = {kv.split("=")[0]: json.loads(kv.split("=")[1]) for kv in args.set}
    import shutil
    shutil.rmtree(args.out, ignore_errors=True)
    print(json.dumps(learning_run(args.method, args.out, epochs=args.epochs, subset=args.subset,
                                  backbone=args.backbone, **overrides)))

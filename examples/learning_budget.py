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


def learning_run(method: str, out, *, epochs: int, subset: int, bank: int = 10000, queries: int = 2000,
                 k: int = 200, t: float = 0.1, backbone: str = "resnet18", seed: int = 0, **spec_overrides) -> dict:
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

    def encoder_knn(backbone_module) -> float:
        backbone_module.eval()
        b, bl = extract(backbone_module, bank_set, 28, norm, run.device, 1024, 0)
        q, ql = extract(backbone_module, query_set, 28, norm, run.device, 1024, 0)
        backbone_module.train()
        return knn_top1(b, bl, q, ql, k, t)

    pixels = knn_top1(bank_set.images.flatten(1).float(), bank_set.labels,
                      query_set.images.flatten(1).float(), query_set.labels, k, t)
    torch.manual_seed(seed)
    random_init = encoder_knn(build_method(run.spec, DataFacts.of(run.data)).exported_encoder())
    start = time.perf_counter()
    stats = train(run)
    seconds = time.perf_counter() - start
    pretrained = encoder_knn(run.method.exported_encoder())
    epochs = [json.loads(line) for line in (run.dir / "metrics.jsonl").read_text().splitlines() if '"type": "epoch"' in line]
    return {"method": method, "k": k, "pretrained": pretrained[k], "random_init": random_init[k], "pixels": pixels[k],
            "at_k20": {"pretrained": pretrained[20], "random_init": random_init[20], "pixels": pixels[20]},
            "train_seconds": round(seconds, 1), "images_per_s": round(stats["images_per_s"], 1),
            "final_loss": stats["loss"], "collapse_monitor": [e["collapse"]["verdict"] for e in epochs if "collapse" in e],
            "collapse_alarms": [e["collapse"]["alarm"] for e in epochs if "collapse" in e]}


def synthetic_learning_run(sections: dict, k: int) -> dict:
    """The same comparison on the embedded synthetic data (`sections`: a PretrainSpec dict whose data source is
    'synthetic' or 'synthetic-colour'): kNN top-1 at `k` (T 0.1, bank = train, queries = test) of the pretrained
    encoder, the same encoder at random initialisation, and raw pixels."""
    run = prepare(PretrainSpec.model_validate(sections))
    source = run.spec.data.source
    bank, queries = open_dataset(source, "train"), open_dataset(source, "test")
    norm = {"mean": list(bank.mean), "std": list(bank.std)}

    def knn(encoder) -> float:
        encoder.eval()
        b, bl = extract(encoder, bank, bank.size, norm, run.device, 1000, 0)
        q, ql = extract(encoder, queries, bank.size, norm, run.device, 1000, 0)
        return weighted_knn(b, bl, q, ql, [k], 0.1, 10)[k]["top1"]

    torch.manual_seed(0)
    random_init = knn(build_method(run.spec, DataFacts.of(run.data)).exported_encoder())
    pixels = weighted_knn(bank.images.flatten(1).float(), bank.labels, queries.images.flatten(1).float(),
                          queries.labels, [k], 0.1, 10)[k]["top1"]
    train(run)
    return {"pretrained": knn(run.method.exported_encoder()), "random_init": random_init, "pixels": pixels}


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

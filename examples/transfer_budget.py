"""Does pretraining beat training from scratch at an equal budget? Pretrains SimCLR on Fashion-MNIST (labels
unused), then transfers few-shot to a target (pretrained vs scratch, same steps), and prints one JSON line per seed.

    python examples/transfer_budget.py --seeds 0 1 2                          # Fashion-MNIST -> synthetic shapes
    python examples/transfer_budget.py --source-classes 0,1,2,3,4 --target fashion-mnist --target-classes 5,6,7,8,9
    python examples/transfer_budget.py --checkpoint runs/fm/checkpoint.safetensors --shots 20 --set optim__lr=0.2

The same function backs the slow transfer test (tests/test_transfer.py). Each seed draws its own shots, head
initialisation and augmentation; the pretrained checkpoint is shared (pretrained with --pretrain-seed).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Optional

def pretrain_source(out: Path, *, method: str = "simclr", epochs: int = 10, subset: int = 10000, seed: int = 0,
                    classes: Optional[str] = None, **spec_overrides) -> Path:
    """Self-supervised pretraining of the small CNN on Fashion-MNIST, or on some of its classes (labels unused)."""
    from contrastive_cli.spec import PretrainSpec
    from contrastive_cli.train import prepare, train

    sections: dict = {"method": {"name": method}, "backbone": {"name": "small_cnn"},
                      "data": {"source": "fashion-mnist", "subset": subset, "classes": classes},
                      "augment": {"crop_scale": (0.2, 1.0)}, "optim": {"epochs": epochs},
                      "runtime": {"out": str(out), "seed": seed}}
    for key, value in spec_overrides.items():  # e.g. optim__lr=0.1
        section, field = key.split("__")
        sections.setdefault(section, {})[field] = value
    run = prepare(PretrainSpec.model_validate(sections))
    train(run)
    return run.checkpoint_path


def transfer_run(checkpoint: Path, *, target: str = "synthetic", classes: Optional[str] = None, shots: int = 10,
                 seed: int = 0, test_subset: Optional[int] = None, out: Optional[Path] = None, **spec_overrides) -> dict:
    """Few-shot transfer to `target` (some of its classes) with the scratch baseline; the command's JSON result."""
    from contrastive_cli.spec import TransferSpec
    from contrastive_cli.transfer import transfer

    sections: dict = {"checkpoint": str(checkpoint), "shots": shots, "baseline": "scratch",
                      "data": {"source": target, "classes": classes, "test_subset": test_subset},
                      "runtime": {"seed": seed}, "out": str(out) if out else None}
    for key, value in spec_overrides.items():
        if "__" in key:
            section, field = key.split("__")
            sections.setdefault(section, {})[field] = value
        else:
            sections[key] = value
    return transfer(TransferSpec.model_validate(sections))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", type=Path, help="reuse a pretrained checkpoint instead of pretraining")
    ap.add_argument("--out", type=Path, default=Path("runs/transfer-budget"))
    ap.add_argument("--method", default="simclr")
    ap.add_argument("--pretrain-epochs", type=int, default=10)
    ap.add_argument("--pretrain-subset", type=int, default=10000)
    ap.add_argument("--pretrain-seed", type=int, default=0)
    ap.add_argument("--source-classes", help="pretrain on these Fashion-MNIST classes only, e.g. 0,1,2,3,4")
    ap.add_argument("--target", default="synthetic", help="labeled target dataset (default: the synthetic shapes)")
    ap.add_argument("--target-classes", help="transfer to these classes of the target only, e.g. 5,6,7,8,9")
    ap.add_argument("--shots", type=int, default=10)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--test-subset", type=int)
    ap.add_argument("--set", nargs="*", default=[], help="transfer spec overrides, e.g. optim__lr=0.2 freeze=true")
    args = ap.parse_args()
    overrides = {kv.split("=")[0]: json.loads(kv.split("=")[1]) for kv in args.set}
    checkpoint = args.checkpoint
    if checkpoint is None:
        t0 = time.perf_counter()
        checkpoint = pretrain_source(args.out, method=args.method, epochs=args.pretrain_epochs,
                                     subset=args.pretrain_subset, seed=args.pretrain_seed,
                                     classes=args.source_classes)
        print(json.dumps({"pretrained": str(checkpoint), "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
    for seed in args.seeds:
        r = transfer_run(checkpoint, target=args.target, classes=args.target_classes, shots=args.shots, seed=seed, test_subset=args.test_subset,
                         out=args.out / f"transfer-seed{seed}.safetensors", **overrides)
        rows = {row["init"]: row for row in r["results"]}
        print(json.dumps({"seed": seed, "target": args.target, "shots": args.shots, "steps": r["steps"], "epochs": r["epochs"],
                          "pretrained": rows["pretrained"]["top1"], "scratch": rows["scratch"]["top1"],
                          "gain": r["gain"]["top1"], "seconds": [rows["pretrained"]["seconds"],
                                                                 rows["scratch"]["seconds"]], **overrides}), flush=True)

#!/usr/bin/env bash
# images/s of `contrastive pretrain` per method: ResNet-18 (ImageNet stem), Fashion-MNIST 28 px, batch 256, two views.
# Reports the median per-step throughput of 12 steps (the first two, warm-up, excluded).
set -euo pipefail
out=$(mktemp -d)
for method in simclr mocov2 byol simsiam; do
  extra=(); [ "$method" = mocov2 ] && extra=(--queue-size 2048)  # the queue must fit the 3072-image subset
  contrastive pretrain --method "$method" --data fashion-mnist --backbone resnet18 --batch-size 256 \
    --subset 3072 --epochs 1 "${extra[@]}" --out "$out/$method" >/dev/null
  python3 - "$out/$method/metrics.jsonl" "$method" <<'PY'
import json, statistics, sys
steps = [json.loads(l) for l in open(sys.argv[1]) if '"step"' in l][2:]
print(f"{sys.argv[2]:8s} {statistics.median(s['images_per_s'] for s in steps):7.0f} images/s  "
      f"(data wait {100 * sum(s['data_wait'] for s in steps) / sum(256 / s['images_per_s'] for s in steps):.1f}% of step time)")
PY
done
rm -rf "$out"

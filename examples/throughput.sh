#!/usr/bin/env bash
# The table of docs/performance.md: for each method, pretraining throughput against the model-only bound.
# ResNet-18 (ImageNet stem), Fashion-MNIST 28 px, batch 256, two views, default workers and threads.
#   examples/throughput.sh [STEPS] [extra pretrain flags...]     e.g.  examples/throughput.sh 30 --device cuda
#   METHODS="mocov3 dino" BACKBONE="vit_tiny --patch-size 7" examples/throughput.sh 20    # the ViT rows
# Each row is one `contrastive pretrain --method M --data fashion-mnist --benchmark STEPS --json`.
set -euo pipefail
steps=${1:-30}
shift || true
echo "| method | full step (images/s) | model-only bound (images/s) | ratio | data wait | augmentation | peak RSS (MiB) | load avg |"
echo "|---|---|---|---|---|---|---|---|"
for method in ${METHODS:-simclr mocov2 byol simsiam swav dino mocov3 barlowtwins vicreg nnclr}; do
  # shellcheck disable=SC2086  # BACKBONE holds the backbone name and its flags
  contrastive pretrain --method "$method" --data fashion-mnist --backbone ${BACKBONE:-resnet18} --batch-size 256 \
    --benchmark "$steps" --json "$@" | python3 -c '
import json, sys
r = json.load(sys.stdin)
cells = [r["method"], "%.1f" % r["full_images_per_s"], "%.1f" % r["model_only_images_per_s"], "%.3f" % r["ratio"],
         "%.1f%%" % (100 * r["data_wait_share"]), "%.1f%%" % (100 * r["augment_share"]), "%.0f" % r["peak_rss_mib"],
         "%.1f–%.1f" % tuple(r["load_average"])]
print("| " + " | ".join(cells) + " |")'
done

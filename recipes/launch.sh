#!/usr/bin/env bash
# Launch a distilldift training recipe on one machine or many (torch DDP through torchrun).
#
#   one machine, 8 GPUs:   GPUS=8 recipes/launch.sh coco /data/coco-12k runs/coco
#   two machines:          NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 GPUS=8 recipes/launch.sh coco /data runs/coco
#                          NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 GPUS=8 recipes/launch.sh coco /data runs/coco
#   resume after a crash:  add --resume after the three arguments (same command otherwise)
#
# Extra arguments are passed to `distilldift train` (e.g. --override steps=1000).
set -euo pipefail
RECIPE=${1:?recipe name or .json}; DATA=${2:?training image folder}; OUT=${3:?output folder}; shift 3
exec torchrun \
  --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" \
  --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
  --nproc_per_node "${GPUS:-1}" \
  -m distilldift train --recipe "$RECIPE" --data "$DATA" --out "$OUT" "$@"

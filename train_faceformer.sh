#!/usr/bin/env bash
# Train FaceFormer. Extra arguments are config overrides (SECTION.key=value).
#   bash train_faceformer.sh                                  # config/faceformer.yaml, one process
#   CONFIG=config/demo.yaml bash train_faceformer.sh TRAIN.epochs=5
#   NPROC_PER_NODE=4 bash train_faceformer.sh                 # 4 GPUs with torchrun + DDP
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=host0 NPROC_PER_NODE=8 bash train_faceformer.sh   # multi-node
set -euo pipefail
cd "$(dirname "$0")"
if [ -z "${VIRTUAL_ENV:-}" ] && [ -z "${CONDA_PREFIX:-}" ] && [ -x .venv/bin/python ]; then
  source .venv/bin/activate
fi
CONFIG=${CONFIG:-config/faceformer.yaml}
NPROC_PER_NODE=${NPROC_PER_NODE:-1}
NNODES=${NNODES:-1}
if [ "$NPROC_PER_NODE" -gt 1 ] || [ "$NNODES" -gt 1 ]; then
  exec torchrun --nnodes "$NNODES" --node_rank "${NODE_RANK:-0}" --nproc_per_node "$NPROC_PER_NODE" \
    --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
    train.py --config "$CONFIG" "$@"
fi
exec python train.py --config "$CONFIG" "$@"

#!/usr/bin/env bash
# EfficientNet-B4 convergence training, FP32, 8x V100-32G: 32 images per GPU (NVIDIA's published per-GPU batch).
. "$(dirname "${BASH_SOURCE[0]}")/../../recipe.sh"
exec "$LAUNCH" FP32 8 "$CFG" train_and_eval "${TRAIN_ARGS[@]}" --train_batch_size 32 "$@"

#!/usr/bin/env bash
# EfficientNetV2-S convergence training, TF32, 8x A100-80G: 230 images per GPU (NVIDIA's published per-GPU batch).
. "$(dirname "${BASH_SOURCE[0]}")/../../recipe.sh"
exec "$LAUNCH" TF32 8 "$CFG" train_and_eval "${TRAIN_ARGS[@]}" --train_batch_size 230 "$@"

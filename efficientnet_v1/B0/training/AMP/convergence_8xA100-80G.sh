#!/usr/bin/env bash
# EfficientNet-B0 convergence training, AMP, 8x A100-80G: 1024 images per GPU (NVIDIA's published per-GPU batch).
. "$(dirname "${BASH_SOURCE[0]}")/../../recipe.sh"
exec "$LAUNCH" AMP 8 "$CFG" train_and_eval "${TRAIN_ARGS[@]}" --train_batch_size 1024 "$@"

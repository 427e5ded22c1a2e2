#!/usr/bin/env bash
# EfficientNet-B0 convergence training, AMP, 8x V100-32G: 512 images per GPU (NVIDIA's published per-GPU batch).
. "$(dirname "${BASH_SOURCE[0]}")/../../recipe.sh"
exec "$LAUNCH" AMP 8 "$CFG" train_and_eval "${TRAIN_ARGS[@]}" --train_batch_size 512 "$@"

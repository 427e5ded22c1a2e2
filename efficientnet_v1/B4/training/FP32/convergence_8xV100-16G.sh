#!/usr/bin/env bash
# EfficientNet-B4 convergence training, FP32, 8x V100-16G: 16 images per GPU (half the V100-32G batch (no published 16G recipe)).
. "$(dirname "${BASH_SOURCE[0]}")/../../recipe.sh"
exec "$LAUNCH" FP32 8 "$CFG" train_and_eval "${TRAIN_ARGS[@]}" --train_batch_size 16 "$@"

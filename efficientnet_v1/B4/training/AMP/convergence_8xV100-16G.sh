#!/usr/bin/env bash
# EfficientNet-B4 convergence training, AMP, 8x V100-16G: 32 images per GPU (half the V100-32G batch (no published 16G recipe)).
. "$(dirname "${BASH_SOURCE[0]}")/../../recipe.sh"
exec "$LAUNCH" AMP 8 "$CFG" train_and_eval "${TRAIN_ARGS[@]}" --train_batch_size 32 "$@"

#!/usr/bin/env bash
# EfficientNetV2-S top-1/top-5 of the run in $MODEL_DIR (default /results), AMP, 1x V100-32G, batch 128.
. "$(dirname "${BASH_SOURCE[0]}")/../recipe.sh"
exec "$LAUNCH" AMP 1 "$CFG" eval "${EVAL_ARGS[@]}" --eval_batch_size 128 "$@"

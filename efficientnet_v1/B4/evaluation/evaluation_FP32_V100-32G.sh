#!/usr/bin/env bash
# EfficientNet-B4 top-1/top-5 of the run in $MODEL_DIR (default /results), FP32, 1x V100-32G, batch 32.
. "$(dirname "${BASH_SOURCE[0]}")/../recipe.sh"
exec "$LAUNCH" FP32 1 "$CFG" eval "${EVAL_ARGS[@]}" --eval_batch_size 32 "$@"

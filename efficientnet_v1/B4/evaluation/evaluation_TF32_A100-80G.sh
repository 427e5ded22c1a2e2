#!/usr/bin/env bash
# EfficientNet-B4 top-1/top-5 of the run in $MODEL_DIR (default /results), TF32, 1x A100-80G, batch 80.
. "$(dirname "${BASH_SOURCE[0]}")/../recipe.sh"
exec "$LAUNCH" TF32 1 "$CFG" eval "${EVAL_ARGS[@]}" --eval_batch_size 80 "$@"

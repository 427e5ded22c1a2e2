#!/usr/bin/env bash
# EfficientNet-B0 top-1/top-5 of the run in $MODEL_DIR (default /results), AMP, 1x A100-80G, batch 1024.
. "$(dirname "${BASH_SOURCE[0]}")/../recipe.sh"
exec "$LAUNCH" AMP 1 "$CFG" eval "${EVAL_ARGS[@]}" --eval_batch_size 1024 "$@"

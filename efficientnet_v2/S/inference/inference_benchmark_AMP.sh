#!/usr/bin/env bash
# EfficientNetV2-S inference throughput and latency, AMP, 1 GPU, synthetic data.
. "$(dirname "${BASH_SOURCE[0]}")/../recipe.sh"
exec "$LAUNCH" AMP 1 "$CFG" inference_benchmark --dataset synthetic "${EVAL_ARGS[@]}" --eval_batch_size 128 "$@"

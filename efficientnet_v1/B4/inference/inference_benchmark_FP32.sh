#!/usr/bin/env bash
# EfficientNet-B4 inference throughput and latency, FP32, 1 GPU, synthetic data.
. "$(dirname "${BASH_SOURCE[0]}")/../recipe.sh"
exec "$LAUNCH" FP32 1 "$CFG" inference_benchmark --dataset synthetic "${EVAL_ARGS[@]}" --eval_batch_size 64 "$@"

#!/usr/bin/env bash
# EfficientNetV2-S training throughput, FP32, 8x V100-32G: 64 images per GPU (the convergence batch).
. "$(dirname "${BASH_SOURCE[0]}")/../../recipe.sh"
exec "$LAUNCH" FP32 8 "$CFG" training_benchmark "${BENCH_ARGS[@]}" --train_batch_size 64 "$@"

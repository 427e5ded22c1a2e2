#!/usr/bin/env bash
# EfficientNetV2-S training throughput, AMP, 8x A100-80G: 460 images per GPU (the convergence batch).
. "$(dirname "${BASH_SOURCE[0]}")/../../recipe.sh"
exec "$LAUNCH" AMP 8 "$CFG" training_benchmark "${BENCH_ARGS[@]}" --train_batch_size 460 "$@"

#!/usr/bin/env bash
# EfficientNet-B4 training throughput, AMP, 8x V100-32G: 64 images per GPU (the convergence batch).
. "$(dirname "${BASH_SOURCE[0]}")/../../recipe.sh"
exec "$LAUNCH" AMP 8 "$CFG" training_benchmark "${BENCH_ARGS[@]}" --train_batch_size 64 "$@"

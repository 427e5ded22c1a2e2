#!/usr/bin/env bash
# The one launcher behind every recipe script: precision, GPU count, config, mode, extra flags.
#
#   scripts/launch.sh [--dry_run] PRECISION NUM_GPUS CONFIG MODE [main.py flags...]
#
#   PRECISION  AMP (mixed float16 + XLA), TF32 (float32 with TF32 math + XLA) or FP32 (strict
#              float32 + XLA); XLA only with GPUs
#   NUM_GPUS   GPUs of this process: N > 1 on one host = MirroredStrategy over N GPUs; under
#              srun / mpirun every task passes 1 (runtime/cluster.py builds the cluster);
#              0 = CPU only, without XLA (small test runs, e.g. FP32 0)
#   CONFIG     model config, e.g. config/efficientnet_v2/s_cfg.py (relative to the repo root)
#   MODE       train | train_and_eval | eval | predict | training_benchmark | inference_benchmark
#
# Environment: DATA_DIR (default /data), MODEL_DIR (default /results), PYTHON (default python3),
# EXTRA_ARGS (more main.py flags, split at whitespace, no quoting; they come after the flags
# given after MODE). Flags given after MODE come last, then EXTRA_ARGS, so they override the
# launcher's and the recipe's (argparse: the last one wins).
# --dry_run as first argument, or DRY_RUN=1, prints the exact command instead of running it.
set -euo pipefail

usage() {
  echo "usage: $0 [--dry_run] AMP|TF32|FP32 NUM_GPUS CONFIG MODE [main.py flags...]" >&2
  exit 2
}
fail() {
  echo "$0: error: $*" >&2
  exit 2
}

dry_run=${DRY_RUN:-0}
if [[ "${1:-}" == "--dry_run" ]]; then
  dry_run=1
  shift
fi
[[ $# -ge 4 ]] || usage
precision=$1 num_gpus=$2 config=$3 mode=$4
shift 4

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
case "$precision" in
  AMP) precision_flags=(--use_amp) ;;
  TF32) precision_flags=(--no-use_amp --use_tf32) ;;
  FP32) precision_flags=(--no-use_amp --no-use_tf32) ;;
  *) fail "precision '$precision' is not one of AMP, TF32, FP32" ;;
esac
[[ "$num_gpus" =~ ^[0-9]+$ ]] || fail "NUM_GPUS '$num_gpus' is not a non-negative integer"
# NOTE: XLA compiles for seconds to minutes before the first step and is slower on CPU.
if ((num_gpus > 0)); then
  precision_flags+=(--use_xla)
else
  precision_flags+=(--no-use_xla)
fi
read -r -d '' -a extra_args <<<"${EXTRA_ARGS:-}" || true # all lines; read ends at EOF with 1
given_config=$config
if [[ "$config" != /* && ! -f "$config" ]]; then
  config="$repo_root/$config"
fi
[[ -f "$config" ]] || fail "config '$given_config' not found (relative paths are tried from $repo_root too)"

cmd=("${PYTHON:-python3}" "$repo_root/main.py" --cfg "$config" --mode "$mode"
  --num_gpus "$num_gpus" "${precision_flags[@]}"
  --data_dir "${DATA_DIR:-/data}" --model_dir "${MODEL_DIR:-/results}" "$@" "${extra_args[@]}")

if [[ "$dry_run" == 1 ]]; then
  printf '%q ' "${cmd[@]}"
  printf '\n'
  exit 0
fi
exec "${cmd[@]}"

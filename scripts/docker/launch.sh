#!/usr/bin/env bash
# Start an interactive container of image NAME with every GPU, the dataset at /data and the
# results at /results (the recipes' defaults).
#   scripts/docker/launch.sh NAME [COMMAND...]    (default COMMAND: bash)
# Environment: DATA_DIR (host dataset dir, default /data), RESULTS_DIR (host results dir,
# default ./results), DRY_RUN=1 prints the command.
set -euo pipefail
usage="usage: $0 NAME [COMMAND...]   (env: DATA_DIR, RESULTS_DIR, DRY_RUN=1)"
if [[ $# -lt 1 ]]; then
  echo "$usage" >&2
  exit 2
fi
if [[ $1 == -h || $1 == --help ]]; then
  echo "$usage"
  exit 0
fi
if [[ $1 == -* ]]; then
  echo "$0: error: NAME is an image name, not an option: $1" >&2
  echo "$usage" >&2
  exit 2
fi
name=$1
shift
data_dir=${DATA_DIR:-/data}
results_dir=${RESULTS_DIR:-$PWD/results}
# Large shared memory and unlimited locked memory: NCCL and tf.data workers need them.
cmd=(docker run --gpus all --rm -it --ipc=host --ulimit memlock=-1 --ulimit stack=67108864
  -v "$data_dir:/data" -v "$results_dir:/results" "$name" "${@:-bash}")
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  printf '%q ' "${cmd[@]}"
  printf '\n'
  exit 0
fi
mkdir -p "$results_dir"
exec "${cmd[@]}"

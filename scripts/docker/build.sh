#!/usr/bin/env bash
# Build the training image from the repository's Dockerfile.
#   scripts/docker/build.sh NAME        (e.g. efficientnet-tf2; DRY_RUN=1 prints the command)
set -euo pipefail
if [[ $# -ne 1 ]]; then
  echo "usage: $0 NAME" >&2
  exit 2
fi
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cmd=(docker build --tag "$1" "$repo_root")
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  printf '%q ' "${cmd[@]}"
  printf '\n'
  exit 0
fi
exec "${cmd[@]}"

#!/usr/bin/env bash
# The image's entry point: catch the two set-up mistakes that would otherwise surface minutes into a run, then
# run the command (default: dvc repro) in the repository mounted at /repo.
set -euo pipefail

if [[ ! -f dvc.yaml && "${1:-}" == dvc ]]; then
  echo "dapt image: no dvc.yaml in $PWD: mount the repository there, e.g. docker run -v \"\$PWD\":$PWD ..." >&2
  exit 2
fi
# The W&B key only ever comes from the environment (docker run -e WANDB_API_KEY), never from params or the image.
if [[ "${WANDB_MODE:-}" == online && -z "${WANDB_API_KEY:-}" ]]; then
  echo "dapt image: WANDB_MODE=online but no WANDB_API_KEY: pass it with docker run -e WANDB_API_KEY ..." >&2
  exit 2
fi
exec "$@"

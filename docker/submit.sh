#!/usr/bin/env bash
# Submit docker/pretrain.sbatch with the allocation params.yaml asks for: pretrain.num_nodes nodes, and on each
# one task and one GPU per pretrain.devices. Further arguments go to sbatch:
#   docker/submit.sh --partition=gpu --time=12:00:00
# DAPT_RUN, if set, prefixes each command (see docker/pretrain.sbatch).
set -euo pipefail
cd "$(dirname "$0")/.."
read -ra run <<< "${DAPT_RUN:-}"

line=$("${run[@]}" python -m stages.launch sbatch)  # e.g. --nodes=2 --ntasks-per-node=4 --gres=gpu:4
read -ra allocation <<< "$line"
sbatch "${allocation[@]}" "$@" docker/pretrain.sbatch

#!/usr/bin/env bash
# The pretrain stage under torchrun, on one node of a multi-node run: start it on every node, each with its own
# rank and the address of node 0; params.yaml says how many nodes and GPUs per node (pretrain.num_nodes,
# pretrain.devices). Before: `dvc repro mask`; after: `dvc commit --force pretrain && dvc repro` (README).
#   docker/torchrun.sh NODE_RANK NODE0_ADDRESS [PORT]
# DAPT_RUN, if set, prefixes the command (see docker/pretrain.sbatch).
set -euo pipefail
if (($# < 2)); then
  echo "usage: docker/torchrun.sh NODE_RANK NODE0_ADDRESS [PORT]" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
read -ra run <<< "${DAPT_RUN:-}"

line=$("${run[@]}" python -m stages.launch torchrun --node-rank "$1" --master-addr "$2" --master-port "${3:-29500}")
read -ra command <<< "$line"  # torchrun --nnodes=... --nproc-per-node=... ... -m stages.pretrain
exec "${run[@]}" "${command[@]}"

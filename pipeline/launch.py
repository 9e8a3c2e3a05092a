"""Launch lines for the pretrain stage on GPU clusters, rendered from `pretrain.num_nodes` and `pretrain.devices`.

The distributed engine is Lightning's DDP. SLURM's `srun` or PyTorch's `torchrun` start one process per GPU,
and Lightning reads world size and ranks from the environment they set (its SLURMEnvironment and
TorchElasticEnvironment). All this module adds is the arithmetic that keeps the launcher's allocation and the
Trainer's `num_nodes` / `devices` from disagreeing: both come from params.yaml.
"""

from __future__ import annotations

from pipeline.config import ParamsError, PretrainParams

STAGE = ["-m", "stages.pretrain"]  # what every launched process runs: the pretrain stage, as dvc.yaml does
MASTER_PORT = 29500  # torchrun's own default


def gpus_per_node(p: PretrainParams) -> int:
    if p.devices == "auto":
        raise ParamsError("params.yaml: pretrain.devices = 'auto': a cluster launch needs the number of GPUs "
                          "per node (e.g. devices: 4), so the allocation and the Trainer agree")
    return p.devices


def sbatch_options(p: PretrainParams) -> list[str]:
    """sbatch's allocation: `num_nodes` nodes, one task per device on each (srun starts them), and the GPUs."""
    n = gpus_per_node(p)
    options = [f"--nodes={p.num_nodes}", f"--ntasks-per-node={n}"]
    if p.accelerator != "cpu":
        options.append(f"--gres=gpu:{n}")
    return options


def torchrun_command(p: PretrainParams, node_rank: int, master_addr: str | None,
                     master_port: int = MASTER_PORT) -> list[str]:
    """The torchrun line for one node. Every node runs it with its own rank and the address of node 0."""
    n = gpus_per_node(p)
    if not 0 <= node_rank < p.num_nodes:
        raise ParamsError(f"node rank {node_rank} is outside 0..{p.num_nodes - 1} (pretrain.num_nodes = "
                          f"{p.num_nodes})")
    if p.num_nodes == 1:  # one machine: torchrun picks a free port on localhost itself
        return ["torchrun", "--standalone", f"--nproc-per-node={n}", *STAGE]
    if not master_addr:
        raise ParamsError(f"pretrain.num_nodes = {p.num_nodes}: every node needs the address of node 0 "
                          "(--master-addr)")
    return ["torchrun", f"--nnodes={p.num_nodes}", f"--nproc-per-node={n}", f"--node-rank={node_rank}",
            f"--master-addr={master_addr}", f"--master-port={master_port}", *STAGE]

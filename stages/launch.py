"""launch: print the cluster launch line for the pretrain stage, from params.yaml (pretrain.num_nodes, .devices).

    dapt launch sbatch                                   sbatch's allocation, e.g.
                                                         --nodes=2 --ntasks-per-node=4 --gres=gpu:4
    dapt launch torchrun --node-rank 0 --master-addr node01
                                                         the torchrun line for one node, e.g.
                                                         torchrun --nnodes=2 --nproc-per-node=4 --node-rank=0
                                                         --master-addr=node01 --master-port=29500 -m stages.pretrain

docker/submit.sh and docker/torchrun.sh run these; see the README, "Run on GPUs".
"""

import argparse
import shlex
import sys

from pipeline.config import PARAMS_FILE, ParamsError, load_params
from pipeline.launch import MASTER_PORT, sbatch_options, torchrun_command


def main(argv: list[str]) -> None:
    cli = argparse.ArgumentParser(prog="dapt launch", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--params", default=PARAMS_FILE, help="the params file (default: %(default)s)")
    sub = cli.add_subparsers(dest="launcher", required=True)
    sub.add_parser("sbatch", help="the sbatch options: nodes, tasks per node, GPUs per node")
    torchrun = sub.add_parser("torchrun", help="the torchrun command for one node")
    torchrun.add_argument("--node-rank", type=int, default=0, help="this node's rank, 0..num_nodes-1")
    torchrun.add_argument("--master-addr", help="host name or address of node 0 (needed when num_nodes > 1)")
    torchrun.add_argument("--master-port", type=int, default=MASTER_PORT, help="a free port on node 0 "
                                                                               "(default: %(default)s)")
    args = cli.parse_args(argv)
    p = load_params(args.params).pretrain
    if args.launcher == "sbatch":
        line = sbatch_options(p)
    else:
        line = torchrun_command(p, args.node_rank, args.master_addr, args.master_port)
    print(shlex.join(line))


if __name__ == "__main__":
    # Not stages.run: that imports torch to know its errors, and this runs on login nodes, in a second.
    try:
        main(sys.argv[1:])
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None

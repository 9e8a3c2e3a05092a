"""Cluster launch: the sbatch and torchrun lines rendered from params.yaml, the world Lightning sees under them,
and the SLURM and torchrun recipes of docker/ run for real -- on CPU processes, two "nodes" on this machine.

No SLURM runs here: FAKE_SRUN starts the tasks with the variables srun documents for each task (block
distribution, its default), and Lightning's own SLURMEnvironment reads them. torchrun is the real one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from inspect import getsource
from pathlib import Path
from unittest import mock

import pytest
import pytorch_lightning as pl
import yaml
from lightning_fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from lightning_fabric.utilities.rank_zero import rank_zero_only as fabric_rank_zero_only
from lightning_utilities.core.rank_zero import rank_zero_only as utils_rank_zero_only
from pytorch_lightning.utilities.rank_zero import rank_zero_only as pl_rank_zero_only

from tests.conftest import ROOT
from tests.test_pipeline_e2e import TINY_PARAMS, env, make_repo, run, stages_run

SBATCH = ROOT / "docker" / "pretrain.sbatch"
JOB_ID = "4242"


def launch(params: dict, tmp_path: Path, *args: str) -> list[str]:
    """The line `dapt launch` renders for these params -- the real CLI, as docker/submit.sh and torchrun.sh run it."""
    file = tmp_path / "params.yaml"
    file.write_text(yaml.safe_dump(params))
    proc = subprocess.run([sys.executable, "-m", "stages.launch", "--params", str(file), *args], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return shlex.split(proc.stdout)


def options(line: list[str]) -> dict[str, str]:
    return dict(arg.removeprefix("--").split("=", 1) for arg in line if arg.startswith("--") and "=" in arg)


def sbatch_directives() -> dict[str, str]:
    return options([m for m in re.findall(r"^#SBATCH\s+(\S+)", SBATCH.read_text(), re.M)])


def slurm_job_env(allocation: dict[str, str], nodelist: str) -> dict[str, str]:
    """What sbatch sets for a job with this allocation (--nodes, --ntasks-per-node) and the script's job name."""
    nodes, per_node = int(allocation["nodes"]), int(allocation["ntasks-per-node"])
    return {"SLURM_JOB_ID": JOB_ID, "SLURM_JOB_NAME": sbatch_directives()["job-name"], "SLURM_NODELIST": nodelist,
            "SLURM_NNODES": str(nodes), "SLURM_NTASKS_PER_NODE": str(per_node), "SLURM_NTASKS": str(nodes * per_node)}


def slurm_task_env(job: dict[str, str], node: int, local: int) -> dict[str, str]:
    """What srun adds for the task `local` on node `node` (block distribution: node 0 holds ranks 0..n-1)."""
    per_node = int(job["SLURM_NTASKS_PER_NODE"])
    return {**job, "SLURM_NODEID": str(node), "SLURM_LOCALID": str(local), "SLURM_PROCID": str(node * per_node + local)}


def torchrun_worker_env(line: list[str], local: int) -> dict[str, str]:
    """What torchrun sets for its worker `local`, given its command line (a static rendezvous: --node-rank)."""
    o = options(line)
    nodes, per_node, node = int(o["nnodes"]), int(o["nproc-per-node"]), int(o["node-rank"])
    return {"TORCHELASTIC_RUN_ID": "none", "MASTER_ADDR": o["master-addr"], "MASTER_PORT": o["master-port"],
            "WORLD_SIZE": str(nodes * per_node), "GROUP_RANK": str(node), "GROUP_WORLD_SIZE": str(nodes),
            "LOCAL_RANK": str(local), "LOCAL_WORLD_SIZE": str(per_node), "RANK": str(node * per_node + local)}


LAUNCHER_VARS = ("SLURM_", "TORCHELASTIC_", "MASTER_", "WORLD_SIZE", "RANK", "LOCAL_RANK", "GROUP_", "NODE_RANK",
                 "LOCAL_WORLD_SIZE")


@contextlib.contextmanager
def rank_zero_restored():
    """A DDP Trainer sets the process-wide rank_zero_only.rank to its global rank; put it back, or every later test
    in this process would see itself as rank 7 (loggers then hand out Lightning's no-op DummyExperiment)."""
    flags = (utils_rank_zero_only, fabric_rank_zero_only, pl_rank_zero_only)
    saved = [getattr(flag, "rank", 0) for flag in flags]
    try:
        yield
    finally:
        for flag, rank in zip(flags, saved):
            flag.rank = rank


def lightning_sees(process_env: dict[str, str], devices: int, num_nodes: int) -> dict:
    """Build a DDP Trainer in this process's environment: which cluster, world and ranks does Lightning make of it?"""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(LAUNCHER_VARS)}
    with mock.patch.dict(os.environ, {**clean, **process_env}, clear=True), rank_zero_restored():
        trainer = pl.Trainer(accelerator="cpu", devices=devices, num_nodes=num_nodes, strategy="ddp", logger=False,
                             enable_checkpointing=False, enable_progress_bar=False)
        cluster = trainer.strategy.cluster_environment
        cluster.validate_settings(num_devices=trainer.num_devices, num_nodes=trainer.num_nodes)  # as fit() does
        return {"env": type(cluster), "world": trainer.world_size, "rank": trainer.global_rank,
                "local": trainer.local_rank, "node": trainer.node_rank, "main": cluster.main_address}


GPU_2x4 = {"pretrain": {"accelerator": "gpu", "num_nodes": 2, "devices": 4}}


def test_sbatch_allocation_matches_params(tmp_path):
    line = launch(GPU_2x4, tmp_path, "sbatch")
    assert options(line) == {"nodes": "2", "ntasks-per-node": "4", "gres": "gpu:4"}
    # The script itself sets no allocation that could fight the rendered one, and a job name Lightning honours.
    directives = sbatch_directives()
    assert not {"nodes", "ntasks", "ntasks-per-node", "gres", "gpus"} & set(directives)
    assert directives["job-name"] not in ("bash", "interactive")  # Lightning ignores SLURM under those names
    assert re.search(r"^\s*srun .*python -m stages\.pretrain$", SBATCH.read_text(), re.M)


def test_slurm_2_nodes_4_gpus_is_one_world_of_8(tmp_path):
    job = slurm_job_env(options(launch(GPU_2x4, tmp_path, "sbatch")), nodelist="gpu[07-08]")
    seen = [lightning_sees(slurm_task_env(job, node, local), devices=4, num_nodes=2)
            for node in range(2) for local in range(4)]
    assert {s["env"] for s in seen} == {SLURMEnvironment}
    assert {s["world"] for s in seen} == {8}
    assert [s["rank"] for s in seen] == list(range(8))
    assert [(s["node"], s["local"]) for s in seen] == [(n, g) for n in range(2) for g in range(4)]
    assert {s["main"] for s in seen} == {"gpu07"}  # every task meets at the first node of the allocation


def test_lightning_refuses_an_allocation_that_disagrees_with_params(tmp_path):
    job = slurm_job_env({"nodes": "2", "ntasks-per-node": "2"}, nodelist="gpu[07-08]")  # params ask for 4
    with pytest.raises(ValueError, match="ntasks-per-node=2"):
        lightning_sees(slurm_task_env(job, 0, 0), devices=4, num_nodes=2)


def test_torchrun_2_nodes_4_gpus_is_one_world_of_8(tmp_path):
    lines = [launch(GPU_2x4, tmp_path, "torchrun", "--node-rank", str(n), "--master-addr", "gpu07") for n in (0, 1)]
    assert lines[1] == ["torchrun", "--nnodes=2", "--nproc-per-node=4", "--node-rank=1", "--master-addr=gpu07",
                        "--master-port=29500", "-m", "stages.pretrain"]
    seen = [lightning_sees(torchrun_worker_env(line, local), devices=4, num_nodes=2)
            for line in lines for local in range(4)]
    assert {s["env"] for s in seen} == {TorchElasticEnvironment}
    assert {s["world"] for s in seen} == {8}
    assert [s["rank"] for s in seen] == list(range(8))
    assert [(s["node"], s["local"]) for s in seen] == [(n, g) for n in range(2) for g in range(4)]
    assert {s["main"] for s in seen} == {"gpu07"}


def test_launch_errors_are_one_line(tmp_path):
    file = tmp_path / "params.yaml"
    for params, args, message in [
        ({"pretrain": {"num_nodes": 2}}, ["sbatch"], "pretrain.devices = 'auto'"),
        (GPU_2x4, ["torchrun", "--node-rank", "1"], "address of node 0"),
        (GPU_2x4, ["torchrun", "--node-rank", "2", "--master-addr", "h"], "outside 0..1"),
    ]:
        file.write_text(yaml.safe_dump(params))
        proc = subprocess.run([sys.executable, "-m", "stages.launch", "--params", str(file), *args], cwd=ROOT,
                              capture_output=True, text=True)
        assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr


def test_submit_passes_the_rendered_allocation_to_sbatch(tmp_path):
    bin_dir = tmp_path / "bin"  # an `sbatch` that only records how it was called
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/argv\n')
    (bin_dir / "sbatch").chmod(0o755)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "docker").mkdir()
    for name in ("submit.sh", "pretrain.sbatch"):
        (repo / "docker" / name).write_bytes((ROOT / "docker" / name).read_bytes())
    (repo / "params.yaml").write_text(yaml.safe_dump(GPU_2x4))
    e = {**env(), "PATH": f"{bin_dir}{os.pathsep}{env()['PATH']}", "PYTHONPATH": str(ROOT)}
    subprocess.run(["bash", "docker/submit.sh", "--partition=gpu"], cwd=repo, env=e, check=True)
    assert (tmp_path / "argv").read_text().split() == [
        "--nodes=2", "--ntasks-per-node=4", "--gres=gpu:4", "--partition=gpu", "docker/pretrain.sbatch"]


# --- The recipes run for real: 2 nodes x 1 CPU process, on this machine ------------------------------------------

FAKE_SRUN = '''#!{python}
"""srun, as far as Lightning can tell: one process per task of the job, with SLURM's per-task variables."""
import os, subprocess, sys
{task_env}
command = sys.argv[1:]
while command[0].startswith("--"):  # srun's own options
    command.pop(0)
job = {{k: v for k, v in os.environ.items() if k.startswith("SLURM_")}}
tasks = [subprocess.Popen(command, env={{**os.environ, **slurm_task_env(job, node, local)}})
         for node in range(int(job["SLURM_NNODES"])) for local in range(int(job["SLURM_NTASKS_PER_NODE"]))]
sys.exit(max(task.wait() for task in tasks))
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def adapted_weights(repo: Path) -> str:
    return hashlib.sha256((repo / "models" / "adapted" / "model.safetensors").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def cluster_repo(tmp_path_factory, tiny_headless):
    tmp = tmp_path_factory.mktemp("cluster")
    # The e2e test's tiny pipeline, pretrained by 2 nodes x 1 CPU process; what follows pretrain kept short.
    pretrain = {**TINY_PARAMS["pretrain"], "accelerator": "cpu", "num_nodes": 2, "devices": 1, "head_warmup_steps": 4}
    params = {**TINY_PARAMS, "base_model": str(tiny_headless), "pretrain": pretrain,
              "evaluate": {**TINY_PARAMS["evaluate"], "max_lines": 64},
              "finetune": {**TINY_PARAMS["finetune"], "seeds": [1], "max_train_rows": 32}}
    repo = make_repo(tmp / "repo", params)
    (repo / "docker").mkdir()
    for name in ("pretrain.sbatch", "torchrun.sh"):
        (repo / "docker" / name).write_bytes((ROOT / "docker" / name).read_bytes())
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN.format(python=sys.executable, task_env=getsource(slurm_task_env)))
    (bin_dir / "srun").chmod(0o755)
    return repo, bin_dir


def test_sbatch_script_runs_the_pipeline_with_ddp_over_two_nodes(cluster_repo, tmp_path):
    repo, bin_dir = cluster_repo
    allocation = options(launch(yaml.safe_load((repo / "params.yaml").read_text()), tmp_path, "sbatch"))
    assert allocation == {"nodes": "2", "ntasks-per-node": "1"}  # a CPU run asks for no GPUs
    # Lightning derives the port from the job id (15000 + its last 4 digits): pick one that is free here.
    job = {**slurm_job_env(allocation, nodelist="localhost"), "SLURM_JOB_ID": str(free_port() - 15000 + 10000),
           "SLURM_SUBMIT_DIR": str(repo)}
    proc = subprocess.run(["bash", "docker/pretrain.sbatch"], cwd=repo, capture_output=True, text=True,
                          env={**env(), **job, "PATH": f"{bin_dir}{os.pathsep}{env()['PATH']}"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    # Both tasks joined one DDP world (Lightning's own line), and the batch step's fine-tuning stayed one process.
    assert "MEMBER: 1/2" in out and "MEMBER: 2/2" in out, out[-4000:]
    assert {"split", "mask", "evaluate@base", "finetune@adapted", "compare"} <= set(stages_run(out))
    assert "pretrain" not in stages_run(out)  # srun ran it; `dvc commit` recorded it
    assert "up to date" in run(repo, "dvc", "status")
    (repo / "srun-adapted.sha256").write_text(adapted_weights(repo))


def test_torchrun_lines_train_the_same_model_as_srun(cluster_repo):
    repo, _ = cluster_repo
    srun_weights = (repo / "srun-adapted.sha256").read_text()
    shutil.rmtree(repo / "models" / "checkpoints")  # train from scratch, not resume the finished SLURM run
    port, logs = str(free_port()), [repo / f"node{rank}.log" for rank in (0, 1)]
    nodes = [subprocess.Popen(["bash", "docker/torchrun.sh", str(rank), "127.0.0.1", port], cwd=repo, env=env(),
                              stdout=log.open("w"), stderr=subprocess.STDOUT) for rank, log in enumerate(logs)]
    codes = [node.wait(timeout=600) for node in nodes]
    outs = [log.read_text() for log in logs]
    assert codes == [0, 0], "\n".join(o[-3000:] for o in outs)
    assert "MEMBER: 1/2" in outs[0] and "MEMBER: 2/2" in outs[1]
    # Same params, same data, same world size: the torchrun run is the SLURM run, bit for bit.
    assert adapted_weights(repo) == srun_weights
    run(repo, "dvc", "commit", "--force", "pretrain")
    assert "up to date" in run(repo, "dvc", "status", "pretrain")

"""The reliability suite's shared runs: one uninterrupted `dvc repro` of the whole pipeline on the tiny headless
model (the reference every kill test compares with), and a second one from scratch beside it (determinism), run
with W&B offline and fake secrets planted in its environment (the secrets test greps everything it wrote).

Both run at once, one torch thread each, so the pair costs about one run of wall time on two cores.
"""

from __future__ import annotations

import copy
import hashlib
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.test_pipeline_e2e import TINY_PARAMS, env, make_repo

# Smaller than the e2e run: every stage still does its real work, but in seconds. checkpoint_every < max_steps,
# so a pretrain killed mid-run has a checkpoint to resume from.
PARAMS = copy.deepcopy(TINY_PARAMS)
PARAMS["mask"].update(dupe_factor=1, num_proc=1)
PARAMS["pretrain"].update(max_steps=6, val_every=3, checkpoint_every=2, warmup_steps=1, head_warmup_steps=10,
                          val_lines=64)
PARAMS["evaluate"].update(max_lines=64, fill_mask_lines=4)
PARAMS["finetune"].update(seeds=[1], max_train_rows=32)

STAGES = ["split", "mask", "pretrain", "evaluate@base", "evaluate@adapted", "finetune@base", "finetune@adapted",
          "compare"]
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # every run of this suite: identical float results

# Planted secrets: distinctive, so a hit anywhere is certainly a leak. The W&B key has a real key's shape.
FAKE_WANDB_KEY = "dapt8fake8wandb8key8" + "0123456789abcdef0123"
FAKE_HF_TOKEN = "hf_daptPlantedFakeTokenForTheSecretsTest"

TIMING = {"seconds", "tokens_per_second"}  # the only figures allowed to differ between identical runs


def run_env(**extra: str) -> dict:
    return {**env(), **THREADS, **extra}


def sh(repo: Path, *cmd: str, environ: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=repo, env=environ or run_env(), capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@dataclass
class Run:
    repo: Path
    log: str = ""
    seconds: dict[str, float] = field(default_factory=dict)  # each stage's command, from DVC's own log lines
    returncode: int | None = None


def repro_timed(run: Run, environ: dict) -> Run:
    """`dvc repro` in run.repo, timing each stage from "Running stage" to DVC's next "Updating lock file"."""
    proc = subprocess.Popen(["dvc", "repro"], cwd=run.repo, env=environ, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines, stage, start = [], None, 0.0
    for line in proc.stdout:
        lines.append(line)
        now = time.monotonic()
        if m := re.match(r"Running stage '([^']+)'", line):
            stage, start = m.group(1), now
        elif stage and line.startswith("Updating lock file"):
            run.seconds[stage], stage = now - start, None
    run.returncode = proc.wait()
    run.log = "".join(lines)
    return run


def tree_hashes(root: Path, *folders: str) -> dict[str, str]:
    """sha256 of every file under the folders, by path relative to root."""
    out = {}
    for folder in folders:
        for path in sorted((root / folder).rglob("*")):
            if path.is_file():
                out[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def leftovers(repo: Path) -> list[str]:
    """Temporary files or folders of killed writers left among the outputs."""
    found = []
    for folder in ("artifacts", "models", "reports"):
        for path in (repo / folder).rglob(".*"):
            if ".tmp" in path.name or path.name.startswith(".tokenized-"):
                found.append(path.relative_to(repo).as_posix())
    return found


@dataclass
class Runs:
    reference: Run
    second: Run  # from scratch too, with W&B offline and the planted secrets
    outside: Path  # where the second run's W&B / HF / temp files outside the repo went


@pytest.fixture(scope="session")
def runs(tmp_path_factory, tiny_headless) -> Runs:
    root = tmp_path_factory.mktemp("reliability-runs")
    params = {**copy.deepcopy(PARAMS), "base_model": str(tiny_headless)}
    reference = Run(make_repo(root / "reference", params))
    second = Run(make_repo(root / "second", {**params, "tracking": {"wandb": "offline"}}))
    outside = root / "outside"
    dirs = {name: outside / name for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "HF_HOME",
                                              "TMPDIR")}
    for path in dirs.values():
        path.mkdir(parents=True)
    secret_env = run_env(WANDB_API_KEY=FAKE_WANDB_KEY, HF_TOKEN=FAKE_HF_TOKEN, **{k: str(v) for k, v in dirs.items()})
    secret_env.pop("WANDB_MODE")  # params (tracking.wandb: offline) decide, as for a user
    jobs = [threading.Thread(target=repro_timed, args=(reference, run_env())),
            threading.Thread(target=repro_timed, args=(second, secret_env))]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join()
    for run in (reference, second):
        assert run.returncode == 0, run.log[-4000:]
        assert sorted(run.seconds) == sorted(STAGES), run.log[-4000:]
    return Runs(reference, second, outside)

"""A stage that runs out of room fails with one line naming the output it was writing (`error: no space left
writing <path> (<reason>)`, exit status 1, no traceback) and leaves nothing DVC would accept: no output, no
temporary file, and `dvc status` reports the stage as not done.

Two ways to run out of room: a file-size limit (RLIMIT_FSIZE set in the child, SIGXFSZ ignored, so a write
past it fails with EFBIG; needs no privileges) and a real full file system (a tiny tmpfs mounted over
artifacts/; needs root, skipped where mounting is not allowed).
"""

from __future__ import annotations

import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.reliability.conftest import leftovers, run_env, sh


def limited(limit: int):
    def child() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    return child


def start(repo: Path, name: str, limit: int | None = None) -> subprocess.Popen:
    """The stage's command as DVC runs it (DVC has removed its outputs first)."""
    return subprocess.Popen([sys.executable, "-m", f"stages.{name}"], cwd=repo, env=run_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=limited(limit) if limit else None)


def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def stage(repo: Path, name: str, limit: int | None = None) -> subprocess.CompletedProcess:
    return finish(start(repo, name, limit))


def copy_without(reference: Path, dest: Path, *outputs: str) -> Path:
    shutil.copytree(reference, dest, symlinks=True)
    for out in outputs:
        shutil.rmtree(dest / out)
    return dest


def assert_no_room(proc: subprocess.CompletedProcess, repo: Path, output: str, reason: str, stage_name: str):
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    named = {f"error: no space left writing {path} ({reason})" for path in (output, repo / output)}
    assert len(errors) == 1 and errors[0] in named, proc.stderr[-3000:]
    assert proc.stderr.rstrip().endswith(errors[0])
    assert not (repo / output).exists() and leftovers(repo) == []
    assert "deleted" in sh(repo, "dvc", "status", stage_name).stdout  # DVC does not take it as done


def test_split_past_a_file_size_limit_fails_in_one_line_and_leaves_nothing(runs, tmp_path):
    repo = copy_without(runs.reference.repo, tmp_path / "repo", "artifacts/lines")
    assert_no_room(stage(repo, "split", limit=64 << 10), repo, "artifacts/lines", "File too large", "split")
    assert stage(repo, "split").returncode == 0  # with room again, the same command succeeds


@pytest.fixture(scope="module")
def heavy(runs, tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """mask and pretrain past a file-size limit, side by side (each spends most of its time importing torch)."""
    root = tmp_path_factory.mktemp("disk-full")
    mask = copy_without(runs.reference.repo, root / "mask", "artifacts/masked")
    pretrain = copy_without(runs.reference.repo, root / "pretrain", "models/checkpoints", "models/base",
                            "models/adapted")
    # pretrain: room for the warmed base (~170 KB of safetensors), not for a checkpoint with optimizer state
    # (~560 KB). mask: not for its tokenized lines.
    procs = {"mask": (mask, start(mask, "mask", limit=100 << 10)),
             "pretrain": (pretrain, start(pretrain, "pretrain", limit=300 << 10))}
    return {name: (repo, finish(proc)) for name, (repo, proc) in procs.items()}


def test_mask_past_a_file_size_limit_fails_in_one_line_and_leaves_nothing(heavy):
    repo, proc = heavy["mask"]
    assert_no_room(proc, repo, "artifacts/masked", "File too large", "mask")


def test_pretrain_checkpoint_past_a_file_size_limit_names_the_checkpoint_and_leaves_no_model(heavy):
    repo, proc = heavy["pretrain"]
    run_folder = next((repo / "models" / "checkpoints").iterdir())
    output = (run_folder / "last.ckpt").relative_to(repo).as_posix()
    assert_no_room(proc, repo, output, "File too large", "pretrain")
    assert not (repo / "models" / "adapted").exists()


@pytest.fixture
def full_tmpfs(tmp_path):
    """A 256 KB tmpfs over artifacts/ of a fresh folder; skipped where mounting is not allowed."""
    mount = tmp_path / "artifacts"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {proc.stderr.strip()[:200]}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_split_on_a_full_file_system_fails_in_one_line_and_leaves_nothing(runs, full_tmpfs):
    repo = full_tmpfs.parent
    for name in ("data", "params.yaml", "dvc.yaml", "dvc.lock", ".dvc", ".git", ".gitignore", "pipeline", "stages"):
        source = runs.reference.repo / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, repo / name)
    assert_no_room(stage(repo, "split"), repo, "artifacts/lines", "No space left on device", "split")
    assert list(full_tmpfs.iterdir()) == []  # the temporary folder went too: the space is free again

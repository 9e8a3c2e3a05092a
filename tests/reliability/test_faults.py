"""Damaged files between stages, what killed writers leave, a full disk inside any writer, and code a stage runs
that dvc.yaml does not list (a code change that would not rerun the stage: a stale result)."""

from __future__ import annotations

import ast
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.io import DiskFull, atomic_dir, atomic_file, write_json
from tests.conftest import ROOT, run_command


def in_stage(cwd: Path, module: str, argv: list[str], capsys, monkeypatch) -> tuple[int, str]:
    """A stage's entry point (`stages.run(main)`) in this process, in `cwd`: its exit status and stderr."""
    import importlib

    monkeypatch.chdir(cwd)
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")  # seed_everything sets it: restored when the test ends
    code, _, err = run_command(capsys, argv[0], importlib.import_module(f"stages.{module}").main, *argv[1:])
    return code, err


def test_a_truncated_shard_fails_the_reading_stage_in_one_line_naming_it(runs, tmp_path, capsys, monkeypatch):
    repo = tmp_path / "repo"
    shutil.copytree(runs.reference.repo, repo, symlinks=True)
    shard = repo / "artifacts" / "masked" / "val-00000.arrow"
    data = shard.read_bytes()
    shard.unlink()  # DVC may have linked it to its cache: replace the file, never write through the link
    shard.write_bytes(data[: len(data) // 2])
    code, err = in_stage(repo, "evaluate", ["dapt evaluate", "base"], capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1, err[-3000:]
    assert err.startswith("error: artifacts/masked/val-00000.arrow: truncated or corrupt Arrow shard"), err


def test_a_damaged_checkpoint_stops_pretrain_in_one_line_naming_it(runs, tmp_path, capsys, monkeypatch):
    repo = tmp_path / "repo"
    shutil.copytree(runs.reference.repo, repo, symlinks=True)
    (last,) = (repo / "models" / "checkpoints").glob("*/last.ckpt")
    last.write_bytes(last.read_bytes()[:1000])  # cut by a failing disk or a partial copy, not by our writer
    code, err = in_stage(repo, "pretrain", ["dapt pretrain"], capsys, monkeypatch)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and "Traceback" not in err, err[-3000:]
    assert len(errors) == 1 and errors[0].startswith(f"error: {last.relative_to(repo)}: cannot resume from this "
                                                     "checkpoint"), err[-3000:]
    assert "delete models/checkpoints to start the run afresh" in errors[0]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("kind", ["dir", "file"])
def test_the_next_write_sweeps_what_killed_writers_left_and_keeps_a_live_writers_temp(tmp_path, kind):
    final = tmp_path / ("lines" if kind == "dir" else "metrics.json")
    dead = tmp_path / f".{final.name}.tmp-{dead_pid()}-abc123"
    legacy = tmp_path / f".{final.name}.tmp-xyz_987"  # from before temporary names carried the writer's pid
    live = tmp_path / f".{final.name}.tmp-{os.getpid()}-def456"
    other = tmp_path / ".other.json.tmp-1-zzz"  # another output's: not this writer's business
    for path in (dead, legacy, live, other):
        path.mkdir() if kind == "dir" else path.write_text("half")
    if kind == "dir":
        with atomic_dir(final) as tmp:
            (tmp / "x").write_text("whole")
    else:
        write_json(final, {"whole": True})
    assert not dead.exists() and not legacy.exists() and live.exists() and other.exists() and final.exists()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EFBIG, errno.EDQUOT])
def test_a_full_disk_inside_any_writer_names_the_output_and_leaves_no_temp(tmp_path, code):
    final = tmp_path / "out" / "report.html"
    with pytest.raises(DiskFull) as err, atomic_file(final) as f:
        f.write("partial")
        raise OSError(code, os.strerror(code))  # what write() raises when the disk, quota or size limit is hit
    assert str(err.value) == f"no space left writing {final} ({os.strerror(code)})"
    assert list(final.parent.iterdir()) == []
    with pytest.raises(DiskFull, match=r"^no space left writing .*/models/adapted \(No space left on device\)$"):
        with atomic_dir(tmp_path / "models" / "adapted") as tmp:  # a Rust writer (safetensors) says it in words
            raise RuntimeError(f"Error while serializing {tmp}/model.safetensors: No space left on device (os 28)")
    assert list((tmp_path / "models").iterdir()) == []


# --- dvc.yaml deps cover the code each stage runs -------------------------------------------------------------


def imported(module: str) -> set[str]:
    """Project modules (pipeline.*, stages.*) that `module` imports, at any depth and inside functions too."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = ROOT / Path(*name.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            todo += [n for n in names if n.split(".")[0] in ("pipeline", "stages")]
        if name.startswith("stages."):
            todo.append("stages")
    return seen


def test_every_project_module_a_stage_imports_is_in_its_dvc_deps():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, entry in stages.items():
        entry = entry.get("do", entry)
        module = entry["cmd"].split()[2]  # python -m stages.<name> ...
        files = {"stages/__init__.py" if m == "stages" else m.replace(".", "/") + ".py" for m in imported(module)}
        missing = sorted(files - set(entry["deps"]))
        assert missing == [], f"{name}: a change to {missing} would not rerun it"

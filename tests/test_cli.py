"""The `dapt` command line, run as a real subprocess."""

from __future__ import annotations

import subprocess
import sys

import pytest

from stages.cli import STAGES
from tests.conftest import ROOT


def dapt(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stages.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})


def test_top_level_help_lists_every_command():
    out = dapt("--help")
    assert out.returncode == 0
    for name in STAGES:
        assert name in out.stdout


@pytest.mark.parametrize("command", sorted(STAGES))
def test_every_command_has_help(command):
    out = dapt(command, "--help")
    assert out.returncode == 0, out.stderr
    assert f"dapt {command}" in out.stdout and "params.yaml" in out.stdout


def test_unknown_command_fails():
    out = dapt("nonsense")
    assert out.returncode == 2 and "unknown command" in out.stderr


def test_bad_params_fail_with_one_line_naming_key_and_value(tmp_path):
    (tmp_path / "params.yaml").write_text("finetune:\n  lr: fast\n")
    out = dapt("split", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: params.yaml: finetune.lr = 'fast': Input should be a valid number, unable to parse string as a number"]

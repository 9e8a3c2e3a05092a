"""The real thing: `dvc repro` of the whole pipeline on a copy of the repo, with the tiny model."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

TINY_PARAMS = {
    "seed": 7,
    "trust_remote_code": False,  # dvc.yaml declares both for every stage that loads a model
    "allow_pickle_weights": False,
    "split": {"inputs": ["data/demo/corpus"], "val_fraction": 0.1},
    "mask": {"max_seq_len": 32, "dupe_factor": 2},
    "pretrain": {"max_steps": 12, "batch_size": 32, "val_every": 6, "checkpoint_every": 6, "warmup_steps": 2,
                 "lr": 1e-3},
    "evaluate": {"batch_size": 64},
    # dvc.yaml interpolates both task folders into the finetune deps, so params.yaml must name them
    "task": {"type": "triplet", "triplet": {"dir": "data/demo/tasks/song-sections"},
             "classification": {"dir": "data/demo/tasks/fortune-category"}},
    "finetune": {"seeds": [1, 2], "epochs": 1, "lr": 5e-5, "batch_size": 16, "max_train_rows": 48, "max_seq_len": 32},
    "tracking": {"wandb": "disabled"},
}


def make_repo(dest: Path, params: dict) -> Path:
    shutil.copytree(ROOT / "data", dest / "data")
    return make_repo_with_data(dest, params)


def make_repo_with_data(dest: Path, params: dict) -> Path:
    """A git + DVC repo in `dest` with this project's code, dvc.yaml and `params`; data/ as `dest` has it."""
    for name in ("pipeline", "stages"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", dest / "dvc.yaml")
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (dest / ".gitignore").write_text((ROOT / ".gitignore").read_text())
    git(dest, "init", "-q")
    run(dest, "dvc", "init", "-q")
    run(dest, "dvc", "config", "core.analytics", "false")
    git(dest, "add", "-A")
    git(dest, "commit", "-qm", "tiny pipeline")
    return dest


def env() -> dict:
    e = dict(os.environ)
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e['PATH']}"  # `python` in dvc.yaml = this venv
    e.update(HF_HUB_OFFLINE="1", WANDB_MODE="disabled", DVC_NO_ANALYTICS="1", PYTHONHASHSEED="0")
    return e


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True, env=env())


def run(cwd: Path, *cmd: str) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


@pytest.fixture(scope="module")
def repo(tmp_path_factory, tiny_headless) -> Path:
    params = {"base_model": str(tiny_headless), **TINY_PARAMS}
    repo = make_repo(tmp_path_factory.mktemp("e2e"), params)
    out = run(repo, "dvc", "repro")
    assert sorted(stages_run(out)) == sorted(["split", "mask", "pretrain", "evaluate@base", "evaluate@adapted",
                                              "finetune@base", "finetune@adapted", "compare"]), out
    return repo


def test_repro_leaves_every_promised_output(repo):
    from transformers import AutoModel, AutoModelForMaskedLM

    AutoModel.from_pretrained(repo / "models" / "adapted")
    AutoModelForMaskedLM.from_pretrained(repo / "models" / "adapted")
    assert (repo / "models" / "adapted" / "model.safetensors").is_file()
    for name in ("base", "adapted"):
        mlm = json.loads((repo / "reports" / "evaluate" / name / "metrics.json").read_text())
        assert mlm["loss"] > 0 and 0 <= mlm["top1_accuracy"] <= mlm["top10_accuracy"] <= 1
        ft = json.loads((repo / "reports" / "finetune" / name / "metrics.json").read_text())
        assert sorted(ft["seeds"]) == ["1", "2"] and 0 <= ft["test_mean"]["accuracy"] <= 1
    compare = json.loads((repo / "reports" / "compare.json").read_text())
    # The tiny base is headless, like MiniLM: the pretrain stage warms a head up, and the base is scored with it.
    assert compare["mlm"]["base_head_untrained"] is False and compare["mlm"]["base_head_warmup_steps"] > 0
    html = (repo / "reports" / "report.html").read_text()
    assert "warmed up for" in html and html.count("<svg") >= 3 and "<script" not in html
    # Adapting on in-domain text must lower the held-out MLM loss, even in 12 tiny steps.
    assert compare["mlm"]["adapted"]["loss"] < compare["mlm"]["base"]["loss"]


def test_second_repro_runs_nothing(repo):
    out = run(repo, "dvc", "repro")
    assert stages_run(out) == [], out


def test_repro_single_stage_reruns_only_it(repo):
    out = run(repo, "dvc", "repro", "-f", "-s", "finetune@base")
    assert stages_run(out) == ["finetune@base"], out


def test_exp_run_with_new_finetune_lr_reruns_only_what_depends_on_it(repo):
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "after repro", "--allow-empty")
    out = run(repo, "dvc", "exp", "run", "-S", "finetune.lr=0.0001")
    assert sorted(stages_run(out)) == ["compare", "finetune@adapted", "finetune@base"], out


def test_own_text_folder_and_labeled_jsonl_task_need_no_code_change(tmp_path, tiny_headless):
    """A user's own .txt folder and classification JSONL task (own column names), set in params.yaml only."""
    repo = tmp_path / "own"
    shutil.copytree(ROOT / "data", repo / "data")  # a user's clone ships the demo data too
    notes = repo / "data" / "mine" / "notes"
    notes.mkdir(parents=True)
    words = ["patient", "dose", "daily", "pain", "chest", "mild", "fever", "rest", "scan", "normal", "follow", "up"]
    for f in range(3):
        paragraphs = ["\n".join(" ".join(words[(f + d + i + j) % len(words)] for j in range(6 + i % 4))
                                for i in range(4)) for d in range(12)]
        (notes / f"note-{f}.txt").write_text("\n\n".join(paragraphs) + "\n")
    for split, n in (("train", 40), ("dev", 12), ("test", 12)):
        rows = [{"sentence": f"{words[i % 12]} {words[(i * 5) % 12]} {split} {i}", "category": ["a", "b"][i % 2]}
                for i in range(n)]
        write = "".join(json.dumps(r) + "\n" for r in rows)
        (repo / "data" / "mine" / "task").mkdir(exist_ok=True)
        (repo / "data" / "mine" / "task" / f"{split}.jsonl").write_text(write)
    params = {"base_model": str(tiny_headless), **TINY_PARAMS,
              "split": {"inputs": ["data/mine/notes"], "val_fraction": 0.2}}
    params["task"] = {"type": "classification", "triplet": {"dir": "data/demo/tasks/song-sections"},
                      "classification": {"dir": "data/mine/task", "text_field": "sentence",
                                         "label_field": "category"}}
    make_repo_with_data(repo, params)
    out = run(repo, "dvc", "repro")
    assert len(stages_run(out)) == 8, out
    compare = json.loads((repo / "reports" / "compare.json").read_text())
    assert compare["downstream"]["task"] == "classification" and "macro_f1" in compare["downstream"]["metrics"]
    split_stats = json.loads((repo / "artifacts" / "lines" / "stats.json").read_text())
    assert split_stats["files"] == 3

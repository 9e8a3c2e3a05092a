"""The finetune stage on the demo tasks with the tiny model, run in a work folder as DVC runs it (in this process,
to spare the imports; `dapt predict` as a real subprocess): the files the compare stage reads, and switching
`task.type` in params.yaml as the only change between tasks."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import ROOT


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}


def stage(cwd: Path, *argv: str) -> int:
    """`python -m stages.finetune <argv>` in `cwd`: the exit status (0, or 2 for a one-line error)."""
    import torch

    from stages import finetune, run

    here, threads, sys_argv = os.getcwd(), torch.get_num_threads(), sys.argv
    os.chdir(cwd)
    sys.argv = ["dapt finetune", *argv]
    try:
        run(finetune.main)
        return 0
    except SystemExit as stop:
        return stop.code
    finally:
        os.chdir(here)
        sys.argv = sys_argv
        torch.set_num_threads(threads)  # the stage applies finetune.threads


def workdir(root: Path, tiny: Path, **task) -> Path:
    """The repository's own params.yaml and demo data; models/base and models/adapted both the tiny model, so
    base and adapted must come out identical (same seeds, same data order, same hyperparameters)."""
    (root / "models").mkdir(parents=True)
    (root / "data").symlink_to(ROOT / "data")
    for name in ("base", "adapted"):
        (root / "models" / name).symlink_to(tiny)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["task"].update(task)
    params["finetune"].update(seeds=[1, 2], epochs=1, max_train_rows=48, max_seq_len=32, threads=1)
    params["tracking"] = {"wandb": "disabled"}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def read(path: Path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def triplet_run(tmp_path_factory, tiny_headless) -> Path:
    root = workdir(tmp_path_factory.mktemp("ft") / "w", tiny_headless)
    for name in ("base", "adapted"):
        assert stage(root, name) == 0
    return root


def test_metrics_and_details_are_what_compare_reads(triplet_run):
    reports = triplet_run / "reports" / "finetune"
    metrics = read(reports / "base" / "metrics.json")
    assert metrics["task"] == "triplet" and sorted(metrics["seeds"]) == ["1", "2"]
    for seed in metrics["seeds"].values():
        assert set(seed) == {"test", "dev", "best_epoch"} and set(seed["test"]) == {"loss", "accuracy"}
        assert all(isinstance(v, float) for v in [*seed["test"].values(), *seed["dev"].values()])
    assert set(metrics["test_mean"]) == set(metrics["test_std"]) == {"loss", "accuracy"}
    details = read(reports / "base" / "details.json")
    test_rows = sum(1 for line in open(ROOT / "data/demo/tasks/song-sections/test.jsonl") if line.strip())
    assert details["rows"] == {"train": 48, "dev": 89, "test": test_rows}
    for seed in ("1", "2"):
        per = details["per_example"][seed]
        assert len(per["loss"]) == len(per["correct"]) == test_rows
        assert np.mean(per["correct"]) == pytest.approx(metrics["seeds"][seed]["test"]["accuracy"])
        assert [s for s, _ in details["curves"][seed]["dev/loss"]][0] == 0
    with open(reports / "base" / "train_loss.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and rows[0].keys() == {"step", "loss"}  # 48 rows / batch 16, mean over the seeds
    meta = read(triplet_run / "models" / "finetuned" / "base" / "finetune.json")
    assert meta["task"] == "triplet" and meta["weights"] is False  # save_model is off by default


def test_base_and_adapted_get_identical_conditions(triplet_run):
    """Both 'models' are the same tiny model here: the same seeds, order and params must give the same numbers."""
    reports = triplet_run / "reports" / "finetune"
    base, adapted = (read(reports / m / "details.json") for m in ("base", "adapted"))
    assert base["per_example"] == adapted["per_example"] and base["curves"] == adapted["curves"]
    assert base["per_example"]["1"] != base["per_example"]["2"]  # ... and the seeds differ


def test_switching_task_type_is_the_only_change_for_the_demo(tmp_path, tiny_headless, capsys):
    root = workdir(tmp_path / "w", tiny_headless, type="classification")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["finetune"]["save_model"] = True
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    assert stage(root, "base") == 0
    assert "saved seed" in capsys.readouterr().out
    metrics = read(root / "reports" / "finetune" / "base" / "metrics.json")
    details = read(root / "reports" / "finetune" / "base" / "details.json")
    assert metrics["task"] == "classification" and len(details["labels"]) == 10  # the fortune categories
    assert {"accuracy", "macro_f1", "f1/computers", "recall/love", "precision/startrek"} <= set(metrics["test_mean"])
    confusion = np.array(details["confusion"]["1"])
    assert confusion.shape == (10, 10) and confusion.sum() == details["rows"]["test"]
    per = details["per_example"]["2"]
    assert np.bincount(per["label"], minlength=10).tolist() == confusion.sum(1).tolist()  # true labels, test order
    assert len(per["pred"]) == len(per["loss"]) == details["rows"]["test"]
    saved = root / "models" / "finetuned" / "base"
    meta = read(saved / "finetune.json")
    assert meta["weights"] and meta["labels"] == details["labels"] and meta["seed"] in (1, 2)
    assert (saved / "head.safetensors").is_file() and (saved / "model.safetensors").is_file()
    out = subprocess.run([sys.executable, "-m", "stages.cli", "predict", "--model", str(saved), "--json",
                          "A bug in the compiler"], cwd=root, env=env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    answer = json.loads(out.stdout)
    assert answer["label"] in details["labels"] and sum(answer["probabilities"].values()) == pytest.approx(1)


def test_bad_task_file_fails_in_one_line(tmp_path, tiny_headless, capsys):
    (tmp_path / "task").mkdir()
    for split in ("train", "dev", "test"):
        (tmp_path / "task" / f"{split}.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n')
    (tmp_path / "task" / "dev.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "z"}\n')
    root = workdir(tmp_path / "w", tiny_headless, type="classification")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["task"]["classification"]["dir"] = str(tmp_path / "task")
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    assert stage(root, "base") == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {tmp_path / 'task' / 'dev.jsonl'}:2: column 'label': label 'z' does not occur in the train split"]

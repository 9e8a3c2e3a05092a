"""The real pretrain stage under `dvc repro` on the tiny headless model: two DDP processes on CPU (gloo), a
SIGKILL mid-run then a resuming `dvc repro`, and a diverging run that stops with a clear message."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.test_pipeline_e2e import TINY_PARAMS, env, git, make_repo, run

PRETRAIN = {"accelerator": "cpu", "threads": 1, "batch_tokens": 2048, "lr": 3e-3, "warmup_steps": 2,
            "head_warmup_steps": 4, "head_lr": 3e-3, "log_every": 1}


@pytest.fixture(scope="module")
def masked(tmp_path_factory, tiny_headless) -> Path:
    """A repo whose split and mask stages have run; tests copy it and change pretrain params only."""
    params = {"base_model": str(tiny_headless), **TINY_PARAMS}
    repo = make_repo(tmp_path_factory.mktemp("masked") / "repo", params)
    run(repo, "dvc", "repro", "mask")
    return repo


def copy_with(masked: Path, dest: Path, **pretrain) -> Path:
    shutil.copytree(masked, dest, symlinks=True)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["pretrain"] = {**PRETRAIN, **pretrain}
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(dest, "commit", "-qam", "pretrain params")
    return dest


def metrics(repo: Path, *path: str) -> dict:
    return json.loads((repo / "reports" / Path(*path) / "metrics.json").read_text())


def test_two_ddp_processes_on_cpu_same_batches_per_rank_loss_down_model_loads(masked, tmp_path):
    from transformers import AutoModel, AutoModelForMaskedLM

    repo = copy_with(masked, tmp_path / "ddp", devices=2, strategy="ddp", accumulate=2, max_steps=10,
                     val_every=5, checkpoint_every=5)
    out = run(repo, "dvc", "repro", "pretrain")
    m = metrics(repo, "pretrain")
    assert m["devices"] == 2
    # 10 steps x 2 accumulated micro-batches on each rank; each micro-batch a quarter of the global budget
    assert m["batches_per_rank"] == [20, 20], out
    assert m["micro_batch_tokens"] == 2048 // 4 and m["padding_fraction"] < 0.03
    assert m["val_loss_last"] < m["val_loss_first"] - 0.05  # the held-out loss, before step 1 and after step 10
    assert m["head_warmup_steps"] == 4 and m["base_head_untrained"] is False
    assert m["head_warmup_loss_last"] < m["head_warmup_loss_first"]
    for name in ("base", "adapted"):
        assert (repo / "models" / name / "model.safetensors").is_file()
        AutoModel.from_pretrained(repo / "models" / name)
        AutoModelForMaskedLM.from_pretrained(repo / "models" / name)
    curve = (repo / "reports" / "pretrain" / "val_loss.csv").read_text().splitlines()
    assert curve[0] == "step,loss" and [r.split(",")[0] for r in curve[1:]] == ["0", "5", "10"]


def test_the_dapt_command_launches_ddp_too(masked, tmp_path):
    """Lightning starts the second rank by re-running the command line; `dapt pretrain` must survive that."""
    import sys

    repo = copy_with(masked, tmp_path / "cli", devices=2, max_steps=3, val_every=3, head_warmup_steps=0)
    dapt = Path(sys.executable).parent / "dapt"
    proc = subprocess.run([str(dapt), "pretrain"], cwd=repo, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert metrics(repo, "pretrain")["batches_per_rank"] == [3, 3]


def checkpoint_step(repo: Path) -> int:
    import torch

    paths = glob.glob(str(repo / "models" / "checkpoints" / "*" / "last.ckpt"))
    return torch.load(paths[0], map_location="cpu", weights_only=False)["global_step"] if paths else 0


def test_sigkill_mid_run_then_dvc_repro_resumes_and_ends_where_an_uninterrupted_run_does(masked, tmp_path):
    settings = dict(max_steps=80, checkpoint_every=5, val_every=40)
    whole = copy_with(masked, tmp_path / "whole", **settings)
    run(whole, "dvc", "repro", "evaluate@adapted")

    killed = copy_with(masked, tmp_path / "killed", **settings)
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen(["dvc", "repro", "evaluate@adapted"], cwd=killed, env=env(), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not glob.glob(str(killed / "models" / "checkpoints" / "*" / "last.ckpt")):
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # dvc and the stage it runs: a machine going down
        proc.wait()
    assert not (killed / "models" / "adapted").exists()  # it really died mid-run
    step = checkpoint_step(killed)
    assert 0 < step < 80

    out = run(killed, "dvc", "repro", "evaluate@adapted")
    assert "resuming from" in out and f"(step {step})" in out
    m = metrics(killed, "pretrain")
    assert m["resumed_from_step"] == step and m["steps"] == 80
    assert metrics(whole, "pretrain")["resumed_from_step"] == 0
    resumed, uninterrupted = metrics(killed, "evaluate", "adapted")["loss"], metrics(whole, "evaluate", "adapted")["loss"]
    assert abs(resumed - uninterrupted) / uninterrupted < 0.02
    # The curves cover the whole run, not just the part after the resume.
    steps = [int(r.split(",")[0]) for r in (killed / "reports/pretrain/train_loss.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, 81))


@pytest.mark.parametrize("whole_word", [False, True])
def test_dynamic_masking_from_the_mask_stage_trains_and_matches_its_epoch_0_stats(masked, tmp_path, whole_word):
    from pipeline.batching import DynamicMasking, masked_loader
    from pipeline.masking import IGNORE
    from pipeline.shards import read_shards

    repo = copy_with(masked, tmp_path / "dynamic", max_steps=6, val_every=3, head_warmup_steps=0)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["mask"].update(mode="dynamic", whole_word=whole_word)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(repo, "dvc", "repro", "pretrain")
    m = metrics(repo, "pretrain")
    assert m["steps"] == 6 and m["val_loss_last"] < m["val_loss_first"]
    # The loader's epoch-0 masks are the ones the mask stage counted in stats.json.
    folder = repo / "artifacts" / "masked"
    stats = json.loads((folder / "stats.json").read_text())
    train = read_shards(folder, "train")
    assert stats["mode"] == "dynamic" and "labels" not in train.column_names
    dynamic = DynamicMasking.of_shards(folder, seed=params["seed"])
    assert dynamic is not None and dynamic.spec.whole_word == whole_word
    loader = masked_loader(train, 0, 4096, dynamic=dynamic)
    assert sum(int((b["labels"] != IGNORE).sum()) for b in loader) == stats["train"]["masked"]


def test_epochs_instead_of_steps_and_a_cosine_schedule(masked, tmp_path):
    from pipeline.batching import TokenBudgetSampler
    from pipeline.shards import read_shards

    repo = copy_with(masked, tmp_path / "epochs", max_steps=0, epochs=2, batch_tokens=8192, schedule="cosine",
                     head_warmup_steps=0, val_every=1000)
    run(repo, "python", "-m", "stages.pretrain")
    lengths = read_shards(repo / "artifacts" / "masked", "train").column("length").to_numpy()
    per_epoch = len(TokenBudgetSampler(lengths, 8192))  # the shards hold dupe_factor copies: one pass over all
    m = metrics(repo, "pretrain")
    assert m["steps"] == 2 * per_epoch and m["batches_per_rank"] == [2 * per_epoch]
    assert m["real_tokens"] == 2 * int(lengths.sum())  # every row of every copy, twice


def test_a_diverging_run_stops_with_one_clear_line(masked, tmp_path):
    repo = copy_with(masked, tmp_path / "nan", lr=1e12, warmup_steps=0, grad_clip=0, max_steps=20,
                     head_warmup_steps=0)
    proc = subprocess.run(["python", "-m", "stages.pretrain"], cwd=repo, env=env(), capture_output=True, text=True)
    assert proc.returncode == 1
    assert "error: pretrain stopped: the loss is nan at step" in proc.stderr.splitlines()[-1]
    assert not (repo / "models" / "adapted").exists()


def test_a_batch_budget_below_the_longest_line_is_a_params_error(masked, tmp_path):
    repo = copy_with(masked, tmp_path / "small", batch_tokens=16, max_steps=2)
    proc = subprocess.run(["python", "-m", "stages.pretrain"], cwd=repo, env=env(), capture_output=True, text=True)
    assert proc.returncode == 2
    assert "pretrain.batch_tokens = 16" in proc.stderr and "longest training line" in proc.stderr


def test_exported_models_keep_the_sentence_transformers_pooling(tmp_path):
    """models/base and models/adapted of the bundled MiniLM load in sentence-transformers with its pooling."""
    sentence_transformers = pytest.importorskip("sentence_transformers")
    from pipeline.models import BUNDLED, load_masked_lm, load_tokenizer, resolve_model, save_pretrained

    model, _ = load_masked_lm(BUNDLED)
    save_pretrained(model, load_tokenizer(BUNDLED), tmp_path / "out", like=BUNDLED)
    assert (tmp_path / "out" / "modules.json").is_file() and (tmp_path / "out" / "1_Pooling").is_dir()
    ours = sentence_transformers.SentenceTransformer(str(tmp_path / "out"), device="cpu")
    theirs = sentence_transformers.SentenceTransformer(resolve_model(BUNDLED), device="cpu")
    texts = ["the night is dark and cold", "a song about the sea"]
    a, b = ours.encode(texts), theirs.encode(texts)
    assert abs(a - b).max() < 1e-5 and abs((a ** 2).sum(1) - 1).max() < 1e-4  # same pooling, normalized

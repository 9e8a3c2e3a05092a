"""Two `dvc repro` runs of the whole pipeline from scratch give the same bytes and the same CPU metrics; and
fake W&B / HF secrets planted in the environment of one of them appear in nothing it wrote or printed."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.config import ParamsError, parse_params
from tests.reliability.conftest import FAKE_HF_TOKEN, FAKE_WANDB_KEY, TIMING, tree_hashes


def metrics(repo: Path) -> dict[str, dict]:
    """Every JSON report, timing figures left out."""
    out = {}
    for path in sorted((repo / "reports").rglob("*.json")):
        data = json.loads(path.read_text())
        out[path.relative_to(repo).as_posix()] = {k: v for k, v in data.items() if k not in TIMING}
    return out


def test_two_runs_from_scratch_give_identical_shards_models_and_metrics(runs):
    ref, second = runs.reference.repo, runs.second.repo
    # Arrow shards (lines, masked), both models, the fine-tuned folders: byte for byte.
    folders = ("artifacts/lines", "artifacts/masked", "models/base", "models/adapted", "models/finetuned")
    hashes = tree_hashes(ref, *folders)
    assert len([p for p in hashes if p.endswith(".arrow")]) >= 4
    assert hashes == tree_hashes(second, *folders)
    # Every metric (pretrain, evaluate, finetune, compare), per-line losses and loss curves: identical.
    assert metrics(ref) == metrics(second)
    assert len(metrics(ref)) >= 8
    csv = {path: digest for path, digest in tree_hashes(ref, "reports").items() if path.endswith(".csv")}
    assert len(csv) >= 8
    assert csv == {path: digest for path, digest in tree_hashes(second, "reports").items() if path.endswith(".csv")}


def test_planted_tokens_appear_in_no_file_log_or_wandb_run(runs):
    second = runs.second
    assert list((second.repo / "wandb").glob("offline-run-*")), "W&B offline wrote no run: nothing was checked"
    planted = [s.encode() for s in (FAKE_WANDB_KEY, FAKE_HF_TOKEN)]
    searched, hits = 0, []
    # Everything the run wrote (params, dvc.lock, artifacts, models, reports, wandb/, DVC's own files) and what
    # it wrote outside the repo (W&B's config / cache / data folders, HF_HOME, TMPDIR); and the reference run.
    for root in (second.repo, runs.outside, runs.reference.repo):
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                searched += 1
                hits += [str(path) for s in planted if s in data]
    assert searched > 100
    assert hits == []
    for run in (second, runs.reference):
        assert FAKE_WANDB_KEY not in run.log and FAKE_HF_TOKEN not in run.log
    # The runs' W&B records (config, summary, logs) were among the files searched: pretrain's config is there.
    records = [p.read_bytes() for p in (second.repo / "wandb").rglob("run-*.wandb")]
    assert len(records) >= 4 and any(b"head_warmup_steps" in r for r in records)


def test_a_secret_written_into_params_is_refused_without_echoing_it():
    for raw in ({"tracking": {"api_key": FAKE_WANDB_KEY}}, {"hf_token": FAKE_HF_TOKEN},
                {"tracking": {"wandb_api_key": FAKE_WANDB_KEY}}):
        try:
            parse_params(raw)
        except ParamsError as err:
            message = str(err)
        else:
            raise AssertionError(f"{raw} was accepted")
        assert message.startswith("params.yaml: unknown key")
        assert FAKE_WANDB_KEY[:12] not in message and FAKE_HF_TOKEN[:12] not in message, message

"""pipeline/tracking.py with real offline W&B runs: what lands in wandb/offline-run-*/run-*.wandb.

The run file is W&B's transaction log (what `wandb sync` uploads): LevelDB-log framed protobuf records. The
reader below decodes it with W&B's own protobuf classes, so the assertions see exactly what would be synced.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest
import torch

from pipeline.config import TrackingParams
from pipeline.tracking import (Curves, finish_wandb, flatten, set_summary, wandb_group, wandb_logger, wandb_mode,
                               wandb_run)

BLOCK, HEADER = 32768, 7  # LevelDB log: 32 KiB blocks, 7-byte chunk headers (crc32, length, type)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list:
    """Every protobuf Record in a .wandb transaction log."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    if not data:
        return []
    assert data[:4] == b":W&B", f"{path}: not a W&B run file"
    pos, pending, records = HEADER, b"", []  # the file header takes the first 7 bytes of block 0
    while pos + HEADER <= len(data):
        room = BLOCK - pos % BLOCK
        if room < HEADER:  # too little left in this block for a chunk header: zero padding
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def finished_records(folder: Path, wait: float = 60) -> tuple[Path, list]:
    """The run file and records of a finished run. W&B's service writes the log in the background: right after
    run.finish() returns, the tail (sometimes all of it) may still be on its way, so wait for the exit record."""
    deadline = time.monotonic() + wait
    while True:
        paths = list(folder.glob("run-*.wandb"))
        records = read_records(paths[0]) if len(paths) == 1 else []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            assert len(paths) == 1, f"{folder}: expected one run-*.wandb file, found {paths}"
            return paths[0], records
        time.sleep(0.1)


def read_run(folder: Path) -> dict:
    """The run record, config, history rows and final summary of one offline run folder."""
    path, records = finished_records(folder)
    run, config, history, summary = None, {}, [], {}
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run = r.run
            config.update({i.key: json.loads(i.value_json) for i in r.run.config.update})
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in r.config.update})
        elif kind == "history":
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
        elif kind == "summary":
            summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.summary.update})
    assert run is not None, f"{path}: no run record"
    return {"group": run.run_group, "job_type": run.job_type, "tags": list(run.tags), "name": run.display_name,
            "project": run.project, "config": config, "history": history, "summary": summary}


def runs(root: Path) -> list[dict]:
    folders = sorted((root / "wandb").glob("offline-run-*"))
    return [read_run(f) for f in folders]


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """A fresh folder to run in, W&B offline (tests/conftest.py disables it for every other test)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("DVC_EXP_NAME", "tidal-moss")
    return tmp_path


def test_lightning_run_offline_has_group_job_type_tags_history_and_summary(offline):
    import pytorch_lightning as pl

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            loss = self.net(batch[0]).pow(2).mean()
            self.log("train/loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(16, 4)), batch_size=4)
    logger = wandb_logger(TrackingParams(), "finetune-adapted-seed3", "finetune", ["adapted", "triplet"],
                          {"model": "adapted", "seed": 3, "finetune": {"lr": 5e-5}})
    curves = Curves()
    trainer = pl.Trainer(max_epochs=2, logger=logger, callbacks=[curves], log_every_n_steps=1, accelerator="cpu",
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Module(), data)
    set_summary(logger, {"test": {"accuracy": 0.75, "loss": 0.3}, "best_epoch": 1})
    finish_wandb(logger)

    (run,) = runs(offline)
    assert run["group"] == "tidal-moss"  # the DVC experiment's name
    assert run["job_type"] == "finetune" and run["tags"] == ["adapted", "triplet"]
    assert run["name"] == "finetune-adapted-seed3" and run["project"] == "dapt"
    assert run["config"]["seed"] == 3 and run["config"]["finetune"] == {"lr": 5e-5}
    losses = [row["train/loss"] for row in run["history"] if "train/loss" in row]
    assert len(losses) == 8 == len(curves.series["train/loss"])  # every step, as Curves recorded them
    assert losses == pytest.approx([v for _, v in curves.series["train/loss"]], rel=1e-6)
    assert run["summary"]["test/accuracy"] == 0.75 and run["summary"]["best_epoch"] == 1
    assert run["summary"]["train/loss"] == pytest.approx(losses[-1])


def test_compare_stage_logs_its_statistics_and_the_report(offline):
    from tests.test_compare_stage import BETTER, compare, write_inputs

    root = write_inputs(offline, BETTER)
    (root / "params.yaml").write_text("seed: 42\ntask: {type: triplet}\ntracking: {wandb: offline}\n")
    result = compare(root)
    (run,) = runs(root)
    assert run["job_type"] == "compare" and run["group"] == "tidal-moss" and run["tags"] == ["base", "adapted"]
    s = run["summary"]
    assert s["downstream/metrics/accuracy/difference/verdict"] == "better" and s["verdict"] == "better"
    assert s["downstream/metrics/accuracy/difference/ci95_low"] == result["downstream"]["metrics"]["accuracy"][
        "difference"]["ci95_low"]
    assert s["mlm/loss_difference/mean"] == result["mlm"]["loss_difference"]["mean"]
    assert s["data/leaked_lines"] == 3
    assert s["report/_type"] == "html-file"  # the report page, viewable in the W&B run
    (page,) = (root / "wandb").glob("offline-run-*/files/media/html/*.html")
    assert page.read_text() == (root / "reports" / "report.html").read_text()  # as is: no W&B stylesheet


def test_disabled_makes_no_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WANDB_MODE")
    assert wandb_logger(TrackingParams(wandb="disabled"), "x", "pretrain", ["adapted"], {}) is None
    assert wandb_run(TrackingParams(wandb="disabled"), "x", "compare", [], {}) is None
    set_summary(None, {"a": 1})
    finish_wandb(None)
    assert not (tmp_path / "wandb").exists()


def test_mode_and_group(monkeypatch):
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    assert wandb_mode(TrackingParams()) == "offline"  # the default: nothing leaves the machine
    assert wandb_mode(TrackingParams(wandb="online")) == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")  # the environment wins (CI, tests)
    assert wandb_mode(TrackingParams(wandb="online")) == "disabled"
    monkeypatch.setenv("WANDB_MODE", "dryrun")  # W&B's old word for offline
    assert wandb_mode(TrackingParams(wandb="online")) == "offline"
    assert wandb_group(TrackingParams()) == "workspace"
    monkeypatch.setenv("DVC_EXP_NAME", "fuzzy-owl")
    assert wandb_group(TrackingParams()) == "fuzzy-owl"
    assert wandb_group(TrackingParams(group="sweep-1")) == "sweep-1"


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": "x"}}, "e": [1, 2], "f": None, "g": True}) == {
        "a/b": 1, "a/c/d": "x", "g": True}

"""What a run records: loss curves for DVC plots and the report, and (optionally) a W&B run.

W&B is offline unless params (`tracking.wandb: online`) or the environment (WANDB_MODE) say otherwise; the
API key only ever comes from the environment. Offline runs land in `wandb/` and upload with `wandb sync`.
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from pathlib import Path

import pytorch_lightning as pl

from pipeline.config import TrackingParams
from pipeline.io import atomic_file

WANDB_DIR = "wandb"


class Curves(pl.Callback):
    """Record the training loss every `every` steps and the scalars logged under `prefixes` after every
    validation run (before training included). `series[name]` is a list of (step, value)."""

    def __init__(self, prefixes=("dev/", "val/"), every: int = 1):
        self.prefixes, self.every = tuple(prefixes), every
        self.series: dict[str, list[tuple[int, float]]] = defaultdict(list)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step  # already counts this batch
        if step % self.every == 0 or step == 1:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.series["train/loss"].append((step, float(loss)))

    def on_validation_end(self, trainer, pl_module):  # after the module's epoch-end logging
        if not trainer.sanity_checking:
            for name, value in trainer.callback_metrics.items():
                if name.startswith(self.prefixes) and value.numel() == 1:
                    self.series[name].append((trainer.global_step, float(value)))


def write_curve(path: str | Path, rows: list[tuple[int, float]], value: str = "loss", **extra) -> None:
    """A two-column CSV (step, value) -- what `dvc plots` reads; `extra` adds constant columns."""
    with atomic_file(path) as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(["step", value, *extra])
        for step, v in rows:
            out.writerow([step, f"{v:.6g}", *extra.values()])


def wandb_group(tracking: TrackingParams) -> str:
    return tracking.group or os.environ.get("DVC_EXP_NAME") or "workspace"


def wandb_logger(tracking: TrackingParams, name: str, job_type: str, tags: list[str], config: dict):
    """A Lightning WandbLogger, or None when tracking is disabled. Close it with `finish_wandb`."""
    mode = os.environ.get("WANDB_MODE") or tracking.wandb
    if mode == "disabled":
        return None
    from pytorch_lightning.loggers import WandbLogger

    os.environ.setdefault("WANDB_SILENT", "true")
    Path(WANDB_DIR).mkdir(exist_ok=True)
    return WandbLogger(project=tracking.project, name=name, group=wandb_group(tracking), job_type=job_type,
                       tags=tags, config=config, offline=mode != "online", save_dir=WANDB_DIR, log_model=False)


def finish_wandb(logger) -> None:
    if logger is not None:
        logger.experiment.finish()

"""What a run records: loss curves for DVC plots and the report, and (optionally) a W&B run.

W&B is offline unless params (`tracking.wandb: online`) or the environment (WANDB_MODE) say otherwise; the
API key only ever comes from the environment. Offline runs land in `wandb/offline-run-*` and upload with
`wandb sync`. Every run of one experiment shares a group (the DVC experiment's name); `job_type` says which
stage wrote it (pretrain / finetune / compare) and the tags which model (base / adapted).
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


def wandb_mode(tracking: TrackingParams) -> str:
    """offline / online / disabled: WANDB_MODE in the environment wins over params (CI and tests set it)."""
    mode = os.environ.get("WANDB_MODE") or tracking.wandb
    return mode if mode in ("online", "disabled") else "offline"


def _new_run_mode(tracking: TrackingParams) -> str | None:
    """The mode of a run about to start (None: tracking disabled), with ./wandb made and W&B's chatter off."""
    mode = wandb_mode(tracking)
    if mode == "disabled":
        return None
    os.environ.setdefault("WANDB_SILENT", "true")
    Path(WANDB_DIR).mkdir(exist_ok=True)
    return mode


def wandb_logger(tracking: TrackingParams, name: str, job_type: str, tags: list[str], config: dict):
    """A Lightning WandbLogger, or None when tracking is disabled. Close it with `finish_wandb`."""
    mode = _new_run_mode(tracking)
    if mode is None:
        return None
    from pytorch_lightning.loggers import WandbLogger

    # save_dir is the folder *holding* wandb/: runs land in ./wandb/offline-run-*, where `wandb sync` looks.
    # Absolute: W&B's background service, shared by the runs of one process, resolves paths from its own cwd.
    return WandbLogger(project=tracking.project, name=name, group=wandb_group(tracking), job_type=job_type,
                       tags=tags, config=config, offline=mode != "online", save_dir=str(Path.cwd()),
                       log_model=False)


def wandb_run(tracking: TrackingParams, name: str, job_type: str, tags: list[str], config: dict):
    """A plain W&B run for a stage without a Lightning Trainer (compare), or None when tracking is disabled."""
    mode = _new_run_mode(tracking)
    if mode is None:
        return None
    import wandb

    return wandb.init(project=tracking.project, name=name, group=wandb_group(tracking), job_type=job_type,
                      tags=tags, config=config, mode=mode, dir=str(Path.cwd()))


def flatten(tree: dict, prefix: str = "") -> dict:
    """Nested dicts -> {"a/b/c": scalar}: W&B groups summary keys by their '/' sections. Lists and None drop."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}/"))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
    return out


def set_summary(run, metrics: dict) -> None:
    """Set a run's summary (the numbers W&B tables and group comparisons show); `run` is a WandbLogger, a
    W&B run or None (tracking disabled)."""
    if run is not None:
        getattr(run, "experiment", run).summary.update(flatten(metrics))


def finish_wandb(run) -> None:
    """Close a WandbLogger or W&B run (None: tracking disabled)."""
    if run is not None:
        getattr(run, "experiment", run).finish()


def log_comparison(tracking: TrackingParams, compare: dict, report: str | Path) -> None:
    """The compare stage's W&B run: every statistic of compare.json in its summary, and the report page."""
    run = wandb_run(tracking, "compare", "compare", ["base", "adapted"],
                    {"seeds": compare["downstream"]["seeds"], "task": compare["downstream"]["task"]})
    if run is None:
        return
    import wandb

    set_summary(run, compare)
    run.log({"report": wandb.Html(str(report), inject=False)})  # inject=False: no stylesheet from W&B's CDN
    finish_wandb(run)

"""pretrain: a second masked-LM pass of the base model over the in-domain shards, with Lightning.

Writes models/base (the base model with the MLM head it is evaluated with), models/adapted (the result), and
reports/pretrain/ (metrics, loss curves). Checkpoints in models/checkpoints survive a crash (DVC `persist`):
a rerun with the same params resumes from the last one.
"""

import hashlib
import json
import shutil
import time

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from pipeline.config import load_params
from pipeline.io import atomic_dir, read_json, write_json
from pipeline.mlm import MaskedLM, MaskedShardData
from pipeline.models import load_masked_lm, load_tokenizer, save_pretrained, set_threads
from pipeline.shards import read_shards
from pipeline.tracking import Curves, finish_wandb, wandb_logger, write_curve
from stages import CHECKPOINTS, MASKED, MODELS, REPORTS, parser, run


def resume_path(fingerprint: str) -> str | None:
    """The last checkpoint if it was written by a run with these very params and data; else start clean."""
    marker = CHECKPOINTS / "fingerprint.json"
    if (CHECKPOINTS / "last.ckpt").is_file() and marker.is_file() and read_json(marker) == fingerprint:
        return str(CHECKPOINTS / "last.ckpt")
    shutil.rmtree(CHECKPOINTS, ignore_errors=True)
    CHECKPOINTS.mkdir(parents=True)
    write_json(marker, fingerprint)
    return None


def main(argv: list[str]) -> None:
    parser(__doc__, "dapt pretrain").parse_args(argv)
    params = load_params()
    p = params.pretrain
    set_threads(p.threads)
    pl.seed_everything(params.seed, workers=True, verbose=False)
    tokenizer = load_tokenizer(params.base_model)
    model, head_missing = load_masked_lm(params.base_model)  # a missing head is initialised from the seed
    train, val = read_shards(MASKED, "train"), read_shards(MASKED, "val")

    cuda = torch.cuda.is_available() and p.accelerator != "cpu"
    precision = p.precision if p.precision != "auto" else (
        "bf16-mixed" if cuda and torch.cuda.is_bf16_supported() else "32-true")
    stats = (MASKED / "stats.json").read_bytes()
    fingerprint = hashlib.sha256(
        json.dumps([params.base_model, params.seed, p.model_dump()]).encode() + stats).hexdigest()
    curves = Curves(every=p.log_every)
    config = {"base_model": params.base_model, "pretrain": p.model_dump(), "mask": params.mask.model_dump()}
    logger = wandb_logger(params.tracking, "pretrain", "pretrain", ["adapted"], config)
    trainer = pl.Trainer(
        max_steps=p.max_steps, max_epochs=-1, accelerator=p.accelerator, devices=p.devices, num_nodes=p.num_nodes,
        precision=precision,
        gradient_clip_val=p.grad_clip or None, log_every_n_steps=p.log_every, logger=logger or False,
        callbacks=[curves, ModelCheckpoint(dirpath=CHECKPOINTS, save_last=True, save_top_k=0,
                                           every_n_train_steps=p.checkpoint_every)],
        val_check_interval=min(p.val_every, p.max_steps), check_val_every_n_epoch=None,
        num_sanity_val_steps=0, use_distributed_sampler=False, deterministic=True,
    )
    if trainer.is_global_zero:
        with atomic_dir(MODELS / "base") as tmp:  # before any training step: the base as it is evaluated
            save_pretrained(model, tokenizer, tmp)
    module = MaskedLM(model, p.lr, p.warmup_steps, p.max_steps, p.weight_decay)
    data = MaskedShardData(train, val, tokenizer.pad_token_id, p.batch_size, params.seed)
    start = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=resume_path(fingerprint) if trainer.is_global_zero else None)
    seconds = time.perf_counter() - start
    finish_wandb(logger)
    if not trainer.is_global_zero:
        return
    with atomic_dir(MODELS / "adapted") as tmp:
        save_pretrained(module.model, tokenizer, tmp)

    out = REPORTS / "pretrain"
    write_curve(out / "train_loss.csv", curves.series["train/loss"])
    write_curve(out / "val_loss.csv", curves.series["val/loss"])
    val_losses = curves.series["val/loss"]
    write_json(out / "metrics.json", {
        "steps": trainer.global_step,
        "train_loss_last": curves.series["train/loss"][-1][1],
        "val_loss_last": val_losses[-1][1] if val_losses else None,
        "seconds": round(seconds, 1),
        "precision": precision,
        "devices": trainer.world_size,
        # A headless base (e.g. the bundled sentence encoder) gets a freshly initialised MLM head: its MLM
        # figures then measure an untrained head, not the encoder. The report says so.
        "base_head_untrained": bool(head_missing),
        "base_head_missing_weights": head_missing,
    })
    last_val = f"{val_losses[-1][1]:.4f}" if val_losses else "not measured"
    print(f"pretrain: {trainer.global_step} steps in {seconds:.0f}s, last val loss {last_val}")


if __name__ == "__main__":
    run(main)

"""pretrain: a second masked-LM pass of the base model over the in-domain shards, with Lightning.

1. A base without an MLM head (a sentence encoder such as the bundled MiniLM) first trains a fresh head for
   `head_warmup_steps` steps with the encoder frozen. models/base is the base with that head: the head the
   base is evaluated with, so base and adapted are compared fairly.
2. The whole model then trains for `max_steps` steps (or `epochs` passes): AdamW, warm-up then linear or
   cosine decay, token-budget batches, the MLM head on masked positions only; DDP when there is more than
   one process (`devices`, `num_nodes`; launched by Lightning itself, SLURM's srun or torchrun).

Writes models/base, models/adapted (HF folders with safetensors and the tokenizer) and reports/pretrain/
(metrics.json, train_loss.csv, val_loss.csv). Checkpoints go to models/checkpoints/<run>/ (DVC `persist`):
rerunning after a crash with the same params and data resumes from the last one, at the same batch.
"""

import hashlib
import json
import math
import shutil
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from pipeline.batching import DynamicMasking, TokenBudgetSampler
from pipeline.config import ParamsError, load_params
from pipeline.io import atomic_dir, read_json, write_json
from pipeline.mlm import CheckpointBeside, Diverged, MaskedLM, MaskedShardData, Throughput, micro_batch
from pipeline.models import Trust, load_masked_lm, load_tokenizer, local_folder, save_pretrained, set_threads
from pipeline.shards import read_shards
from pipeline.text import InputError
from pipeline.tracking import Curves, finish_wandb, wandb_logger, write_curve
from stages import CHECKPOINTS, MASKED, MODELS, REPORTS, parser, run

# Settings that change neither the model nor the data order: a run may resume across a change of these.
RESUMABLE_ACROSS = {"threads", "log_every", "val_every", "val_lines", "checkpoint_every"}


class ResumableCurves(Curves):
    """Loss curves that survive a resume (saved in the checkpoint), so the CSVs cover the whole run."""

    def state_dict(self) -> dict:
        return {"series": dict(self.series)}

    def load_state_dict(self, state: dict) -> None:
        for name, points in state["series"].items():
            self.series[name] = [tuple(p) for p in points]


def run_folder(params) -> Path:
    """models/checkpoints/<fingerprint>: one folder per (base model, seed, pretrain params, masked data)."""
    p = params.pretrain
    base = local_folder(params.base_model)
    files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in base.iterdir() if f.is_file()) \
        if base else []
    keys = {k: v for k, v in p.model_dump().items() if k not in RESUMABLE_ACROSS}
    blob = json.dumps([params.base_model, files, params.seed, keys], sort_keys=True).encode()
    digest = hashlib.sha256(blob + (MASKED / "stats.json").read_bytes()).hexdigest()[:16]
    return CHECKPOINTS / digest


def make_trainer(p, precision: str, max_steps: int, max_epochs: int, callbacks: list, logger, **kwargs):
    return pl.Trainer(
        max_steps=max_steps, max_epochs=max_epochs, accelerator=p.accelerator, devices=p.devices,
        num_nodes=p.num_nodes, strategy=p.strategy, precision=precision, accumulate_grad_batches=p.accumulate,
        gradient_clip_val=p.grad_clip or None, log_every_n_steps=p.log_every, logger=logger or False,
        callbacks=callbacks, num_sanity_val_steps=0, use_distributed_sampler=False,
        deterministic=p.accelerator == "cpu" or not torch.cuda.is_available(), **kwargs)


def warm_up_head(p, folder: Path, model, tokenizer, data, precision: str, steps: int, like: str, zero: bool,
                 trust: Trust):
    """Step 1: the base with an MLM head it can be evaluated with, saved in the run folder (once per run).

    Returns the model to adapt and the head's training-loss curve."""
    warm, curve_file = folder / "base", folder / "head_loss.json"
    if (warm / "config.json").is_file():
        print(f"pretrain: using the base and its head from {warm}")
        return load_masked_lm(str(warm), trust)[0], read_json(curve_file)
    curves = Curves(every=p.log_every)
    if steps:
        head = MaskedLM(model, p.head_lr, max(1, steps // 10), steps, p.weight_decay, head_only=True)
        trainer = make_trainer(p, precision, steps, -1, [curves], None, limit_val_batches=0,
                               enable_checkpointing=False)
        trainer.fit(head, datamodule=data)
    losses = curves.series["train/loss"]
    if zero:
        if losses:
            print(f"pretrain: head warm-up, {steps} steps with the encoder frozen: loss {losses[0][1]:.3f} -> "
                  f"{losses[-1][1]:.3f}")
        write_json(curve_file, losses)
        with atomic_dir(warm) as tmp:
            save_pretrained(model, tokenizer, tmp, like=like)
    return model, losses


def adapt(trainer, module, data, last: Path, curves) -> None:
    """Step 2: train everything, from the last checkpoint of this run when there is one; the held-out loss is
    measured before the first step and after the last."""
    resume = str(last) if last.is_file() else None
    if resume:
        try:
            step = torch.load(resume, map_location="cpu", weights_only=False, mmap=True)["global_step"]
        except Exception as err:  # checkpoints are renamed into place whole, so this is damage from outside
            raise InputError(f"{resume}: cannot resume from this checkpoint ({str(err).splitlines()[0][:100]}); "
                             f"restore it, or delete {CHECKPOINTS} to start the run afresh") from None
        print(f"pretrain: resuming from {resume} (step {step})")
    else:
        trainer.validate(module, datamodule=data, verbose=False)
    trainer.fit(module, datamodule=data, ckpt_path=resume)
    measured = curves.series["val/loss"]
    if not measured or measured[-1][0] != trainer.global_step:
        trainer.validate(module, datamodule=data, verbose=False)


def main(argv: list[str]) -> None:
    parser(__doc__, "dapt pretrain").parse_args(argv)
    # Lightning starts the other DDP ranks by re-running this process's command line. Under the `dapt` console
    # script that line is not runnable (argv[0] is "dapt pretrain"): point it at this file instead.
    if getattr(sys.modules["__main__"], "__spec__", None) is None and not sys.argv[0].endswith(".py"):
        sys.argv = [str(Path(__file__).resolve()), *argv]
    params = load_params()
    p = params.pretrain
    set_threads(p.threads)
    pl.seed_everything(params.seed, workers=True, verbose=False)
    trust = Trust.of(params)
    tokenizer = load_tokenizer(params.base_model, trust)
    model, head_missing = load_masked_lm(params.base_model, trust)  # a missing head is initialised from the seed
    train, val = read_shards(MASKED, "train"), read_shards(MASKED, "val")
    if p.val_lines:
        val = val.slice(0, p.val_lines)
    cuda = torch.cuda.is_available() and p.accelerator != "cpu"
    if cuda:
        torch.set_float32_matmul_precision("high")  # TF32 where the GPU has it
    precision = p.precision if p.precision != "auto" else (
        ("bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed") if cuda else "32-true")

    # The adapting trainer comes first: it knows this process's rank and the world size.
    folder = run_folder(params)
    curves, throughput = ResumableCurves(every=p.log_every), Throughput(every=p.log_every)
    config = {"base_model": params.base_model, "pretrain": p.model_dump(), "mask": params.mask.model_dump()}
    logger = wandb_logger(params.tracking, "pretrain", "pretrain", ["adapted"], config)
    checkpoint = ModelCheckpoint(dirpath=folder, save_last=True, save_top_k=0,
                                 every_n_train_steps=p.checkpoint_every)
    trainer = make_trainer(p, precision, p.max_steps or -1, p.epochs or -1, [curves, throughput, checkpoint],
                           logger, val_check_interval=p.val_every * p.accumulate, check_val_every_n_epoch=None,
                           plugins=[CheckpointBeside()])
    world, zero = trainer.world_size, trainer.is_global_zero
    tokens, rows = micro_batch(p.batch_tokens, p.batch_size, world, p.accumulate)
    longest = pc.max(train.column("length")).as_py() or 0
    if tokens < longest or (p.batch_size and rows < 1):
        raise ParamsError(
            f"params.yaml: pretrain.batch_tokens = {p.batch_tokens} / batch_size = {p.batch_size} over {world} "
            f"process(es) x accumulate {p.accumulate} leaves {tokens} tokens / {rows} lines per micro-batch, "
            f"below the longest training line ({longest} tokens): raise them or lower accumulate")
    per_epoch = math.ceil(len(TokenBudgetSampler(train.column("length").to_numpy(), tokens, rows,
                                                 world_size=world)) / p.accumulate)
    if per_epoch == 0:
        raise ParamsError(f"params.yaml: pretrain: {train.num_rows} training rows make fewer batches than the "
                          f"{world} processes: lower pretrain.batch_tokens or use fewer devices")
    total_steps = min(p.max_steps or math.inf, (p.epochs * per_epoch) or math.inf)
    data = MaskedShardData(train, val, tokenizer.pad_token_id, p.batch_tokens, p.batch_size, p.accumulate,
                           params.seed, DynamicMasking.of_shards(MASKED, params.seed))
    warmup_steps = p.head_warmup_steps if head_missing else 0
    if zero:
        for stale in CHECKPOINTS.glob("*"):  # runs with other params or data cannot be resumed: drop them
            if stale != folder:
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "run.json", {"base_model": params.base_model, "seed": params.seed, **config})

    try:
        model, head_losses = warm_up_head(p, folder, model, tokenizer, data, precision, warmup_steps,
                                          params.base_model, zero, trust)
        module = MaskedLM(model, p.lr, p.warmup_steps, total_steps, p.weight_decay, p.schedule)
        start = time.perf_counter()
        adapt(trainer, module, data, folder / "last.ckpt", curves)
    except Diverged as err:
        last = folder / "last.ckpt"
        kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was written yet"
        raise SystemExit(f"error: pretrain stopped: {err}; {kept}. Lower pretrain.lr, raise warmup_steps, or "
                         "use precision 32-true") from None
    seconds = time.perf_counter() - start
    finish_wandb(logger)
    if not zero:
        return

    with atomic_dir(MODELS / "base") as tmp:
        shutil.copytree(folder / "base", tmp, dirs_exist_ok=True)
    with atomic_dir(MODELS / "adapted") as tmp:
        save_pretrained(module.model, tokenizer, tmp, like=params.base_model)
    out = REPORTS / "pretrain"
    write_curve(out / "train_loss.csv", curves.series["train/loss"])
    write_curve(out / "val_loss.csv", curves.series["val/loss"])
    val_losses = curves.series["val/loss"]
    t = throughput.totals or throughput.summary()
    write_json(out / "metrics.json", {
        "steps": trainer.global_step,
        "train_loss_first": curves.series["train/loss"][0][1],
        "train_loss_last": curves.series["train/loss"][-1][1],
        "val_loss_first": val_losses[0][1] if val_losses else None,
        "val_loss_last": val_losses[-1][1] if val_losses else None,
        "seconds": round(seconds, 1),
        "precision": precision,
        "devices": world,
        "batch_tokens": p.batch_tokens,
        "micro_batch_tokens": tokens,
        "accumulate": p.accumulate,
        "batches_per_rank": t["batches_per_rank"],
        "real_tokens": t["real_tokens"],
        "tokens_per_second": round(t["tokens_per_second"], 1),
        "padding_fraction": round(t["padding_fraction"], 5),
        # A headless base (e.g. the bundled sentence encoder) gets a fresh MLM head. Unless it was warmed up,
        # the base's MLM figures then measure an untrained head, not the encoder; the report says so.
        "base_head_missing_weights": head_missing,
        "head_warmup_steps": warmup_steps,
        "head_warmup_loss_first": head_losses[0][1] if head_losses else None,
        "head_warmup_loss_last": head_losses[-1][1] if head_losses else None,
        "base_head_untrained": bool(head_missing) and warmup_steps == 0,
        "resumed_from_step": t["start_step"],
    })
    last_val = f"{val_losses[-1][1]:.4f}" if val_losses else "not measured"
    print(f"pretrain: {trainer.global_step} steps in {seconds:.0f}s, {t['tokens_per_second']:.0f} tokens/s, "
          f"padding {t['padding_fraction']:.1%}, last val loss {last_val}")


if __name__ == "__main__":
    run(main)

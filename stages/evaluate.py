"""evaluate <base|adapted>: held-out masked-LM loss, perplexity and top-1/top-10 accuracy on the val shards.

Both models are scored on the *same* masked positions of the same lines (the shards are static), so the
per-line losses saved here pair up line by line in the compare stage.
"""

import csv

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from pipeline.batching import LengthBucketSampler, MaskedLines, keep_batch
from pipeline.config import load_params
from pipeline.io import atomic_file, write_json
from pipeline.mlm import evaluate_masked_lm
from pipeline.models import load_masked_lm, load_tokenizer
from pipeline.shards import read_shards
from stages import MASKED, MODELS, REPORTS, parser, run


def main(argv: list[str]) -> None:
    args = parser(__doc__, "dapt evaluate", model=True).parse_args(argv)
    name = args.model
    params = load_params()
    folder = MODELS / name
    pl.seed_everything(params.seed, verbose=False)
    tokenizer = load_tokenizer(str(folder))
    model, _ = load_masked_lm(str(folder))
    val = read_shards(MASKED, "val")
    if params.evaluate.max_lines:
        val = val.slice(0, params.evaluate.max_lines)
    sampler = LengthBucketSampler(val.column("length").to_numpy(), params.evaluate.batch_size, shuffle=False)
    loader = DataLoader(MaskedLines(val, tokenizer.pad_token_id), batch_sampler=sampler, collate_fn=keep_batch)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    metrics, per_line = evaluate_masked_lm(model, loader, device)

    out = REPORTS / "evaluate" / name
    write_json(out / "metrics.json", {**metrics, "lines": int(len(per_line["line"]))})
    with atomic_file(out / "per_line.csv") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["line", "masked", "loss_sum"])
        for row in zip(per_line["line"], per_line["masked"], per_line["loss_sum"]):
            writer.writerow([int(row[0]), int(row[1]), f"{row[2]:.6g}"])
    print(f"evaluate {name}: loss {metrics['loss']:.4f}, perplexity {metrics['perplexity']:.1f}, "
          f"top-1 {metrics['top1_accuracy']:.2%}, top-10 {metrics['top10_accuracy']:.2%}")


if __name__ == "__main__":
    run(main)

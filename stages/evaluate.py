"""evaluate <base|adapted>: held-out masked-LM loss, perplexity and top-1/top-10 accuracy on the val shards.

Both models are scored on the *same* masked positions of the same lines (the shards are static; dynamic-mode
shards are masked here as epoch 0, the same for every model), so the per-line losses saved here pair up line
by line in the compare stage. models/base carries the MLM head it is evaluated with: for a headless base,
the head warmed up by the pretrain stage with the encoder frozen.

Writes reports/evaluate/<model>/: metrics.json, per_line.csv (line, masked, loss_sum) and fill_mask.json
(the model's top-10 guesses for one masked token of `evaluate.fill_mask_lines` held-out lines, the same
lines and positions for both models).
"""

import csv

import pytorch_lightning as pl
import torch

from pipeline.batching import DynamicMasking, masked_loader
from pipeline.config import load_params
from pipeline.fill_mask import held_out_rows, pick_positions
from pipeline.io import atomic_file, write_json
from pipeline.mlm import evaluate_masked_lm, held_out_masking
from pipeline.models import Trust, load_masked_lm, load_tokenizer
from pipeline.shards import read_shards
from stages import MASKED, MODELS, REPORTS, parser, run


def main(argv: list[str]) -> None:
    args = parser(__doc__, "dapt evaluate", model=True).parse_args(argv)
    name = args.model
    params = load_params()
    e = params.evaluate
    folder = MODELS / name
    pl.seed_everything(params.seed, verbose=False)
    trust = Trust.of(params)
    tokenizer = load_tokenizer(str(folder), trust)
    model, _ = load_masked_lm(str(folder), trust)
    val = read_shards(MASKED, "val")
    if e.max_lines:
        val = val.slice(0, e.max_lines)
    dynamic = held_out_masking(val, DynamicMasking.of_shards(MASKED, params.seed))
    if dynamic is not None:  # store the epoch-0 masks with the rows: scoring and fill-mask read the same ones
        ids, labels = dynamic(val, 0)
        val = val.drop_columns(["input_ids"]).append_column("input_ids", ids).append_column("labels", labels)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loader = masked_loader(val, tokenizer.pad_token_id, e.batch_tokens, e.batch_size)
    metrics, per_line = evaluate_masked_lm(model, loader, device)

    out = REPORTS / "evaluate" / name
    write_json(out / "metrics.json", {**metrics, "lines": int(len(per_line["line"]))})
    with atomic_file(out / "per_line.csv") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["line", "masked", "loss_sum"])
        for row in zip(per_line["line"], per_line["masked"], per_line["loss_sum"]):
            writer.writerow([int(row[0]), int(row[1]), f"{row[2]:.6g}"])
    picks = pick_positions(val, tokenizer, e.fill_mask_lines)
    write_json(out / "fill_mask.json", held_out_rows(model, tokenizer, val, picks, device) if picks else {"rows": []})
    print(f"evaluate {name}: loss {metrics['loss']:.4f}, perplexity {metrics['perplexity']:.1f}, "
          f"top-1 {metrics['top1_accuracy']:.2%}, top-10 {metrics['top10_accuracy']:.2%}")


if __name__ == "__main__":
    run(main)

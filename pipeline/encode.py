"""The mask stage's core: clean lines -> token ids (fast tokenizer, parallel) -> masked-LM Arrow shards."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from pipeline.config import MaskParams
from pipeline.masking import IGNORE, MaskSpec, mask_lines
from pipeline.shards import ShardWriter, shard_paths

MASKED_SCHEMA = pa.schema([
    ("input_ids", pa.list_(pa.int32())),
    ("labels", pa.list_(pa.int32())),  # the original token where masked, IGNORE (-100) elsewhere
    ("length", pa.int32()),
    ("line", pa.int64()),  # row of the line in the split's line shards
    ("copy", pa.int16()),  # which of the dupe_factor masks of that line
])
BATCH = 8192


def mask_spec(tokenizer, params: MaskParams) -> MaskSpec:
    special = np.array(sorted(set(tokenizer.all_special_ids)), dtype=np.int64)
    vocab = np.arange(len(tokenizer), dtype=np.int64)
    return MaskSpec(mask_id=tokenizer.mask_token_id, special_ids=special, random_ids=vocab[~np.isin(vocab, special)],
                    probability=params.mlm_probability, mask_replace=params.mask_replace,
                    random_replace=params.random_replace)


def tokenize_lines(lines_dir: Path, split: str, tokenizer, params: MaskParams, cache_dir: Path) -> datasets.Dataset:
    """Token ids of every line (special tokens added, truncated to max_seq_len), memory-mapped Arrow."""
    parts = [datasets.Dataset.from_file(str(p)) for p in shard_paths(lines_dir, split)]
    lines = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    if params.num_proc > 1:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the processes are the parallelism

    def encode(batch):
        enc = tokenizer(batch["text"], truncation=True, max_length=params.max_seq_len,
                        return_attention_mask=False, return_token_type_ids=False)
        return {"input_ids": enc["input_ids"], "words": [len(t.split()) for t in batch["text"]]}

    return lines.map(encode, batched=True, batch_size=1000, num_proc=params.num_proc if len(lines) > 1000 else None,
                     remove_columns=lines.column_names, cache_file_name=str(cache_dir / f"{split}.arrow"),
                     desc=f"tokenize {split}")


def mask_corpus(lines_dir: Path, out_dir: Path, tokenizer, params: MaskParams, seed: int) -> dict:
    """Write `train-*.arrow` (dupe_factor masked copies, copy-major) and `val-*.arrow` (one copy); return stats."""
    spec = mask_spec(tokenizer, params)
    stats: dict = {"max_seq_len": params.max_seq_len, "mlm_probability": params.mlm_probability}
    added = specials_per_line(tokenizer)
    with tempfile.TemporaryDirectory(prefix=".tokenized-", dir=out_dir.parent) as cache:
        for split, copies in (("train", params.dupe_factor), ("val", 1)):
            encoded = tokenize_lines(lines_dir, split, tokenizer, params, Path(cache))
            table = encoded.data.table
            writer = ShardWriter(out_dir, split, MASKED_SCHEMA, params.shard_lines)
            s = {"lines": table.num_rows, "copies": copies, "tokens": 0, "words": 0, "unk": 0, "maskable": 0,
                 "masked": 0, "to_mask": 0, "to_random": 0, "kept": 0, "lines_without_maskable_token": 0,
                 "length_histogram": {}}
            hist = np.zeros(params.max_seq_len + 1, dtype=np.int64)
            with tqdm(total=table.num_rows * copies, desc=f"mask {split}", unit="line") as bar:
                for copy in range(copies):
                    for start in range(0, table.num_rows, BATCH):
                        chunk = table.slice(start, BATCH)
                        col = chunk.column("input_ids").combine_chunks()
                        offsets = col.offsets.to_numpy() - col.offsets[0].as_py()
                        ids = col.values.slice(col.offsets[0].as_py(), offsets[-1]).to_numpy()
                        rows = np.arange(start, start + chunk.num_rows)
                        out, labels = mask_lines(ids, offsets, rows, copy, seed, spec)
                        maskable = ~np.isin(ids, spec.special_ids)
                        per_line = np.add.reduceat(maskable, offsets[:-1]) if len(ids) else np.zeros(0, int)
                        keep = per_line > 0  # a line of special tokens only has nothing to predict
                        lengths = np.diff(offsets)
                        kept_rows = np.repeat(keep, lengths)
                        new_offsets = np.concatenate([[0], np.cumsum(lengths[keep])]).astype(np.int32)
                        writer.write(pa.table({
                            "input_ids": pa.ListArray.from_arrays(new_offsets, out[kept_rows]),
                            "labels": pa.ListArray.from_arrays(new_offsets, labels[kept_rows]),
                            "length": lengths[keep].astype(np.int32),
                            "line": rows[keep],
                            "copy": np.full(int(keep.sum()), copy, dtype=np.int16),
                        }))
                        if copy == 0:  # corpus statistics count each line once
                            s["tokens"] += int(len(ids))
                            s["words"] += int(np.asarray(chunk.column("words")).sum())
                            s["unk"] += int((ids == tokenizer.unk_token_id).sum())
                            s["lines_without_maskable_token"] += int((~keep).sum())
                            np.add.at(hist, lengths, 1)
                        chosen = labels != IGNORE
                        s["maskable"] += int(maskable.sum())
                        s["masked"] += int(chosen.sum())
                        s["to_mask"] += int((chosen & (out == spec.mask_id)).sum())
                        s["kept"] += int((chosen & (out == ids)).sum())
                        bar.update(chunk.num_rows)
            s["to_random"] = s["masked"] - s["to_mask"] - s["kept"]
            s["rows"] = writer.rows
            s["shards"] = len(writer.finish())
            s["masked_fraction"] = s["masked"] / max(1, s["maskable"])
            # Pieces per word: how finely the base vocabulary cuts this domain's words (1.0 = whole words).
            s["pieces_per_word"] = (s["tokens"] - added * s["lines"]) / max(1, s["words"])
            s["unk_rate"] = s["unk"] / max(1, s["tokens"])
            s["length_histogram"] = {int(n): int(c) for n, c in enumerate(hist) if c}
            stats[split] = s
    if stats["train"]["rows"] == 0:
        raise ValueError(f"{lines_dir}: no training line has a token that can be masked")
    return stats


def specials_per_line(tokenizer) -> int:
    """How many special tokens the tokenizer adds to a single text ([CLS] ... [SEP]: 2)."""
    with_special, without = (len(tokenizer("x", add_special_tokens=s)["input_ids"]) for s in (True, False))
    return with_special - without

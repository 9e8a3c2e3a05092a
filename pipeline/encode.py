"""The mask stage's core: clean lines -> token ids (fast tokenizer, `datasets.map` over processes) -> masked-LM
Arrow shards.

Tokenizing is where the time goes, so the map calls the Rust tokenizer's batch encoder directly and hands
Arrow arrays back (no Python list per token, no attention mask or token types that nobody reads). Each line
shard is mapped on its own, so every worker only ever touches one shard's slice, and the tokenized cache is
read back as a stream: memory stays flat as the corpus grows. Masking then runs vectorized over batches of
8192 lines with `pipeline.masking.LineBatch` (what `mask_batch` calls), a pure function of (seed, line, copy).
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterator
from contextlib import closing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from pipeline.config import MaskParams
from pipeline.masking import IGNORE, LineBatch, MaskSpec, flat
from pipeline.shards import ShardWriter, shard_paths
from pipeline.text import InputError

MASKED_SCHEMA = pa.schema([
    ("input_ids", pa.list_(pa.int32())),
    ("labels", pa.list_(pa.int32())),  # the original token where masked, IGNORE (-100) elsewhere
    ("length", pa.int32()),
    ("line", pa.int64()),  # row of the line in the split's line shards
    ("copy", pa.int16()),  # which of the dupe_factor masks of that line
])
# mask.mode: dynamic -- the train shards hold the unmasked ids; the training loader masks them per epoch.
DYNAMIC_SCHEMA = pa.schema([
    ("input_ids", pa.list_(pa.int32())),  # unmasked
    ("length", pa.int32()),
    ("line", pa.int64()),
    ("copy", pa.int16()),  # always 0
])
WORD_IDS = pa.field("word_ids", pa.list_(pa.int32()))  # word of each token, -1 for special tokens (whole-word)
BATCH = 8192  # lines masked at once: large enough to amortize numpy calls, small enough for the CPU cache
MAP_BATCH = 10_000  # lines per tokenizer call inside the map
MIN_LINES_PER_PROC = 500  # a line shard smaller than this per process is tokenized in one


def mask_spec(tokenizer, params: MaskParams) -> MaskSpec:
    special = np.array(sorted(set(tokenizer.all_special_ids)), dtype=np.int64)
    vocab = np.arange(len(tokenizer), dtype=np.int64)
    return MaskSpec(mask_id=tokenizer.mask_token_id, special_ids=special, random_ids=vocab[~np.isin(vocab, special)],
                    probability=params.mlm_probability, mask_replace=params.mask_replace,
                    random_replace=params.random_replace, whole_word=params.whole_word, vocab_size=len(tokenizer))


def num_proc(params: MaskParams) -> int:
    return params.num_proc or len(os.sched_getaffinity(0))


class Encoder:
    """The map function: a batch of line rows (Arrow) -> token ids (+ word ids) and whitespace-word counts.

    Uses a copy of the tokenizer's Rust backend set to truncate at max_seq_len and never pad -- exactly what
    `tokenizer(texts, truncation=True, max_length=max_seq_len)` returns (tests/test_encode.py checks it)."""

    def __init__(self, tokenizer, max_seq_len: int, word_ids: bool):
        from tokenizers import Tokenizer

        self.backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        self.backend.no_padding()
        self.backend.enable_truncation(max_seq_len, direction=tokenizer.truncation_side)
        self.word_ids = word_ids

    def __call__(self, batch: pa.Table) -> pa.Table:
        text = batch.column("text")
        texts = text.to_pylist()
        encs = self.backend.encode_batch(texts) if self.word_ids else self.backend.encode_batch_fast(texts)
        lengths = np.fromiter(map(len, encs), np.int32, len(encs))
        offsets = pa.array(np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int32))
        ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encs), np.int32, int(lengths.sum()))
        out = {"input_ids": pa.ListArray.from_arrays(offsets, pa.array(ids)),
               "words": pc.add(pc.count_substring(text, " "), 1).cast(pa.int32())}  # split normalized spaces
        if self.word_ids:
            words = np.fromiter((-1 if w is None else w for e in encs for w in e.word_ids), np.int32, len(ids))
            out["word_ids"] = pa.ListArray.from_arrays(offsets, pa.array(words))
        return pa.table(out)


def tokenize_shards(paths: list[Path], tokenizer, params: MaskParams, cache_dir: Path,
                    word_ids: bool = False) -> Iterator[tuple[int, list[Path]]]:
    """Tokenize line shards, in order, into Arrow stream files in cache_dir.

    Yields (rows, files) per line shard. The next shard is tokenized (in a thread driving the worker
    processes) while the caller masks the current one, so masking overlaps tokenizing; pass every shard of
    every split in one call, so that the workers keep going from the last train shard into the first val one."""
    datasets.disable_progress_bars()
    encoder = Encoder(tokenizer, params.max_seq_len, word_ids)
    procs = num_proc(params)
    if procs > 1:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the processes are the parallelism
    features = datasets.Features({"input_ids": datasets.List(datasets.Value("int32")),
                                  "words": datasets.Value("int32"),
                                  **({"word_ids": datasets.List(datasets.Value("int32"))} if word_ids else {})})

    def one(path: Path) -> tuple[int, list[Path]]:
        lines = datasets.Dataset.from_file(str(path)).with_format("arrow")
        n = len(lines)
        use = procs if n >= MIN_LINES_PER_PROC * procs else 1  # forking costs more than a few lines
        size = max(1, min(MAP_BATCH, -(-n // use)))
        out = lines.map(encoder, batched=True, batch_size=size, writer_batch_size=size,
                        num_proc=use if use > 1 else None, remove_columns=lines.column_names,
                        features=features, cache_file_name=str(cache_dir / path.name),
                        new_fingerprint=path.stem, load_from_cache_file=False)
        return n, [Path(f["filename"]) for f in out.cache_files]

    with ThreadPoolExecutor(1) as pool:
        ahead = pool.submit(one, paths[0]) if paths else None
        for i in range(len(paths)):
            current, ahead = ahead, (pool.submit(one, paths[i + 1]) if i + 1 < len(paths) else None)
            yield current.result()


def _batches(files: list[Path], size: int) -> Iterator[pa.Table]:
    """The tokenized rows, `size` at a time, streamed from disk (read, not memory-mapped: RSS stays flat)."""
    pending, have = [], 0
    for path in files:
        with pa.ipc.open_stream(pa.OSFile(str(path))) as reader:
            for batch in reader:
                pending.append(batch)
                have += batch.num_rows
                while have >= size:
                    table = pa.Table.from_batches(pending)
                    yield table.slice(0, size)
                    rest = table.slice(size)
                    pending, have = rest.to_batches(), rest.num_rows
    if have:
        yield pa.Table.from_batches(pending)


class _Stats:
    """Corpus and masking statistics of one split, accumulated batch by batch."""

    def __init__(self, params: MaskParams, added: int, unk_id: int | None):
        self.max_len, self.added, self.unk_id = params.max_seq_len, added, unk_id
        self.n = dict.fromkeys(["lines", "tokens", "words", "unk", "lines_without_maskable_token", "truncated_lines",
                                "untruncated_pieces", "untruncated_words", "maskable", "masked", "to_mask", "kept"],
                               0)
        self.hist = np.zeros(self.max_len + 1, dtype=np.int64)

    def corpus(self, ids: np.ndarray, lengths: np.ndarray, words: np.ndarray, keep: np.ndarray) -> None:
        n = self.n
        n["lines"] += len(lengths)
        n["tokens"] += len(ids)
        n["words"] += int(words.sum())
        n["unk"] += int((ids == self.unk_id).sum()) if self.unk_id is not None else 0
        n["lines_without_maskable_token"] += int((~keep).sum())
        full = lengths >= self.max_len  # truncated, or exactly max_seq_len long
        n["truncated_lines"] += int(full.sum())
        n["untruncated_pieces"] += int((lengths[~full] - self.added).sum())
        n["untruncated_words"] += int(words[~full].sum())
        self.hist += np.bincount(lengths, minlength=self.max_len + 1)[: self.max_len + 1]

    def masks(self, ids: np.ndarray, out: np.ndarray, labels: np.ndarray, ok: np.ndarray, mask_id: int) -> None:
        chosen = np.flatnonzero(labels != IGNORE)
        self.n["maskable"] += int(ok.sum())
        self.n["masked"] += len(chosen)
        self.n["to_mask"] += int((out[chosen] == mask_id).sum())
        self.n["kept"] += int((out[chosen] == ids[chosen]).sum())

    def result(self, copies: int, rows: int, shards: int) -> dict:
        s = {k: v for k, v in self.n.items() if not k.startswith("untruncated")}
        masked = max(1, s["masked"])
        s["to_random"] = s["masked"] - s["to_mask"] - s["kept"]
        s.update(copies=copies, rows=rows, shards=shards,
                 masked_fraction=s["masked"] / max(1, s["maskable"]),
                 replacement={"mask": s["to_mask"] / masked, "random": s["to_random"] / masked,
                              "keep": s["kept"] / masked},
                 # How well the base vocabulary fits the domain: pieces per whitespace word (1.0 = every word
                 # is one piece; over lines shorter than max_seq_len, so truncation does not bias it) and the
                 # share of pieces that are [UNK].
                 pieces_per_word=self.n["untruncated_pieces"] / max(1, self.n["untruncated_words"]),
                 unk_rate=s["unk"] / max(1, s["tokens"] - self.added * s["lines"]),
                 length_histogram={int(k): int(c) for k, c in enumerate(self.hist) if c})
        return s


def mask_corpus(lines_dir: Path, out_dir: Path, tokenizer, params: MaskParams, seed: int) -> dict:
    """Write `train-*.arrow` and `val-*.arrow` (+ spec.json); return stats.

    static: train holds dupe_factor masked copies (copy-major: every line of copy 0, then copy 1, ...).
    dynamic: train holds each line once, unmasked (with word ids for whole-word masking); the stats describe
    the epoch-0 masks the loader will draw. val is always one static copy. Lines without a token that may
    be masked (e.g. only [UNK]s) are left out of the shards and counted."""
    spec = mask_spec(tokenizer, params)
    (out_dir / "spec.json").write_text(spec.to_json() + "\n", encoding="utf-8")
    stats: dict = {"mode": params.mode, "seed": seed, "max_seq_len": params.max_seq_len,
                   "mlm_probability": params.mlm_probability, "whole_word": params.whole_word,
                   "tokenizer": {"vocab_size": len(tokenizer), "unk_token": tokenizer.unk_token}}
    added = specials_per_line(tokenizer)
    # Inside out_dir (the stage's temporary output folder): what a SIGKILL leaves is swept with that folder.
    shards = {split: shard_paths(lines_dir, split) for split in ("train", "val")}
    with (tempfile.TemporaryDirectory(prefix=".tokenized-", dir=out_dir) as cache,
          closing(tokenize_shards(shards["train"] + shards["val"], tokenizer, params, Path(cache),
                                  word_ids=params.whole_word)) as tokenized):  # closed (its worker done) first
        for split in ("train", "val"):
            dynamic = params.mode == "dynamic" and split == "train"
            copies = 1 if dynamic or split == "val" else params.dupe_factor
            schema = DYNAMIC_SCHEMA if dynamic else MASKED_SCHEMA
            if dynamic and params.whole_word:
                schema = schema.append(WORD_IDS)
            # one writer per copy (hidden names), renumbered copy-major at the end
            writers = [ShardWriter(out_dir, f".{split}-copy{c}", schema, params.shard_lines) for c in range(copies)]
            s = _Stats(params, added, tokenizer.unk_token_id)
            start = 0
            with tqdm(desc=f"mask {split}", unit=" lines", unit_scale=True, disable=None) as bar:
                for _, files in itertools.islice(tokenized, len(shards[split])):
                    for chunk in _batches(files, BATCH):
                        for writer, table in zip(writers, _mask_chunk(chunk, start, copies, seed, spec, s, dynamic)):
                            writer.write(table)
                        start += chunk.num_rows
                        bar.update(chunk.num_rows)
                    for f in files:
                        f.unlink()
            parts = [p for w in writers for p in w.finish()]
            for i, part in enumerate(parts):
                os.replace(part, out_dir / f"{split}-{i:05d}.arrow")
            stats[split] = s.result(copies, sum(w.rows for w in writers), len(parts))
    if stats["train"]["rows"] == 0:
        raise InputError(f"{lines_dir}: no training line has a token that can be masked (the base tokenizer "
                         "knows none of their words?)")
    return stats


def _mask_chunk(chunk: pa.Table, start: int, copies: int, seed: int, spec: MaskSpec, s: _Stats,
                dynamic: bool) -> list[pa.Table]:
    """The rows of every copy of a chunk of tokenized lines (the shard rows; lines with nothing to mask left
    out), and their statistics."""
    ids, offsets = flat(chunk.column("input_ids"))
    word_ids = chunk.column("word_ids") if spec.whole_word else None
    words = flat(word_ids)[0] if word_ids is not None else None
    lengths = np.diff(offsets)
    rows = np.arange(start, start + chunk.num_rows, dtype=np.int64)
    batch = LineBatch(ids, offsets, spec, words)  # the copy-independent work, done once for all copies
    ok = batch.ok
    ok_sum = np.concatenate([[0], np.cumsum(ok)])
    keep = ok_sum[offsets[1:]] > ok_sum[offsets[:-1]]  # the line has a token that may be masked
    s.corpus(ids, lengths, chunk.column("words").to_numpy(), keep)
    kept_tokens = np.repeat(keep, lengths)
    new_offsets = pa.array(np.concatenate([[0], np.cumsum(lengths[keep])]).astype(np.int32))
    tail = {"length": lengths[keep].astype(np.int32), "line": rows[keep]}
    tables = []
    for copy in range(copies):
        out_np, labels_np = batch.mask(rows, copy, seed)
        s.masks(ids, out_np, labels_np, ok, spec.mask_id)
        if dynamic:  # the loader masks; the stats above describe its epoch-0 masks
            columns = {"input_ids": pa.ListArray.from_arrays(new_offsets, ids[kept_tokens])}
        else:
            columns = {"input_ids": pa.ListArray.from_arrays(new_offsets, out_np[kept_tokens]),
                       "labels": pa.ListArray.from_arrays(new_offsets, labels_np[kept_tokens])}
        columns |= tail | {"copy": np.full(int(keep.sum()), copy, dtype=np.int16)}
        if dynamic and spec.whole_word:
            columns["word_ids"] = pa.ListArray.from_arrays(new_offsets, words[kept_tokens])
        tables.append(pa.table(columns))
    return tables


def specials_per_line(tokenizer) -> int:
    """How many special tokens the tokenizer adds to a single text ([CLS] ... [SEP]: 2)."""
    with_special, without = (len(tokenizer("x", add_special_tokens=s)["input_ids"]) for s in (True, False))
    return with_special - without

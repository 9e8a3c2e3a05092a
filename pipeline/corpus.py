"""The split stage's core: raw files -> clean, de-duplicated, leakage-free lines, split train/val by document.

Three streaming passes, so memory stays flat whatever the corpus size:
1. scan: read every file in order, clean and filter its lines, drop dev/test leaks, and append the survivors
   to a spill file; each survivor's 128-bit hash and sequence number go to one of 256 bucket files on disk.
2. dedup: one bucket at a time, sort its hashes; every occurrence after the first (lowest sequence number)
   is marked in an on-disk bitmap. Memory: one bucket (1/256 of 24 bytes per line).
3. write: stream the spill in order, skip the marked lines, route each line to train or val by its
   document's seeded hash, and write Arrow shards.
The result is a pure function of the inputs and params: same order, same bytes, every run.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from tqdm.auto import tqdm

from pipeline.config import SplitParams
from pipeline.masking import mix64, uniform
from pipeline.shards import ShardWriter
from pipeline.text import Batch, InputError, expand_inputs, normalize_array, read_batches

LINES_SCHEMA = pa.schema([("text", pa.string()), ("source", pa.string()), ("line_no", pa.int64()),
                          ("doc", pa.int64()), ("section", pa.int64())])
_SPILL_SCHEMA = pa.schema([*LINES_SCHEMA, ("val", pa.bool_())])
_ENTRY = np.dtype([("hi", "<u8"), ("lo", "<u8"), ("seq", "<u8")])
BUCKETS = 256
DROPS = ("too_short", "too_long", "leaked_from_task_dev_test", "leaked_ngram", "duplicate", "bad_records")


def line_hashes(text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """128-bit xxh3 of each line's UTF-8 bytes, as (high, low) uint64 arrays."""
    if len(text) == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
    digests = b"".join(map(xxhash.xxh3_128_digest, text.cast(pa.binary()).to_pylist()))
    both = np.frombuffer(digests, dtype=">u8").astype(np.uint64).reshape(-1, 2)
    return both[:, 0].copy(), both[:, 1].copy()


# --- leakage -------------------------------------------------------------------------------------------------

_NOT_WORD = r"[^\pL\pN]+"


def ngram_hashes(text: pa.Array, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every run of n words inside each line (lowercased; words are runs of letters and digits),
    and the line each belongs to."""
    parts = pc.split_pattern_regex(pc.utf8_lower(text), _NOT_WORD)
    words = pc.list_flatten(parts)
    line = np.asarray(pc.list_parent_indices(parts), dtype=np.int64)
    real = np.asarray(pc.greater(pc.binary_length(words), 0), dtype=bool)
    words, line = pc.filter(words, pa.array(real)), line[real]
    if len(words) < n:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    w = np.fromiter(map(xxhash.xxh3_64_intdigest, words.cast(pa.binary()).to_pylist()), np.uint64, len(words))
    m = len(w) - n + 1
    acc = np.zeros(m, np.uint64)
    with np.errstate(over="ignore"):
        for t in range(n):  # order-sensitive: each word is mixed with its place in the n-gram
            acc += mix64(w[t:t + m] + np.uint64(t + 1) * np.uint64(0x9E3779B97F4A7C15))
    inside = line[:m] == line[n - 1:]  # the n words lie in one line
    return mix64(acc[inside]), line[:m][inside]


class Leaks:
    """Normalized dev/test lines (and optionally their word n-grams) that the corpus must not contain."""

    def __init__(self, texts: Iterable[str], ngram: int = 0):
        lines = [piece for t in texts for piece in t.splitlines()]
        clean = normalize_array(pa.array(lines, pa.string()))
        clean = pc.filter(clean, pc.greater(pc.binary_length(clean), 0)) if len(clean) else clean
        hi, lo = line_hashes(clean)
        self.hi = np.unique(hi)
        self.full = {(int(a) << 64) | int(b) for a, b in zip(hi, lo)}
        self.ngram = ngram
        self.grams = np.unique(ngram_hashes(clean, ngram)[0]) if ngram and len(clean) else np.zeros(0, np.uint64)
        self.lines = len(self.full)

    def exact(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        hit = np.isin(hi, self.hi)
        for i in np.flatnonzero(hit):  # confirm on the full 128 bits (rare: only true leaks get here)
            hit[i] = ((int(hi[i]) << 64) | int(lo[i])) in self.full
        return hit

    def shares_ngram(self, text: pa.Array) -> np.ndarray:
        out = np.zeros(len(text), dtype=bool)
        if self.ngram and len(self.grams) and len(text):
            grams, line = ngram_hashes(text, self.ngram)
            out[line[np.isin(grams, self.grams)]] = True
        return out


# --- the three passes ----------------------------------------------------------------------------------------


class _Buckets:
    """(hash, sequence number) entries appended to BUCKETS files by the hash's top byte."""

    def __init__(self, folder: Path):
        self.paths = [folder / f"bucket-{i:03d}.bin" for i in range(BUCKETS)]
        self.files = [open(p, "wb") for p in self.paths]

    def add(self, hi: np.ndarray, lo: np.ndarray, first_seq: int) -> None:
        entries = np.empty(len(hi), _ENTRY)
        entries["hi"], entries["lo"] = hi, lo
        entries["seq"] = np.arange(first_seq, first_seq + len(hi), dtype=np.uint64)
        bucket = (hi >> np.uint64(56)).astype(np.int64)
        order = np.argsort(bucket, kind="stable")
        bounds = np.searchsorted(bucket[order], np.arange(BUCKETS + 1))
        entries = entries[order]
        for b in np.flatnonzero(np.diff(bounds)):
            self.files[b].write(entries[bounds[b]:bounds[b + 1]].tobytes())

    def close(self) -> None:
        for f in self.files:
            f.close()


def _mark_duplicates(buckets: _Buckets, dup: np.ndarray) -> None:
    """Set dup[seq] for every line whose hash occurred at a lower sequence number."""
    for path in buckets.paths:
        e = np.fromfile(path, dtype=_ENTRY)
        if len(e) < 2:
            continue
        e = e[np.lexsort((e["lo"], e["hi"]))]  # stable: equal hashes stay in sequence order
        again = (e["hi"][1:] == e["hi"][:-1]) & (e["lo"][1:] == e["lo"][:-1])
        dup[e["seq"][1:][again].astype(np.int64)] = 1
        path.unlink()


def _source_key(source: str) -> int:
    return xxhash.xxh3_64_intdigest(source.encode("utf-8")) >> 1  # fits an int64 key


def split_corpus(params: SplitParams, out_dir: Path, seed: int, leak_texts: Iterable[str] = (),
                 root: Path = Path(".")) -> dict:
    """Write `train-*.arrow` and `val-*.arrow` line shards into `out_dir`; return the stats."""
    files = expand_inputs(params.inputs, root)
    leaks = Leaks(leak_texts, params.leak_ngram)
    work = out_dir / ".split-work"
    work.mkdir()
    try:
        counts: Counter[str] = Counter()
        spill_path, buckets = work / "spill.arrow", _Buckets(work)
        seq, empty_files, bytes_in = 0, 0, 0
        bar = tqdm(desc="split: read", unit=" lines", unit_scale=True, disable=None)  # no bar unless a terminal
        with pa.ipc.new_stream(str(spill_path), _SPILL_SCHEMA) as spill, bar:
            for path in files:
                source = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
                key, before = _source_key(source), counts["lines_in"]
                bytes_in += path.stat().st_size
                for batch in read_batches(path, params.text_field, params.encoding_errors, params.bad_records,
                                          counts):
                    bar.update(len(batch.text))
                    kept, hi, lo = _filter(batch, params, leaks, counts)
                    if not len(kept.text):
                        continue
                    val = uniform(seed, key, kept.doc) < params.val_fraction
                    spill.write_batch(pa.record_batch(
                        [kept.text, pa.repeat(pa.scalar(source), len(kept.text)), pa.array(kept.line_no),
                         pa.array(kept.doc), pa.array(kept.section), pa.array(val)], schema=_SPILL_SCHEMA))
                    buckets.add(hi, lo, seq)
                    seq += len(hi)
                empty_files += counts["lines_in"] == before
        buckets.close()
        dup = np.lib.format.open_memmap(work / "dup.npy", mode="w+", dtype=np.uint8, shape=(max(seq, 1),))
        _mark_duplicates(buckets, dup)
        counts["duplicate"] = int(dup[:seq].sum())
        out = _write(spill_path, dup, out_dir, params.shard_lines)
        del dup
    finally:
        shutil.rmtree(work, ignore_errors=True)
    stats = {
        "files": len(files),
        "empty_files": int(empty_files),
        "bytes_in": int(bytes_in),
        "lines_in": int(counts["lines_in"]),
        "blank_lines": int(counts["blank_lines"]),
        "invalid_utf8_lines": int(counts["invalid_utf8_lines"]),
        "lines_out": out["lines"],
        "documents_out": out["documents"],
        "dropped": {k: int(counts[k]) for k in DROPS if counts[k]},
        "leak_check": {"task_lines": leaks.lines, "ngram": params.leak_ngram},
    }
    for split in ("train", "val"):
        if out["lines"][split] == 0:
            hint = " (raise split.val_fraction or add text)" if split == "val" else ""
            raise InputError(f"{', '.join(params.inputs)}: no {split} lines left after filtering{hint}: "
                             f"{stats['lines_in']} lines in, dropped {stats['dropped']}")
    return stats


def _filter(batch: Batch, params: SplitParams, leaks: Leaks, counts: Counter) -> tuple[Batch, np.ndarray, np.ndarray]:
    """Length filters and the leakage check; counts every line in and every drop reason. Returns the lines kept
    and their hashes (`line_hashes`: the leak check needs them, and so does de-duplication)."""
    n = len(batch.text)
    counts["lines_in"] += n
    length = np.asarray(pc.utf8_length(batch.text), dtype=np.int64)
    short, long = length < params.min_chars, length > params.max_chars
    counts["too_short"] += int(short.sum())
    counts["too_long"] += int(long.sum())
    keep = ~(short | long)
    text = pc.filter(batch.text, pa.array(keep)) if not keep.all() else batch.text
    hi, lo = line_hashes(text)
    leaked = leaks.exact(hi, lo)
    shares = leaks.shares_ngram(text) & ~leaked
    counts["leaked_from_task_dev_test"] += int(leaked.sum())
    counts["leaked_ngram"] += int(shares.sum())
    ok = ~(leaked | shares)
    idx = np.flatnonzero(keep)[ok]
    kept = Batch(pc.filter(text, pa.array(ok)) if not ok.all() else text, batch.line_no[idx], batch.doc[idx],
                 batch.section[idx])
    return kept, hi[ok], lo[ok]


def _write(spill_path: Path, dup: np.ndarray, out_dir: Path, shard_lines: int) -> dict:
    writers = {s: ShardWriter(out_dir, s, LINES_SCHEMA, shard_lines) for s in ("train", "val")}
    last_doc = {s: None for s in writers}
    docs = {s: 0 for s in writers}
    seq = 0
    with pa.ipc.open_stream(pa.OSFile(str(spill_path))) as reader:  # read, not mapped: RSS stays flat
        for batch in reader:
            keep = dup[seq:seq + batch.num_rows] == 0
            seq += batch.num_rows
            batch = batch.filter(pa.array(keep))
            val = np.asarray(batch.column("val"), dtype=bool)
            for split, rows in (("train", ~val), ("val", val)):
                part = batch.filter(pa.array(rows)).select(LINES_SCHEMA.names)
                if part.num_rows == 0:
                    continue
                writers[split].write(part)
                # documents are contiguous runs of (source, doc); a spill batch comes from a single file
                source, doc = part.column("source")[0].as_py(), part.column("doc").to_numpy()
                docs[split] += int((source, doc[0]) != last_doc[split]) + int((doc[1:] != doc[:-1]).sum())
                last_doc[split] = (source, doc[-1])
    lines = {s: w.rows for s, w in writers.items()}
    for w in writers.values():
        w.finish()
    return {"lines": lines, "documents": docs}


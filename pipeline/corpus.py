"""The split stage's core: raw files -> clean, de-duplicated, leakage-free lines, split train/val by document."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
from tqdm.auto import tqdm

from pipeline.config import SplitParams
from pipeline.shards import ShardWriter
from pipeline.text import expand_inputs, normalize, read_lines

LINES_SCHEMA = pa.schema(
    [("text", pa.string()), ("source", pa.string()), ("line_no", pa.int64()), ("doc", pa.int64())]
)
BATCH = 4096


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()


def _unit(seed: int, *key: object) -> float:
    """A uniform number in [0, 1) that depends only on (seed, key): stable across runs and machines."""
    h = hashlib.blake2b(repr((seed, *key)).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64


def split_corpus(
    params: SplitParams, out_dir: Path, seed: int, leak_texts: Iterable[str] = (), root: Path = Path(".")
) -> dict:
    """Write `train-*.arrow` and `val-*.arrow` line shards into `out_dir`; return the stats."""
    files = expand_inputs(params.inputs, root)
    # Lines of the downstream dev/test texts, normalized the same way: the corpus must not contain them.
    leaked = {_digest(n) for t in leak_texts for piece in t.splitlines() if (n := normalize(piece))}
    # TODO(issue 3): an in-memory set of 8-byte digests is fine for millions of lines, not for 100 GB.
    seen: set[bytes] = set()
    drops: Counter[str] = Counter()
    writers = {s: ShardWriter(out_dir, s, LINES_SCHEMA, rows_per_shard=1_000_000) for s in ("train", "val")}
    buffers: dict[str, list[tuple]] = {"train": [], "val": []}
    lines_in = 0

    def flush(split: str) -> None:
        if buffers[split]:
            writers[split].write(pa.Table.from_pylist(
                [dict(zip(LINES_SCHEMA.names, row)) for row in buffers[split]], LINES_SCHEMA))
            buffers[split].clear()

    for path in tqdm(files, desc="split", unit="file", disable=len(files) < 2):
        source = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
        for line in read_lines(path, params.text_field, params.encoding_errors):
            lines_in += 1
            text = normalize(line.text)
            if len(text) < params.min_chars:
                drops["too_short"] += 1
                continue
            if len(text) > params.max_chars:
                drops["too_long"] += 1
                continue
            digest = _digest(text)
            if digest in leaked:
                drops["leaked_from_task_dev_test"] += 1
                continue
            if digest in seen:
                drops["duplicate"] += 1
                continue
            seen.add(digest)
            split = "val" if _unit(seed, source, line.doc) < params.val_fraction else "train"
            buffers[split].append((text, source, line.line_no, line.doc))
            if len(buffers[split]) >= BATCH:
                flush(split)
    for split in writers:
        flush(split)
        writers[split].finish()
    stats = {
        "files": len(files),
        "lines_in": lines_in,
        "lines_out": {s: w.rows for s, w in writers.items()},
        "dropped": dict(sorted(drops.items())),
    }
    for split, writer in writers.items():
        if writer.rows == 0:
            hint = " (raise split.val_fraction or add text)" if split == "val" else ""
            raise ValueError(f"{', '.join(params.inputs)}: no {split} lines left after filtering{hint}: {stats}")
    return stats

"""Arrow shards: the data contract between stages.

Shards are Arrow IPC *stream* files (`<prefix>-00000.arrow`, ...), the format `datasets.Dataset.from_file`
memory-maps, so a 100 GB corpus costs address space, not RAM.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from pipeline.text import InputError


class MissingShards(InputError, FileNotFoundError):
    """A stage's input shards are not there: one line for the user, and still a FileNotFoundError."""


class ShardWriter:
    """Append record batches; a new shard file starts every `rows_per_shard` rows.

    A shard is written under a hidden temporary name and renamed when complete, so a shard with its final
    name is always whole (the stage's output folder as a whole is renamed into place the same way)."""

    def __init__(self, folder: Path, prefix: str, schema: pa.Schema, rows_per_shard: int):
        self.folder, self.prefix, self.schema, self.rows_per_shard = Path(folder), prefix, schema, rows_per_shard
        self.paths: list[Path] = []
        self.rows = 0
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None
        self._sink: pa.OSFile | None = None
        self._in_shard = 0

    def _tmp(self, path: Path) -> Path:
        return path.with_name(f".{path.name}.tmp")

    def _next_shard(self) -> None:
        self.close()
        path = self.folder / f"{self.prefix}-{len(self.paths):05d}.arrow"
        self.paths.append(path)
        self._sink = pa.OSFile(str(self._tmp(path)), "wb")
        self._writer = pa.ipc.new_stream(self._sink, self.schema)
        self._in_shard = 0

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        table = table.cast(self.schema)
        start = 0
        while start < table.num_rows:
            if self._writer is None or self._in_shard >= self.rows_per_shard:
                self._next_shard()
            take = min(self.rows_per_shard - self._in_shard, table.num_rows - start)
            self._writer.write_table(table.slice(start, take))
            self._in_shard += take
            self.rows += take
            start += take

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
            os.replace(self._tmp(self.paths[-1]), self.paths[-1])
            self._writer = self._sink = None

    def finish(self) -> list[Path]:
        """Close the last shard; an empty split still gets one (empty) shard so readers see the schema."""
        if not self.paths:
            self._next_shard()
        self.close()
        return self.paths


def shard_paths(folder: str | Path, prefix: str) -> list[Path]:
    paths = sorted(Path(folder).glob(f"{prefix}-*.arrow"))
    if not paths:
        raise MissingShards(f"{folder}: no {prefix}-*.arrow shards (did the previous stage run?)")
    return paths


def read_shards(folder: str | Path, prefix: str) -> pa.Table:
    """All shards of one split as one memory-mapped table (zero-copy; nothing is read until used)."""
    tables = []
    for path in shard_paths(folder, prefix):
        try:
            tables.append(pa.ipc.open_stream(pa.memory_map(str(path))).read_all())
        except (pa.ArrowInvalid, OSError) as err:  # shards are renamed into place whole: damaged from outside
            raise InputError(f"{path}: truncated or corrupt Arrow shard ({str(err).splitlines()[0][:100]}); "
                             "`dvc repro` rebuilds it (DVC sees its hash changed)") from None
    return pa.concat_tables(tables)

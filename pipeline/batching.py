"""Batches with little padding: length-sorted buckets, shuffled at the batch level, split evenly over ranks."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import Dataset, Sampler


class LengthBucketSampler(Sampler[list[int]]):
    """Yield lists of row indices of `batch_size` rows of similar length.

    Rows are shuffled, cut into buckets of `bucket_batches` batches, sorted by length inside each bucket, cut
    into batches, and the batches shuffled: each batch pads to its own longest row, which is close to all
    the others. The order is a pure function of (seed, epoch); every rank gets the same number of batches.
    """

    def __init__(self, lengths, batch_size: int, seed: int = 0, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1, bucket_batches: int = 64):
        self.lengths = np.asarray(lengths)
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.rank, self.world_size, self.bucket_batches = rank, world_size, bucket_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at the start of every epoch
        self.epoch = epoch

    def _all_batches(self) -> list[np.ndarray]:
        n = len(self.lengths)
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        bucket = self.batch_size * self.bucket_batches
        batches = []
        for start in range(0, n, bucket):
            idx = order[start:start + bucket]
            idx = idx[np.argsort(self.lengths[idx], kind="stable")]
            batches += [idx[i:i + self.batch_size] for i in range(0, len(idx), self.batch_size)]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __iter__(self):
        batches = self._all_batches()
        per_rank = len(batches) // self.world_size if self.world_size > 1 else len(batches)
        for batch in batches[self.rank::self.world_size][:per_rank]:
            yield batch.tolist()

    def __len__(self) -> int:
        n, bucket = len(self.lengths), self.batch_size * self.bucket_batches
        full, rest = divmod(n, bucket)
        total = full * self.bucket_batches + math.ceil(rest / self.batch_size)
        return total // self.world_size if self.world_size > 1 else total


def pad_lists(column: pa.ChunkedArray | pa.ListArray, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An Arrow list<int> column -> (rows x longest) int64 tensor padded with `pad`, and the length mask."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    offsets = column.offsets.to_numpy()
    values = column.values.slice(offsets[0], offsets[-1] - offsets[0]).to_numpy(zero_copy_only=False)
    lengths = np.diff(offsets)
    width = int(lengths.max()) if len(lengths) else 0
    mask = np.arange(width)[None, :] < lengths[:, None]
    out = np.full(mask.shape, pad, dtype=np.int64)
    out[mask] = values
    return torch.from_numpy(out), torch.from_numpy(mask)


class MaskedLines(Dataset):
    """Masked-LM rows of a (memory-mapped) Arrow table; fetched a whole batch at a time."""

    def __init__(self, table: pa.Table, pad_id: int):
        self.table, self.pad_id = table, pad_id

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        rows = self.table.take(pa.array(indices, type=pa.int64()))
        input_ids, attention_mask = pad_lists(rows.column("input_ids"), self.pad_id)
        labels, _ = pad_lists(rows.column("labels"), -100)
        return {"input_ids": input_ids, "attention_mask": attention_mask.long(), "labels": labels,
                "line": torch.tensor(rows.column("line").to_numpy())}


def keep_batch(batch):
    """collate_fn for datasets whose __getitems__ already returns a batch."""
    return batch

"""Batches with no padding waste: rows sorted by length, cut under a token budget, shuffled at the batch level.

Padding costs as much compute as real tokens. Sorting every row by length (ties broken by a seeded
permutation) and cutting the sorted run into batches whose padded size, rows x longest row, stays under a
token budget makes each batch nearly pad-free and nearly the same size in tokens. Because the cut depends only
on the sorted lengths, every epoch has the same number of batches of the same shapes; which rows land in which
batch, and the batch order, change with (seed, epoch).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pipeline.masking import MaskSpec, mask_batch


def cut_sorted(lengths: np.ndarray, max_tokens: int, max_rows: int = 0) -> np.ndarray:
    """Batch boundaries for ascending `lengths`: batch b is rows [bounds[b], bounds[b+1]).

    Greedy: each batch takes as many rows as fit rows x longest <= max_tokens (and <= max_rows when set).
    A single row longer than the budget becomes a batch of its own.
    """
    n = len(lengths)
    bounds = [0]
    start = 0
    while start < n:
        # The longest row of [start, end) is lengths[end - 1], so (end - start) * lengths[end - 1] grows with
        # end: binary-search the largest end that fits, at least one row.
        lo = start + 1
        hi = min(n, start + (max_rows or n), start + max(1, max_tokens // max(1, int(lengths[start]))))
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if (mid - start) * int(lengths[mid - 1]) <= max_tokens:
                lo = mid
            else:
                hi = mid - 1
        bounds.append(lo)
        start = lo
    return np.asarray(bounds, dtype=np.int64)


class TokenBudgetSampler(Sampler[list[int]]):
    """Yield lists of row indices whose padded size stays under `max_tokens` (and `max_rows` rows, if set).

    The order is a pure function of (seed, epoch). Under DDP every rank gets the same number of batches
    (`len(self)`); the few batches left over when they do not divide evenly change from epoch to epoch.
    `state_dict` / `load_state_dict` record the position within the epoch, so a resumed run continues with
    the very batch it would have trained on next. This assumes the DataLoader draws batches only as they are
    used (num_workers=0, which is all this in-process Arrow reader needs).
    """

    def __init__(self, lengths, max_tokens: int, max_rows: int = 0, seed: int = 0, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1, on_epoch: Callable[[int], None] | None = None):
        if max_tokens < 1:
            raise ValueError(f"max_tokens = {max_tokens}: must be >= 1")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.max_tokens, self.max_rows, self.seed, self.shuffle = max_tokens, max_rows, seed, shuffle
        self.rank, self.world_size, self.on_epoch = rank, world_size, on_epoch
        self.epoch = 0
        self.position = 0  # batches yielded so far in this epoch
        self._resume: tuple[int, int] | None = None
        # The batch shapes do not depend on the epoch: cut once.
        self._bounds = cut_sorted(np.sort(self.lengths, kind="stable"), max_tokens, max_rows)

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at the start of every epoch
        self.epoch = epoch
        if self.on_epoch is not None:  # the dataset's dynamic masks follow the epoch
            self.on_epoch(epoch)

    def all_batches(self) -> list[np.ndarray]:
        """Every rank's batches of this epoch, in order (rank r trains on batches r, r + world, ...)."""
        n = len(self.lengths)
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            perm = rng.permutation(n)
            order = perm[np.argsort(self.lengths[perm], kind="stable")]  # sorted by length, random among ties
        else:
            order = np.argsort(self.lengths, kind="stable")
        batches = [order[a:b] for a, b in zip(self._bounds[:-1], self._bounds[1:])]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __len__(self) -> int:
        return (len(self._bounds) - 1) // self.world_size

    def __iter__(self):
        start = 0
        if self._resume is not None:
            epoch, position = self._resume
            self._resume = None
            if epoch == self.epoch:
                start = position
        mine = self.all_batches()[self.rank::self.world_size][:len(self)]
        self.position = start
        for batch in mine[start:]:
            self.position += 1
            yield batch.tolist()

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self._resume = (int(state["epoch"]), int(state["position"]))


class ResumableLoader(DataLoader):
    """A DataLoader whose batch sampler's position Lightning saves in (and restores from) its checkpoints."""

    def state_dict(self) -> dict:
        return self.batch_sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.batch_sampler.load_state_dict(state)


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


@dataclass(frozen=True)
class DynamicMasking:
    """Masks drawn per batch (mask.mode: dynamic): the shards hold unmasked ids, and a row is masked with the
    key (seed, epoch * copies + copy, line) -- a fresh mask every epoch, the same on every rank, in every
    batch composition and after a resume. `copies` is how many copies of each line the shards hold."""

    spec: MaskSpec
    seed: int
    copies: int = 1
    held_out: bool = False  # always epoch 0: held-out lines keep one mask, the same for every model

    @classmethod
    def of_shards(cls, folder: str | Path, seed: int) -> DynamicMasking | None:
        """From the mask stage's stats.json / spec.json; None when the shards hold static masks."""
        folder = Path(folder)
        stats = json.loads((folder / "stats.json").read_text(encoding="utf-8"))
        if stats.get("mode") != "dynamic":
            return None
        spec = MaskSpec.from_json((folder / "spec.json").read_text(encoding="utf-8"))
        return cls(spec, int(stats.get("seed", seed)), int(stats.get("train", {}).get("copies", 1)))

    def __call__(self, rows: pa.Table, epoch: int) -> tuple[pa.ListArray, pa.ListArray]:
        key = 0 if self.held_out else epoch * self.copies
        if self.copies > 1 and "copy" in rows.column_names:
            key = key + rows.column("copy").to_numpy().astype(np.int64)
        words = rows.column("word_ids") if "word_ids" in rows.column_names else None
        return mask_batch(rows.column("input_ids"), rows.column("line").to_numpy(), key, self.seed, self.spec,
                          words)


class MaskedLines(Dataset):
    """Masked-LM rows of a (memory-mapped) Arrow table; fetched a whole batch at a time. With `dynamic`, the
    rows are masked here, for the epoch in `self.epoch` (kept up to date by the sampler)."""

    def __init__(self, table: pa.Table, pad_id: int, dynamic: DynamicMasking | None = None):
        self.table, self.pad_id, self.dynamic = table, pad_id, dynamic
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        rows = self.table.take(pa.array(indices, type=pa.int64()))
        if self.dynamic is not None:
            ids, labels = self.dynamic(rows, self.epoch)
        else:
            ids, labels = rows.column("input_ids"), rows.column("labels")
        input_ids, attention_mask = pad_lists(ids, self.pad_id)
        labels, _ = pad_lists(labels, -100)
        # Token counts as plain ints: they stay on the CPU, so logging them never waits for the GPU.
        return {"input_ids": input_ids, "attention_mask": attention_mask.long(), "labels": labels,
                "line": torch.tensor(rows.column("line").to_numpy()),
                "real_tokens": int(attention_mask.sum()), "padded_tokens": attention_mask.numel()}


def keep_batch(batch):
    """collate_fn for datasets whose __getitems__ already returns a batch."""
    return batch


def masked_loader(table: pa.Table, pad_id: int, max_tokens: int, max_rows: int = 0, seed: int = 0,
                  shuffle: bool = False, rank: int = 0, world_size: int = 1,
                  dynamic: DynamicMasking | None = None) -> ResumableLoader:
    """Token-budget batches of masked shard rows. The loader has its own random generator, so creating one
    does not draw from torch's global generator (which drives dropout): a resumed run draws what an
    uninterrupted one would have."""
    data = MaskedLines(table, pad_id, dynamic)
    sampler = TokenBudgetSampler(table.column("length").to_numpy(), max_tokens, max_rows, seed, shuffle,
                                 rank, world_size, on_epoch=data.set_epoch)
    return ResumableLoader(data, batch_sampler=sampler, collate_fn=keep_batch,
                           generator=torch.Generator().manual_seed(seed))

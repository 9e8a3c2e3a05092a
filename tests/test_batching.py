"""pipeline/batching.py: the length-bucketing sampler, padding of Arrow list columns, the batch dataset."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch.utils.data import DataLoader

from pipeline.batching import LengthBucketSampler, MaskedLines, keep_batch, pad_lists


def skewed_lengths(n: int, seed: int = 0) -> np.ndarray:
    """Mostly short lines with a long tail, like real text: lognormal, clipped to 3..512."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(mean=3.0, sigma=0.8, size=n), 3, 512).astype(np.int64)


def batches_of(sampler) -> list[list[int]]:
    return [list(b) for b in sampler]


@pytest.mark.parametrize("n, batch_size, bucket_batches", [(1000, 32, 4), (1001, 32, 4), (7, 3, 64), (64, 8, 8),
                                                           (5, 10, 2), (129, 1, 5)])
def test_every_index_exactly_once_per_epoch(n, batch_size, bucket_batches):
    sampler = LengthBucketSampler(skewed_lengths(n), batch_size, seed=3, bucket_batches=bucket_batches)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        batches = batches_of(sampler)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(n))
        assert all(1 <= len(b) <= batch_size for b in batches)
        assert sum(len(b) < batch_size for b in batches) <= 1  # only the very last cut can be short
        assert all(isinstance(i, int) for i in flat)


def test_deterministic_for_seed_and_epoch_and_different_across_epochs():
    lengths = skewed_lengths(2000)
    a = LengthBucketSampler(lengths, 16, seed=5)
    b = LengthBucketSampler(lengths, 16, seed=5)
    a.set_epoch(2)
    b.set_epoch(2)
    assert batches_of(a) == batches_of(b)
    assert batches_of(a) == batches_of(a)  # iterating again gives the same epoch
    b.set_epoch(3)
    assert batches_of(a) != batches_of(b)
    c = LengthBucketSampler(lengths, 16, seed=6)
    c.set_epoch(2)
    assert batches_of(a) != batches_of(c)


def test_no_shuffle_keeps_bucket_order():
    lengths = np.array([5, 3, 9, 1, 7, 7, 2, 8, 4, 6])
    sampler = LengthBucketSampler(lengths, batch_size=2, shuffle=False, bucket_batches=2)  # buckets of 4 rows
    # bucket 0 = rows 0-3 sorted by length, bucket 1 = rows 4-7 (stable for the tie 4/5), bucket 2 = rows 8-9
    assert batches_of(sampler) == [[3, 1], [0, 2], [6, 4], [5, 7], [8, 9]]
    sampler.set_epoch(7)
    assert batches_of(sampler) == [[3, 1], [0, 2], [6, 4], [5, 7], [8, 9]]  # the epoch does not matter


def test_no_shuffle_covers_everything_in_order_of_buckets():
    lengths = skewed_lengths(1000)
    sampler = LengthBucketSampler(lengths, batch_size=10, shuffle=False, bucket_batches=10)
    flat = [i for b in sampler for i in b]
    assert sorted(flat) == list(range(1000))
    for start in range(0, 1000, 100):
        chunk = flat[start:start + 100]
        assert sorted(chunk) == list(range(start, start + 100))
        assert list(lengths[chunk]) == sorted(lengths[chunk])


@pytest.mark.parametrize("n, batch_size", [(1000, 32), (1001, 7), (33, 4), (10, 4)])
def test_two_ranks_same_batch_count_disjoint_indices(n, batch_size):
    lengths = skewed_lengths(n)
    ranks = [LengthBucketSampler(lengths, batch_size, seed=1, rank=r, world_size=2, bucket_batches=4)
             for r in (0, 1)]
    for s in ranks:
        s.set_epoch(4)
    got = [batches_of(s) for s in ranks]
    assert len(got[0]) == len(got[1]) == len(ranks[0]) == len(ranks[1])
    flat = [{i for b in g for i in b} for g in got]
    assert not flat[0] & flat[1]
    total = LengthBucketSampler(lengths, batch_size, seed=1, bucket_batches=4)
    assert len(got[0]) == len(total) // 2
    # together they cover all but at most one batch of the single-process epoch
    assert n - len(flat[0] | flat[1]) <= batch_size


@pytest.mark.parametrize("n", [0, 1, 5, 63, 64, 65, 200, 257, 1000, 1024, 1025])
@pytest.mark.parametrize("batch_size, bucket_batches", [(8, 4), (5, 3), (64, 64), (1, 2)])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_len_equals_number_of_batches(n, batch_size, bucket_batches, world_size):
    lengths = skewed_lengths(n)
    counts = []
    for rank in range(world_size):
        s = LengthBucketSampler(lengths, batch_size, seed=0, rank=rank, world_size=world_size,
                                bucket_batches=bucket_batches)
        counts.append(len(batches_of(s)))
        assert len(s) == counts[-1]
    assert len(set(counts)) == 1


def padding_fraction(lengths: np.ndarray, batches) -> float:
    padded = sum(len(b) * lengths[b].max() for b in batches)
    return 1 - lengths.sum() / padded


def test_bucketing_reduces_padding_on_skewed_lengths():
    lengths = skewed_lengths(20_000)
    sampler = LengthBucketSampler(lengths, 32, seed=0)
    bucketed = padding_fraction(lengths, [np.array(b) for b in sampler])
    order = np.random.default_rng(1).permutation(len(lengths))
    random = padding_fraction(lengths, [order[i:i + 32] for i in range(0, len(order), 32)])
    assert random > 0.6  # a random batch pads to its longest, usually tail, row
    assert bucketed < 0.15
    assert bucketed < random / 5


# --- pad_lists / MaskedLines ---------------------------------------------------------------------------------


def test_pad_lists_values_and_mask():
    col = pa.array([[1, 2, 3], [4], [], [5, 6]], type=pa.list_(pa.int32()))
    ids, mask = pad_lists(col, pad=-7)
    assert ids.dtype == torch.int64 and mask.dtype == torch.bool
    assert ids.tolist() == [[1, 2, 3], [4, -7, -7], [-7, -7, -7], [5, 6, -7]]
    assert mask.tolist() == [[True, True, True], [True, False, False], [False, False, False], [True, True, False]]


def test_pad_lists_sliced_array_with_nonzero_offsets():
    col = pa.array([[9, 9], [1, 2, 3], [4], [5, 6, 7, 8], [0]], type=pa.list_(pa.int32()))
    sliced = col.slice(1, 3)
    assert sliced.offsets[0].as_py() == 2  # the slice really starts inside the values buffer
    ids, mask = pad_lists(sliced, pad=0)
    assert ids.tolist() == [[1, 2, 3, 0], [4, 0, 0, 0], [5, 6, 7, 8]]
    assert mask.sum(1).tolist() == [3, 1, 4]


def test_pad_lists_chunked_array():
    chunked = pa.chunked_array([pa.array([[1], [2, 3]]).slice(1), pa.array([[4, 5, 6]])])
    ids, mask = pad_lists(chunked, pad=-100)
    assert ids.tolist() == [[2, 3, -100], [4, 5, 6]]
    assert mask.tolist() == [[True, True, False], [True, True, True]]


def test_pad_lists_empty_column():
    ids, mask = pad_lists(pa.array([], type=pa.list_(pa.int32())), pad=0)
    assert tuple(ids.shape) == (0, 0) and tuple(mask.shape) == (0, 0)


def masked_table() -> pa.Table:
    return pa.table({
        "input_ids": pa.array([[2, 10, 3], [2, 4, 11, 12, 3], [2, 4, 3], [2, 13, 14, 3]], type=pa.list_(pa.int32())),
        "labels": pa.array([[-100, 10, -100], [-100, 20, -100, -100, -100], [-100, 30, -100],
                            [-100, -100, 14, -100]], type=pa.list_(pa.int32())),
        "length": pa.array([3, 5, 3, 4], type=pa.int32()),
        "line": pa.array([7, 8, 9, 10], type=pa.int64()),
    })


def test_masked_lines_batch():
    data = MaskedLines(masked_table(), pad_id=0)
    assert len(data) == 4
    batch = data.__getitems__([3, 0])
    assert batch["input_ids"].tolist() == [[2, 13, 14, 3], [2, 10, 3, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["attention_mask"].dtype == torch.int64
    assert batch["labels"].tolist() == [[-100, -100, 14, -100], [-100, 10, -100, -100]]
    assert batch["line"].tolist() == [10, 7]


def test_masked_lines_through_a_dataloader_with_the_sampler():
    table = masked_table()
    sampler = LengthBucketSampler(table.column("length").to_numpy(), batch_size=2, shuffle=False)
    loader = DataLoader(MaskedLines(table.slice(0), pad_id=0), batch_sampler=sampler, collate_fn=keep_batch)
    batches = list(loader)
    assert [b["line"].tolist() for b in batches] == [[7, 9], [10, 8]]
    assert [tuple(b["input_ids"].shape) for b in batches] == [(2, 3), (2, 5)]
    assert int(batches[1]["attention_mask"].sum()) == 9

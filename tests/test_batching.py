"""pipeline/batching.py: the length-bucketing sampler, padding of Arrow list columns, the batch dataset."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch.utils.data import DataLoader

from pipeline.batching import (MaskedLines, TokenBudgetSampler, cut_sorted, keep_batch, masked_loader,
                               pad_lists)


def skewed_lengths(n: int, seed: int = 0) -> np.ndarray:
    """Mostly short lines with a long tail, like real text: lognormal, clipped to 3..512."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(mean=3.0, sigma=0.8, size=n), 3, 512).astype(np.int64)


def batches_of(sampler) -> list[list[int]]:
    return [list(b) for b in sampler]


def padded(lengths: np.ndarray, batch) -> int:
    return len(batch) * int(lengths[batch].max())


@pytest.mark.parametrize("n, max_tokens, max_rows", [(1000, 256, 0), (1001, 300, 16), (7, 64, 0), (64, 40, 3),
                                                     (5, 10_000, 0), (129, 600, 1), (300, 100, 0)])
def test_every_index_once_per_epoch_under_the_budget(n, max_tokens, max_rows):
    lengths = skewed_lengths(n)
    sampler = TokenBudgetSampler(lengths, max_tokens, max_rows, seed=3)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        batches = batches_of(sampler)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(n))
        assert all(isinstance(i, int) for i in flat)
        for b in batches:
            assert padded(lengths, b) <= max_tokens or len(b) == 1  # a row over the budget goes alone
            assert not max_rows or len(b) <= max_rows


def test_cut_is_greedy_and_maximal():
    lengths = np.sort(skewed_lengths(500, seed=2))
    bounds = cut_sorted(lengths, 200, max_rows=20)
    assert bounds[0] == 0 and bounds[-1] == 500 and np.all(np.diff(bounds) >= 1)
    for a, b in zip(bounds[:-1], bounds[1:]):
        fits = (b - a) * lengths[b - 1] <= 200 or b - a == 1
        one_more = b < 500 and b - a < 20 and (b + 1 - a) * lengths[b] <= 200
        assert fits and not one_more
    assert cut_sorted(np.array([5, 50, 500]), 100).tolist() == [0, 2, 3]  # 2 x 50 fits; 500 goes alone
    assert cut_sorted(np.array([5, 50, 500]), 99).tolist() == [0, 1, 2, 3]
    assert cut_sorted(np.array([], dtype=np.int64), 100).tolist() == [0]


def test_deterministic_for_seed_and_epoch_and_same_shapes_every_epoch():
    lengths = skewed_lengths(2000)
    a = TokenBudgetSampler(lengths, 512, seed=5)
    b = TokenBudgetSampler(lengths, 512, seed=5)
    a.set_epoch(2)
    b.set_epoch(2)
    assert batches_of(a) == batches_of(b)
    assert batches_of(a) == batches_of(a)  # iterating again gives the same epoch
    b.set_epoch(3)
    assert batches_of(a) != batches_of(b)
    c = TokenBudgetSampler(lengths, 512, seed=6)
    c.set_epoch(2)
    assert batches_of(a) != batches_of(c)

    def shapes(s):
        return sorted((len(x), int(lengths[x].max())) for x in batches_of(s))

    assert shapes(a) == shapes(b) == shapes(c)  # only which rows and the order change: len() is exact
    assert len(a) == len(batches_of(a))


def test_no_shuffle_is_sorted_by_length_whatever_the_epoch():
    lengths = np.array([5, 3, 9, 1, 7, 7, 2, 8, 4, 6])
    sampler = TokenBudgetSampler(lengths, max_tokens=16, shuffle=False)
    got = batches_of(sampler)
    # sorted lengths 1 2 3 4 | 5 6 | 7 7 | 8 | 9: four rows of <= 4 tokens fit 16, five rows of 5 would not
    assert got == [[3, 6, 1, 8], [0, 9], [4, 5], [7], [2]]
    sampler.set_epoch(7)
    assert batches_of(sampler) == got


@pytest.mark.parametrize("n, max_tokens", [(1000, 200), (1001, 77), (33, 40), (10, 30)])
@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_get_the_same_number_of_disjoint_batches(n, max_tokens, world_size):
    lengths = skewed_lengths(n)
    ranks = [TokenBudgetSampler(lengths, max_tokens, seed=1, rank=r, world_size=world_size)
             for r in range(world_size)]
    for s in ranks:
        s.set_epoch(4)
    got = [batches_of(s) for s in ranks]
    assert len({len(g) for g in got}) == 1 and len(got[0]) == len(ranks[0])
    sets = [{i for b in g for i in b} for g in got]
    assert sum(len(x) for x in sets) == len(set().union(*sets))  # disjoint
    single = TokenBudgetSampler(lengths, max_tokens, seed=1)
    single.set_epoch(4)
    everything = batches_of(single)
    assert len(got[0]) == len(everything) // world_size
    # rank r trains on batches r, r + world, ... of the one-process epoch; fewer than world_size are left over
    assert got[1] == everything[1::world_size][:len(got[1])]
    assert len(everything) - world_size * len(got[0]) < world_size


def test_resume_mid_epoch_continues_with_the_next_batch():
    lengths = skewed_lengths(3000)
    full = TokenBudgetSampler(lengths, 300, seed=9)
    full.set_epoch(1)
    expected = batches_of(full)
    first = TokenBudgetSampler(lengths, 300, seed=9)
    first.set_epoch(1)
    it = iter(first)
    seen = [next(it) for _ in range(7)]
    state = first.state_dict()
    assert state == {"epoch": 1, "position": 7}
    again = TokenBudgetSampler(lengths, 300, seed=9)
    again.load_state_dict(state)
    again.set_epoch(1)
    assert seen + batches_of(again) == expected
    assert batches_of(again) == expected  # the skip applies to the first pass only
    other = TokenBudgetSampler(lengths, 300, seed=9)
    other.load_state_dict(state)
    other.set_epoch(2)  # a state from another epoch does not skip anything
    assert len(batches_of(other)) == len(expected)


def test_resumable_loader_hands_the_state_through():
    table = masked_table()
    loader = masked_loader(table, pad_id=0, max_tokens=8, shuffle=True, seed=1)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    assert state["position"] == 1
    rest = [b["line"].tolist() for b in it]
    fresh = masked_loader(table, pad_id=0, max_tokens=8, shuffle=True, seed=1)
    fresh.load_state_dict(state)
    assert [b["line"].tolist() for b in fresh] == rest


@pytest.mark.parametrize("n", [0, 1, 5, 63, 64, 65, 200, 1025])
@pytest.mark.parametrize("max_tokens, max_rows", [(64, 0), (100, 3), (10_000, 64)])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_len_equals_number_of_batches(n, max_tokens, max_rows, world_size):
    lengths = skewed_lengths(n)
    counts = []
    for rank in range(world_size):
        s = TokenBudgetSampler(lengths, max_tokens, max_rows, seed=0, rank=rank, world_size=world_size)
        counts.append(len(batches_of(s)))
        assert len(s) == counts[-1]
    assert len(set(counts)) == 1


def padding_fraction(lengths: np.ndarray, batches) -> float:
    return 1 - lengths.sum() / sum(padded(lengths, b) for b in batches)


def test_token_budget_batches_waste_almost_no_padding_on_skewed_lengths():
    lengths = skewed_lengths(20_000)
    sampler = TokenBudgetSampler(lengths, 2048, seed=0)
    batches = [np.array(b) for b in sampler]
    order = np.random.default_rng(1).permutation(len(lengths))
    rows = int(np.mean([len(b) for b in batches]))
    random = padding_fraction(lengths, [order[i:i + rows] for i in range(0, len(order), rows)])
    assert random > 0.6  # a random batch pads to its longest, usually tail, row
    assert padding_fraction(lengths, batches) < 0.03
    # and the batches carry nearly the same number of tokens
    sizes = np.array([lengths[b].sum() for b in batches])
    assert np.median(sizes) > 0.9 * 2048


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
    assert (batch["real_tokens"], batch["padded_tokens"]) == (7, 8)  # plain ints, for logging without a sync
    assert batch["labels"].tolist() == [[-100, -100, 14, -100], [-100, 10, -100, -100]]
    assert batch["line"].tolist() == [10, 7]


def test_masked_lines_through_a_dataloader_with_the_sampler():
    table = masked_table()
    loader = masked_loader(table.slice(0), pad_id=0, max_tokens=8)  # sorted by length: rows 0 and 2, then 3, 1
    batches = list(loader)
    assert [b["line"].tolist() for b in batches] == [[7, 9], [10], [8]]
    assert [tuple(b["input_ids"].shape) for b in batches] == [(2, 3), (1, 4), (1, 5)]
    assert int(batches[2]["attention_mask"].sum()) == 5

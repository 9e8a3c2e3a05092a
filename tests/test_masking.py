"""pipeline/masking.py: BERT masking statistics on a >= 1M-token corpus, invariants, and purity."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.masking import IGNORE, MaskSpec, mask_lines, uniform

VOCAB = 1000
SPECIAL = np.array([0, 1, 2, 3, 4])
CLS, SEP, MASK = 2, 3, 4
SPEC = MaskSpec(mask_id=MASK, special_ids=SPECIAL, random_ids=np.arange(5, VOCAB))


def make_corpus(min_tokens: int = 1_000_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Flat token ids and offsets: lines of 10..60 tokens, [CLS] ... [SEP], interior ids drawn from the whole
    vocabulary (so a few special ids -- [PAD], [UNK], [MASK] -- sit inside lines too)."""
    rng = np.random.default_rng(seed)
    n_lines = min_tokens // 35 + 1000
    lengths = rng.integers(10, 61, size=n_lines)
    lengths = lengths[: np.searchsorted(np.cumsum(lengths), min_tokens) + 1]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ids = rng.integers(0, VOCAB, size=offsets[-1]).astype(np.int32)
    ids[offsets[:-1]] = CLS
    ids[offsets[1:] - 1] = SEP
    return ids, offsets


@pytest.fixture(scope="module")
def corpus():
    ids, offsets = make_corpus()
    assert len(ids) >= 1_000_000
    out, labels = mask_lines(ids, offsets, np.arange(len(offsets) - 1), copy=0, seed=1234, spec=SPEC)
    return ids, offsets, out, labels


def test_shapes_and_dtypes(corpus):
    ids, _, out, labels = corpus
    assert out.shape == labels.shape == ids.shape
    assert out.dtype == np.int32 and labels.dtype == np.int32


def test_masked_fraction_of_maskable_tokens(corpus):
    ids, _, _, labels = corpus
    maskable = ~np.isin(ids, SPECIAL)
    chosen = labels != IGNORE
    assert abs(chosen.sum() / maskable.sum() - 0.15) < 0.003


def test_replacement_proportions(corpus):
    ids, _, out, labels = corpus
    chosen = labels != IGNORE
    n = chosen.sum()
    to_mask = chosen & (out == MASK)
    kept = chosen & (out == ids)
    randomized = chosen & (out != MASK) & (out != ids)
    assert to_mask.sum() + kept.sum() + randomized.sum() == n
    assert abs(to_mask.sum() / n - 0.8) < 0.01
    assert abs(randomized.sum() / n - 0.1) < 0.01
    assert abs(kept.sum() / n - 0.1) < 0.01
    # random replacements come from the non-special vocabulary, roughly uniformly
    replaced = out[randomized]
    assert replaced.min() >= 5 and replaced.max() < VOCAB
    counts = np.bincount(replaced, minlength=VOCAB)[5:]
    assert counts.min() > 0 and counts.max() < 4 * counts.mean()


def test_nothing_outside_chosen_changes(corpus):
    ids, _, out, labels = corpus
    not_chosen = labels == IGNORE
    np.testing.assert_array_equal(out[not_chosen], ids[not_chosen])


def test_labels_are_original_ids_where_chosen(corpus):
    ids, _, _, labels = corpus
    chosen = labels != IGNORE
    np.testing.assert_array_equal(labels[chosen], ids[chosen])
    assert set(np.unique(labels[~chosen])) == {IGNORE}


def test_special_tokens_never_chosen(corpus):
    ids, _, _, labels = corpus
    special = np.isin(ids, SPECIAL)
    assert special.sum() > len(ids) * 0.05  # the corpus does contain interior special ids besides CLS/SEP
    assert (labels[special] == IGNORE).all()


def test_every_line_with_a_maskable_token_is_masked(corpus):
    ids, offsets, _, labels = corpus
    starts = offsets[:-1]
    maskable = np.add.reduceat((~np.isin(ids, SPECIAL)).astype(np.int64), starts)
    masked = np.add.reduceat((labels != IGNORE).astype(np.int64), starts)
    assert (masked[maskable > 0] >= 1).all()
    # and no line gets more than it has, nor far more than p * n (k = floor(p*n + u) <= ceil(p*n))
    assert (masked <= maskable).all()
    assert (masked <= np.maximum(np.ceil(0.15 * maskable), 1)).all()


def test_line_without_maskable_tokens_gets_nothing():
    ids = np.array([CLS, SEP, CLS, 1, 0, SEP, CLS, 10, SEP], dtype=np.int32)
    offsets = np.array([0, 2, 6, 9])
    out, labels = mask_lines(ids, offsets, np.arange(3), 0, 0, SPEC)
    np.testing.assert_array_equal(labels[:6], IGNORE)
    np.testing.assert_array_equal(out[:6], ids[:6])
    assert labels[7] == 10 and (labels[[6, 8]] == IGNORE).all()  # a single maskable token is always chosen


def test_purity_a_slice_masks_like_the_full_batch(corpus):
    ids, offsets, out, labels = corpus
    a, b = offsets[100], offsets[200]
    sub_out, sub_labels = mask_lines(ids[a:b], offsets[100:201] - a, np.arange(100, 200), 0, 1234, SPEC)
    np.testing.assert_array_equal(sub_out, out[a:b])
    np.testing.assert_array_equal(sub_labels, labels[a:b])


def test_line_index_not_batch_position_drives_the_mask(corpus):
    """The same tokens under a different global line index get a different mask."""
    ids, offsets, _, labels = corpus
    a, b = offsets[100], offsets[200]
    _, shifted = mask_lines(ids[a:b], offsets[100:201] - a, np.arange(100, 200) + 1_000_000, 0, 1234, SPEC)
    assert not np.array_equal(shifted, labels[a:b])


@pytest.mark.parametrize("copy, seed", [(1, 1234), (0, 1235)])
def test_different_copy_or_seed_gives_a_different_mask(corpus, copy, seed):
    ids, offsets, _, labels = corpus
    n = 2000
    sub = slice(0, offsets[n])
    _, other = mask_lines(ids[sub], offsets[: n + 1], np.arange(n), copy, seed, SPEC)
    same_pos = (other != IGNORE) & (labels[sub] != IGNORE)
    chosen = (labels[sub] != IGNORE).sum()
    # independent masks overlap on about p = 15% of the chosen positions, not on all of them
    assert same_pos.sum() / chosen < 0.3
    assert abs((other != IGNORE).sum() / chosen - 1) < 0.05  # same rate


def test_deterministic_across_calls(corpus):
    ids, offsets, out, labels = corpus
    sub = slice(0, offsets[500])
    out2, labels2 = mask_lines(ids[sub].copy(), offsets[:501].copy(), np.arange(500), 0, 1234, SPEC)
    np.testing.assert_array_equal(out2, out[sub])
    np.testing.assert_array_equal(labels2, labels[sub])


def test_input_is_not_modified():
    ids, offsets = make_corpus(min_tokens=5000, seed=3)
    before = ids.copy()
    mask_lines(ids, offsets, np.arange(len(offsets) - 1), 0, 0, SPEC)
    np.testing.assert_array_equal(ids, before)


def test_spec_proportions_are_honoured():
    ids, offsets = make_corpus(min_tokens=200_000, seed=5)
    spec = MaskSpec(mask_id=MASK, special_ids=SPECIAL, random_ids=np.arange(5, VOCAB), probability=0.3,
                    mask_replace=1.0, random_replace=0.0)
    out, labels = mask_lines(ids, offsets, np.arange(len(offsets) - 1), 0, 7, spec)
    chosen = labels != IGNORE
    assert abs(chosen.sum() / (~np.isin(ids, SPECIAL)).sum() - 0.3) < 0.005
    assert (out[chosen] == MASK).all()


def test_uniform_range_and_determinism():
    keys = np.arange(200_000)
    u = uniform(7, keys, 3)
    assert u.dtype == np.float64 and u.shape == keys.shape
    assert u.min() >= 0.0 and u.max() < 1.0
    np.testing.assert_array_equal(u, uniform(7, keys, 3))
    assert abs(u.mean() - 0.5) < 0.005
    hist = np.histogram(u, bins=10, range=(0, 1))[0] / len(u)
    assert np.abs(hist - 0.1).max() < 0.005
    # any key changing changes the values
    assert not np.array_equal(u, uniform(8, keys, 3))
    assert not np.array_equal(u, uniform(7, keys, 4))
    assert (uniform(7, keys, 3) != uniform(7, keys + 1, 3)).mean() > 0.999
    # negative keys are fine, and a scalar key broadcasts
    v = uniform(1, -1, np.arange(5))
    assert v.shape == (5,) and ((0 <= v) & (v < 1)).all()
    assert float(uniform(1, 2)) == float(uniform(1, 2))


def test_uniform_broadcasts_like_elementwise_calls():
    a, b = np.arange(6).reshape(2, 3), np.array([10, 20, 30])
    grid = uniform(5, a, b)
    assert grid.shape == (2, 3)
    assert grid[1, 2] == uniform(5, 5, 30)
    assert grid[0, 1] == uniform(5, 1, 20)

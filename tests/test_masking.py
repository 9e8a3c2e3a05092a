"""pipeline/masking.py: BERT masking statistics on a >= 1M-token corpus, invariants, and purity."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipeline.masking import IGNORE, MaskSpec, mask_batch, mask_lines, targets, uniform

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


# --- whole-word masking --------------------------------------------------------------------------------------

WWM = MaskSpec(mask_id=MASK, special_ids=SPECIAL, random_ids=np.arange(5, VOCAB), whole_word=True)


def make_words(ids: np.ndarray, offsets: np.ndarray, seed: int = 0) -> np.ndarray:
    """Word ids per token: words of 1-4 pieces, numbered from 0 in each line; -1 on [CLS]/[SEP]."""
    rng = np.random.default_rng(seed)
    word_ids = np.full(len(ids), -1, dtype=np.int32)
    for a, b in zip(offsets[:-1], offsets[1:]):
        sizes = rng.integers(1, 5, size=b - a)
        word_ids[a + 1:b - 1] = np.repeat(np.arange(len(sizes)), sizes)[: b - a - 2]
    return word_ids


@pytest.fixture(scope="module")
def words_corpus():
    ids, offsets = make_corpus(seed=11)
    word_ids = make_words(ids, offsets)
    out, labels = mask_lines(ids, offsets, np.arange(len(offsets) - 1), 0, 99, WWM, word_ids)
    return ids, offsets, word_ids, out, labels


def word_groups(offsets, word_ids):
    """(line, word id) -> a group number per token, -1 for tokens outside words."""
    line = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    return np.where(word_ids >= 0, line * 10_000 + word_ids, -1)


def test_whole_word_never_masks_part_of_a_word(words_corpus):
    ids, offsets, word_ids, _, labels = words_corpus
    assert len(ids) >= 1_000_000
    group = word_groups(offsets, word_ids)
    chosen = labels != IGNORE
    inside = group >= 0
    g, inv = np.unique(group[inside], return_inverse=True)
    chosen_per_word = np.bincount(inv, weights=chosen[inside])
    size = np.bincount(inv)
    partial = (chosen_per_word > 0) & (chosen_per_word < size)
    # a word holding a special id (the corpus has interior [UNK]/[PAD]/[MASK]) is never chosen
    has_special = np.bincount(inv, weights=np.isin(ids[inside], SPECIAL)) > 0
    assert not partial.any(), f"{partial.sum()} words partly masked"
    assert chosen_per_word[has_special].sum() == 0
    assert (chosen_per_word == size).sum() > 50_000  # many words were masked, whole


def test_whole_word_masked_fraction_and_split(words_corpus):
    ids, offsets, word_ids, out, labels = words_corpus
    target = ~np.isin(ids, SPECIAL)
    chosen = labels != IGNORE
    # words free of special ids are the targets; the expected count per line is p * targets
    group = word_groups(offsets, word_ids)
    inside = group >= 0
    _, inv = np.unique(group[inside], return_inverse=True)
    clean = (np.bincount(inv, weights=np.isin(ids[inside], SPECIAL)) == 0)[inv]
    ok = np.zeros(len(ids), bool)
    ok[np.flatnonzero(inside)[clean]] = True
    assert (chosen & ~ok).sum() == 0 and (chosen & ~target).sum() == 0
    # Unbiased wherever the one-word-at-least rule cannot bind (p * targets >= the longest word, 4 pieces);
    # on shorter lines a first word longer than the budget is still taken, so overall it is a little above p.
    line = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    n_ok = np.bincount(line, weights=ok, minlength=len(offsets) - 1)
    long = (0.15 * n_ok >= 4)[line]
    assert long.sum() > 500_000
    assert abs(chosen[long].sum() / ok[long].sum() - 0.15) < 0.003
    assert 0.15 < chosen.sum() / ok.sum() < 0.165
    n = chosen.sum()
    assert abs((chosen & (out == MASK)).sum() / n - 0.8) < 0.01
    assert abs((chosen & (out == ids)).sum() / n - 0.1) < 0.01


def test_whole_word_every_line_with_a_clean_word_gets_one(words_corpus):
    ids, offsets, word_ids, _, labels = words_corpus
    ok = targets(ids, offsets, WWM, word_ids)
    starts = offsets[:-1]
    has_ok = np.add.reduceat(ok.astype(np.int64), starts) > 0
    masked = np.add.reduceat((labels != IGNORE).astype(np.int64), starts)
    assert (masked[has_ok] >= 1).all() and (masked[~has_ok] == 0).all()


def test_whole_word_is_batch_independent(words_corpus):
    ids, offsets, word_ids, out, labels = words_corpus
    a, b = offsets[300], offsets[700]
    sub_out, sub_labels = mask_lines(ids[a:b], offsets[300:701] - a, np.arange(300, 700), 0, 99, WWM, word_ids[a:b])
    np.testing.assert_array_equal(sub_labels, labels[a:b])
    np.testing.assert_array_equal(sub_out, out[a:b])


def test_whole_word_without_word_ids_is_an_error():
    ids, offsets = make_corpus(min_tokens=100, seed=1)
    with pytest.raises(ValueError, match="word id"):
        mask_lines(ids, offsets, np.arange(len(offsets) - 1), 0, 0, WWM)


def test_single_piece_words_mask_like_tokens_on_average():
    ids, offsets = make_corpus(min_tokens=300_000, seed=4)
    line = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    word_ids = (np.arange(len(ids)) - offsets[line]).astype(np.int32)  # every token its own word
    _, labels = mask_lines(ids, offsets, np.arange(len(offsets) - 1), 0, 5, WWM, word_ids)
    _, token_labels = mask_lines(ids, offsets, np.arange(len(offsets) - 1), 0, 5, SPEC)
    assert abs((labels != IGNORE).sum() / (token_labels != IGNORE).sum() - 1) < 0.01


# --- the collator API and the spec file ----------------------------------------------------------------------


def as_list_array(values: np.ndarray, offsets: np.ndarray) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values.astype(np.int32)))


def test_mask_batch_is_mask_lines_in_arrow(corpus):
    ids, offsets, out, labels = corpus
    n = 3000
    column = as_list_array(ids[: offsets[n]], offsets[: n + 1])
    got_ids, got_labels = mask_batch(column, np.arange(n), 0, 1234, SPEC)
    assert got_ids.type == got_labels.type == pa.list_(pa.int32())
    np.testing.assert_array_equal(got_ids.values.to_numpy(), out[: offsets[n]])
    np.testing.assert_array_equal(got_labels.values.to_numpy(), labels[: offsets[n]])
    np.testing.assert_array_equal(got_ids.offsets.to_numpy(), offsets[: n + 1])


def test_dynamic_epoch_e_is_static_copy_e_on_any_rows(corpus):
    """A collator taking rows in any order, sliced out of a table, gets the stored copy's mask for epoch = copy."""
    ids, offsets, _, _ = corpus
    n = 2000
    table = pa.table({"input_ids": as_list_array(ids[: offsets[n]], offsets[: n + 1]), "line": np.arange(n) + 500})
    rows = np.random.default_rng(0).permutation(n)[:300]
    for epoch in (0, 3):
        full_ids, full_labels = mask_batch(table.column("input_ids"), table.column("line").to_numpy(), epoch, 8, SPEC)
        picked = table.take(pa.array(rows))
        got_ids, got_labels = mask_batch(picked.column("input_ids"), picked.column("line").to_numpy(), epoch, 8,
                                         SPEC)
        assert got_labels.to_pylist() == full_labels.take(pa.array(rows)).to_pylist()
        assert got_ids.to_pylist() == full_ids.take(pa.array(rows)).to_pylist()
    a = mask_batch(table.column("input_ids"), table.column("line").to_numpy(), 0, 8, SPEC)[1]
    b = mask_batch(table.column("input_ids"), table.column("line").to_numpy(), 1, 8, SPEC)[1]
    assert a.to_pylist() != b.to_pylist()


def test_mask_batch_whole_word_uses_word_ids(words_corpus):
    ids, offsets, word_ids, out, labels = words_corpus
    n = 500
    got_ids, got_labels = mask_batch(as_list_array(ids[: offsets[n]], offsets[: n + 1]), np.arange(n), 0, 99, WWM,
                                     word_ids=as_list_array(word_ids[: offsets[n]], offsets[: n + 1]))
    np.testing.assert_array_equal(got_labels.values.to_numpy(), labels[: offsets[n]])


def test_spec_json_round_trip():
    spec = MaskSpec(mask_id=4, special_ids=[0, 1, 2, 3, 4, 77], random_ids=[i for i in range(5, 300) if i != 77],
                    probability=0.2, mask_replace=0.7, random_replace=0.2, whole_word=True)
    text = spec.to_json()
    assert len(text) < 1000  # random ids are stored as ranges
    back = MaskSpec.from_json(text)
    assert back.to_json() == text
    np.testing.assert_array_equal(back.random_ids, spec.random_ids)
    np.testing.assert_array_equal(back.special_ids, spec.special_ids)
    assert (back.mask_id, back.probability, back.whole_word, back.vocab_size) == (4, 0.2, True, 300)
    ids, offsets = make_corpus(min_tokens=20_000, seed=2)
    ids %= 300
    words = make_words(ids, offsets)
    lines = np.arange(len(offsets) - 1)
    for x, y in zip(mask_lines(ids, offsets, lines, 1, 3, spec, words), mask_lines(ids, offsets, lines, 1, 3, back,
                                                                                   words)):
        np.testing.assert_array_equal(x, y)


def test_token_id_outside_the_vocabulary_is_an_error():
    ids = np.array([CLS, 5, VOCAB, SEP])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        mask_lines(ids, np.array([0, 4]), np.arange(1), 0, 0, SPEC)


def test_empty_batch():
    out, labels = mask_lines(np.zeros(0, np.int32), np.array([0]), np.zeros(0, np.int64), 0, 0, SPEC)
    assert out.shape == labels.shape == (0,)


def test_line_longer_than_the_sort_key_allows_is_an_error():
    ids = np.full(5000, 7, dtype=np.int32)
    with pytest.raises(ValueError, match="at most 4096 tokens"):
        mask_lines(ids, np.array([0, 5000]), np.arange(1), 0, 0, SPEC)

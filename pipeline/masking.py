"""BERT's masked-LM corruption as a pure function of (seed, line index, copy).

Randomness comes from hashing those keys (splitmix64), not from a stateful generator, so a line gets the
same mask whatever the batch, shard size or number of worker processes -- and the mask stage, a dynamic
collator and the tests all share this one function.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE = -100  # label of positions that carry no loss (PyTorch's cross-entropy ignore_index)

_M1, _M2, _GOLDEN = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a bijective 64-bit hash with good avalanche."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def uniform(*keys: np.ndarray | int) -> np.ndarray:
    """Uniform floats in [0, 1), one per element of the broadcast keys, a pure function of the keys."""
    with np.errstate(over="ignore"):
        h = np.uint64(0)
        for key in keys:
            h = _mix(h + np.asarray(key).astype(np.uint64) * _GOLDEN + _GOLDEN)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


@dataclass(frozen=True)
class MaskSpec:
    mask_id: int
    special_ids: np.ndarray  # token ids never chosen for prediction (CLS, SEP, PAD, UNK, MASK, ...)
    random_ids: np.ndarray  # candidates for the "random token" replacement (non-special vocabulary)
    probability: float = 0.15
    mask_replace: float = 0.8
    random_replace: float = 0.1


def mask_lines(
    ids: np.ndarray, offsets: np.ndarray, lines: np.ndarray, copy: int, seed: int, spec: MaskSpec
) -> tuple[np.ndarray, np.ndarray]:
    """Mask a batch of tokenized lines stored flat: line i is ids[offsets[i]:offsets[i+1]], global index lines[i].

    Each line with n maskable tokens gets k = max(1, floor(p*n + u)) of them chosen (u uniform per line, so the
    expected share is exactly p for lines with n >= 1/p); chosen tokens become [MASK] / a random token / stay,
    in the spec's proportions. Returns (input_ids, labels), flat like `ids`; labels are IGNORE where not chosen.
    """
    ids = np.asarray(ids)
    n_lines = len(offsets) - 1
    lengths = np.diff(offsets)
    line_of = np.repeat(np.arange(n_lines), lengths)  # batch-local line of each token
    pos = np.arange(len(ids)) - np.repeat(offsets[:-1], lengths)  # position within its line
    key_line = np.repeat(np.asarray(lines, dtype=np.int64), lengths)

    maskable = ~np.isin(ids, spec.special_ids)
    n_maskable = np.bincount(line_of[maskable], minlength=n_lines)
    k = np.floor(spec.probability * n_maskable + uniform(seed, lines, copy, -1, 0)).astype(np.int64)
    k = np.minimum(np.maximum(k, 1), n_maskable)

    # Choose the k maskable tokens of each line with the smallest hash scores (a seeded random subset).
    score = np.where(maskable, uniform(seed, key_line, copy, pos, 1), 2.0)
    order = np.lexsort((score, line_of))
    rank = np.empty_like(order)
    rank[order] = np.arange(len(ids)) - np.repeat(offsets[:-1], lengths)[order]
    chosen = rank < k[line_of]

    labels = np.where(chosen, ids, IGNORE).astype(np.int32)
    r = uniform(seed, key_line, copy, pos, 2)
    to_mask = chosen & (r < spec.mask_replace)
    to_random = chosen & ~to_mask & (r < spec.mask_replace + spec.random_replace)
    out = ids.astype(np.int32, copy=True)
    out[to_mask] = spec.mask_id
    pick = (uniform(seed, key_line, copy, pos, 3) * len(spec.random_ids)).astype(np.int64)
    out[to_random] = spec.random_ids[pick[to_random]]
    return out, labels

"""BERT's masked-LM corruption as a pure function of (seed, line index, copy-or-epoch).

Randomness comes from hashing those keys (splitmix64), not from a stateful generator, so a line gets the
same mask whatever the batch, shard size or number of worker processes. One function serves everything:
the mask stage calls `mask_batch` with the copy index as `epoch` (static masks, stored), a training
collator calls it with the epoch (dynamic masks, `mask.mode: dynamic`), and the tests call both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pyarrow as pa

IGNORE = -100  # label of positions that carry no loss (PyTorch's cross-entropy ignore_index)

_M1, _M2, _GOLDEN = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)
# Distinct streams drawn from one line hash: how many tokens, which units, how each is replaced.
_S_COUNT, _S_SCORE, _S_REPLACE = np.uint64(0x243F6A8885A308D3), np.uint64(0x13198A2E03707344), np.uint64(0xA4093822)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a bijective 64-bit hash with good avalanche."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def hash64(*keys: np.ndarray | int) -> np.ndarray:
    """A 64-bit hash per element of the broadcast integer keys; a pure function of the keys."""
    with np.errstate(over="ignore"):
        h = np.uint64(0)
        for key in keys:
            h = mix64(h + np.asarray(key).astype(np.uint64) * _GOLDEN + _GOLDEN)
    return h


def _unit(h: np.ndarray) -> np.ndarray:
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def uniform(*keys: np.ndarray | int) -> np.ndarray:
    """Uniform floats in [0, 1), one per element of the broadcast keys, a pure function of the keys."""
    return _unit(hash64(*keys))


@dataclass(frozen=True, eq=False)
class MaskSpec:
    """What may be masked and how; `to_json`/`from_json` carry it from the mask stage to a training collator."""

    mask_id: int
    special_ids: np.ndarray  # token ids never chosen for prediction (CLS, SEP, PAD, UNK, MASK, ...)
    random_ids: np.ndarray  # candidates for the "random token" replacement (non-special vocabulary)
    probability: float = 0.15
    mask_replace: float = 0.8
    random_replace: float = 0.1
    whole_word: bool = False  # choose whole words (all their pieces), needs per-token word ids
    vocab_size: int = field(default=0)  # 0: one past the largest id named above

    def __post_init__(self):
        object.__setattr__(self, "special_ids", np.unique(np.asarray(self.special_ids, dtype=np.int64)))
        object.__setattr__(self, "random_ids", np.unique(np.asarray(self.random_ids, dtype=np.int64)))
        if not self.vocab_size:
            top = max(self.mask_id, *self.special_ids.tolist(), *self.random_ids[-1:].tolist())
            object.__setattr__(self, "vocab_size", int(top) + 1)
        if not (0 < self.probability < 1 and 0 <= self.mask_replace and 0 <= self.random_replace
                and self.mask_replace + self.random_replace <= 1):
            raise ValueError(f"MaskSpec: bad proportions {self.probability}, {self.mask_replace}, "
                             f"{self.random_replace}")
        if self.random_replace > 0 and len(self.random_ids) == 0:
            raise ValueError("MaskSpec: random_replace > 0 but no random_ids to draw from")

    @cached_property
    def _special_table(self) -> np.ndarray:
        table = np.zeros(self.vocab_size, dtype=bool)
        table[self.special_ids] = True
        return table

    def is_special(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        if len(ids) and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"token id outside the vocabulary of {self.vocab_size} (range {ids.min()}..{ids.max()})")
        return self._special_table[ids]

    def to_json(self) -> str:
        return json.dumps({
            "mask_id": int(self.mask_id), "special_ids": self.special_ids.tolist(),
            "random_id_ranges": _ranges(self.random_ids), "probability": self.probability,
            "mask_replace": self.mask_replace, "random_replace": self.random_replace,
            "whole_word": self.whole_word, "vocab_size": int(self.vocab_size)}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> MaskSpec:
        d = json.loads(text)
        ranges = d.pop("random_id_ranges")
        random_ids = np.concatenate([np.arange(a, b) for a, b in ranges]) if ranges else np.zeros(0, np.int64)
        return cls(random_ids=random_ids, **d)


def _ranges(ids: np.ndarray) -> list[list[int]]:
    """Sorted ids as [start, stop) runs: a 30k vocabulary minus a few specials is a handful of numbers."""
    if len(ids) == 0:
        return []
    breaks = np.flatnonzero(np.diff(ids) != 1) + 1
    starts, stops = ids[np.r_[0, breaks]], ids[np.r_[breaks - 1, len(ids) - 1]] + 1
    return [[int(a), int(b)] for a, b in zip(starts, stops)]


def _runs(offsets: np.ndarray, word_ids: np.ndarray) -> np.ndarray:
    """Index of each token's unit: a maximal run of equal word id inside one line."""
    new = np.ones(len(word_ids), dtype=bool)
    new[1:] = word_ids[1:] != word_ids[:-1]
    new[offsets[:-1][offsets[:-1] < len(word_ids)]] = True
    return np.cumsum(new) - 1


def targets(ids: np.ndarray, offsets: np.ndarray, spec: MaskSpec, word_ids: np.ndarray | None = None) -> np.ndarray:
    """Which tokens may be chosen: not special; with whole-word masking, only pieces of words that have no
    special piece (an [UNK] word, a [CLS] with word id -1, are never chosen, nor any part of them)."""
    ok = ~spec.is_special(ids)
    if spec.whole_word:
        if word_ids is None:
            raise ValueError("whole-word masking needs the word id of every token")
        word_ids = np.asarray(word_ids)
        ok &= word_ids >= 0
        if len(ids):
            runs = _runs(offsets, word_ids)
            starts = np.flatnonzero(np.r_[True, runs[1:] != runs[:-1]])
            ok = np.minimum.reduceat(ok, starts)[runs]
    return ok


class LineBatch:
    """A batch of tokenized lines stored flat (line i is ids[offsets[i]:offsets[i+1]]), ready to be masked.

    Everything that does not depend on the copy (or epoch) is worked out once here -- which line each token is
    in, its position, which tokens may be chosen, the hash term of each token's key -- so that masking the
    dupe_factor copies of a batch costs one pass each (`mask`), not a full setup each."""

    def __init__(self, ids: np.ndarray, offsets: np.ndarray, spec: MaskSpec, word_ids: np.ndarray | None = None):
        self.ids = np.asarray(ids)
        offsets = np.asarray(offsets, dtype=np.int64)
        self.spec = spec
        n_lines, n = len(offsets) - 1, len(self.ids)
        lengths = np.diff(offsets)
        if n_lines >= 1 << 24 or (n_lines and lengths.max() > 1 << 12):
            raise ValueError(f"mask_lines: at most {1 << 24} lines of at most {1 << 12} tokens in one batch")
        self.line_of = line_of = np.repeat(np.arange(n_lines, dtype=np.int64), lengths)
        self.starts = np.repeat(offsets[:-1], lengths)
        self.pos = pos = np.arange(n, dtype=np.int64) - self.starts
        self.ok = ok = targets(self.ids, offsets, spec, word_ids)
        self.not_ok = np.flatnonzero(~ok)
        self.n_ok = np.bincount(line_of[ok], minlength=n_lines)
        if spec.whole_word:  # a unit is a word; its key is its index within the line (batch-independent)
            self.unit = unit = _runs(offsets, np.asarray(word_ids))
            key = unit - np.repeat(unit[np.minimum(offsets[:-1], max(n - 1, 0))], lengths) if n else unit
            self.unit_len = np.bincount(unit)
        else:
            key = pos
        with np.errstate(over="ignore"):
            self.key_term = (key.astype(np.uint64) + np.uint64(1)) * _GOLDEN
        # (line, position) part of the sort key: 24 + [28 bits of score, per copy] + 12 bits
        self.sort_base = (line_of.astype(np.uint64) << np.uint64(40)) | pos.astype(np.uint64)

    def mask(self, lines: np.ndarray, copy: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, labels) of copy (or epoch) `copy` of the lines, whose global indices are `lines`."""
        spec, ids, pos, n = self.spec, self.ids, self.pos, len(self.ids)
        with np.errstate(over="ignore"):
            h_line = hash64(seed, np.asarray(lines, dtype=np.int64), copy)
            k = np.floor(spec.probability * self.n_ok + _unit(mix64(h_line ^ _S_COUNT))).astype(np.int64)
            k = np.minimum(np.maximum(k, 1), self.n_ok)[self.line_of]
            h_tok = h_line[self.line_of]
            score = h_tok ^ _S_SCORE
            score += self.key_term
            _mix64_inplace(score)
            # Sort by (line, score, position) packed in one key: 24 + 28 + 12 bits. Keys are unique, so any sort
            # algorithm gives the same order (the fastest one may differ between machines); non-targets go last.
            top = score >> np.uint64(36)
            top[self.not_ok] = (1 << 28) - 1
            top <<= np.uint64(12)
            top |= self.sort_base
            order = np.argsort(top)
        rank = pos  # lines stay in place under the sort, so the i-th sorted token of a line has rank i
        if not spec.whole_word:
            chosen_sorted = rank < k
        else:
            unit_s = self.unit[order]
            new_unit = np.r_[True, unit_s[1:] != unit_s[:-1]]
            c = np.maximum.accumulate(np.where(new_unit, np.arange(n), 0)) - self.starts  # tokens ranked before
            unit_len = self.unit_len[unit_s]
            room = k - c
            room_share = (score[order] & np.uint64(0xFFFFFF)).astype(np.float64) / float(1 << 24)
            chosen_sorted = (room >= unit_len) | ((room > 0) & ((c == 0) | (room_share < room / unit_len)))
        where = order[chosen_sorted]
        where = np.sort(where[self.ok[where]])

        labels = np.full(n, IGNORE, dtype=np.int32)
        labels[where] = ids[where]
        out = ids.astype(np.int32, copy=True)
        with np.errstate(over="ignore"):
            h_rep = mix64((h_tok[where] ^ _S_REPLACE) + pos[where].astype(np.uint64) * _GOLDEN)
        r = _unit(h_rep)
        out[where[r < spec.mask_replace]] = spec.mask_id
        to_random = (r >= spec.mask_replace) & (r < spec.mask_replace + spec.random_replace)
        pick = (_unit(mix64(h_rep[to_random])) * len(spec.random_ids)).astype(np.int64)
        out[where[to_random]] = spec.random_ids[pick]
        return out, labels


def _mix64_inplace(x: np.ndarray) -> None:
    """`mix64` overwriting x (a uint64 array): no temporary arrays for the large per-token hashes."""
    x ^= x >> np.uint64(30)
    x *= _M1
    x ^= x >> np.uint64(27)
    x *= _M2
    x ^= x >> np.uint64(31)


def mask_lines(ids: np.ndarray, offsets: np.ndarray, lines: np.ndarray, copy: int, seed: int, spec: MaskSpec,
               word_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mask a batch of tokenized lines stored flat: line i is ids[offsets[i]:offsets[i+1]], global index lines[i].

    Each line with n target tokens (see `targets`) gets k = max(1, floor(p*n + u)) of them chosen (u uniform
    per line, so the expected share is exactly p for lines with n >= 1/p). Token level: the k targets with the
    smallest hash scores. Whole-word: words in hash order while they fit in k; the word that would overflow
    is taken with probability (room left)/(its length), so the expected count is still k and a word is
    always taken whole. Chosen tokens become [MASK] / a random token / stay, in the spec's proportions, each
    token deciding on its own (as BERT's whole-word masking does). Returns (input_ids, labels), flat like
    `ids`; labels are IGNORE where not chosen. `copy` is the copy index (static) or the epoch (dynamic).
    Several copies of one batch: `LineBatch(ids, offsets, spec, word_ids).mask(lines, copy, seed)` per copy.
    """
    return LineBatch(ids, offsets, spec, word_ids).mask(lines, copy, seed)


def flat(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """An Arrow list<int> column -> (values, offsets starting at 0) as numpy, without copying the values."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    offsets = column.offsets.to_numpy()
    values = column.values.slice(offsets[0], offsets[-1] - offsets[0]).to_numpy(zero_copy_only=False)
    return values, offsets - offsets[0]


def mask_batch(input_ids: pa.Array | pa.ChunkedArray, lines: np.ndarray, epoch: int, seed: int, spec: MaskSpec,
               word_ids: pa.Array | pa.ChunkedArray | None = None) -> tuple[pa.ListArray, pa.ListArray]:
    """THE masking call, for the mask stage and for a dynamic-masking collator alike.

    input_ids: the *unmasked* token ids of a batch of rows, an Arrow list<int32> column (e.g.
               `table.take(indices).column("input_ids")` of the train shards in `mask.mode: dynamic`).
    lines:     the rows' `line` column (int64): the line's global index, part of the key.
    epoch:     the epoch (dynamic) or the copy index (static: the stored copy c is exactly epoch c).
    seed:      params.yaml `seed` (the mask stage used the same).
    spec:      `MaskSpec.from_json(open("artifacts/masked/spec.json").read())`.
    word_ids:  the rows' `word_ids` column (list<int32>, -1 for special tokens); needed when
               spec.whole_word, ignored otherwise.
    Returns (masked input_ids, labels) as list<int32> columns with the rows' offsets; labels hold the
    original id where a token is to be predicted and IGNORE (-100) elsewhere. A pure function of
    (seed, epoch, line, the line's tokens): batch composition, order, workers and ranks do not matter.
    """
    ids, offsets = flat(input_ids)
    words = flat(word_ids)[0] if (spec.whole_word and word_ids is not None) else None
    out, labels = mask_lines(ids, offsets, np.asarray(lines), epoch, seed, spec, words)
    off = pa.array(offsets.astype(np.int32))
    return pa.ListArray.from_arrays(off, pa.array(out)), pa.ListArray.from_arrays(off, pa.array(labels))

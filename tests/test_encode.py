"""pipeline/encode.py mask_corpus: split lines -> tokenized, masked Arrow shards, checked against an independent
tokenization, plus statistics and byte-identical output across runs and process counts."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import MaskParams, SplitParams
from pipeline.corpus import split_corpus
from pipeline.encode import MASKED_SCHEMA, mask_corpus, specials_per_line
from pipeline.masking import IGNORE
from pipeline.models import load_tokenizer
from pipeline.shards import read_shards
from tests.conftest import DEMO_CORPUS

MAX_LEN = 32
DUPE = 3
SEED = 17
UNK_ONLY = "漢字 語"  # every word is unknown to the tiny tokenizer: [CLS] [UNK] [UNK] [SEP]
WITH_UNK = "the 漢 song of the 字 bus"


def make_corpus(path: Path) -> None:
    """~2,400 lines of 8-20 demo-corpus words (so > 1,000 training lines: num_proc=2 really forks), in
    documents of 4-10 lines, with a line the tokenizer cannot mask and a line with unknown words."""
    words = DEMO_CORPUS.read_text(encoding="utf-8").split()
    rng = np.random.default_rng(0)
    docs = []
    for _ in range(340):
        docs.append("\n".join(" ".join(rng.choice(words, rng.integers(8, 21))) for _ in range(rng.integers(4, 11))))
    docs[3] += f"\n{UNK_ONLY}\n{WITH_UNK}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")


def sha256_of_arrows(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.arrow"))}


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("encode")
    make_corpus(root / "in" / "corpus.txt")
    lines_dir = root / "lines"
    lines_dir.mkdir()
    split_corpus(SplitParams(inputs=["in/corpus.txt"], val_fraction=0.1), lines_dir, seed=SEED, root=root)
    tokenizer = load_tokenizer(str(tiny_model))
    runs = {}
    for name, num_proc in (("one", 1), ("two", 2), ("again", 1)):
        out = root / "masked" / name
        out.mkdir(parents=True)
        params = MaskParams(max_seq_len=MAX_LEN, dupe_factor=DUPE, shard_lines=1000, num_proc=num_proc)
        runs[name] = (out, mask_corpus(lines_dir, out, tokenizer, params, SEED))
    return root, lines_dir, tokenizer, runs


@pytest.fixture(scope="module")
def reference(work):
    """An independent tokenization of the line shards."""
    _, lines_dir, tokenizer, _ = work
    ref = {}
    for split in ("train", "val"):
        texts = read_shards(lines_dir, split).column("text").to_pylist()
        enc = tokenizer(texts, truncation=True, max_length=MAX_LEN)["input_ids"]
        ref[split] = (texts, enc)
    return ref


def maskable(tokenizer, ids) -> int:
    special = set(tokenizer.all_special_ids)
    return sum(1 for t in ids if t not in special)


def test_schema_and_shard_files(work):
    _, _, _, runs = work
    out, stats = runs["one"]
    train = read_shards(out, "train")
    assert train.schema.equals(MASKED_SCHEMA)
    assert read_shards(out, "val").schema.equals(MASKED_SCHEMA)
    names = sorted(p.name for p in out.glob("*.arrow"))
    n_train = -(-stats["train"]["rows"] // 1000)
    assert names == [f"train-{i:05d}.arrow" for i in range(n_train)] + ["val-00000.arrow"]
    assert stats["train"]["shards"] == n_train >= 3
    assert stats["val"]["shards"] == 1


def test_no_temporary_folder_is_left_behind(work):
    root, _, _, _ = work
    assert not list((root / "masked").glob(".tokenized-*"))
    assert sorted(p.name for p in (root / "masked").iterdir()) == ["again", "one", "two"]


def test_row_counts(work, reference):
    _, _, tokenizer, runs = work
    _, stats = runs["one"]
    for split, copies in (("train", DUPE), ("val", 1)):
        texts, enc = reference[split]
        unmaskable = sum(1 for ids in enc if maskable(tokenizer, ids) == 0)
        s = stats[split]
        assert s["lines"] == len(texts)
        assert s["copies"] == copies
        assert s["lines_without_maskable_token"] == unmaskable
        assert s["rows"] == (len(texts) - unmaskable) * copies
    # the unmaskable line is in exactly one split, and dropped there
    assert stats["train"]["lines_without_maskable_token"] + stats["val"]["lines_without_maskable_token"] == 1
    assert stats["train"]["rows"] > 1000 * 3


def test_rows_match_an_independent_tokenization(work, reference):
    _, _, tokenizer, runs = work
    out, _ = runs["one"]
    for split, copies in (("train", DUPE), ("val", 1)):
        _texts, enc = reference[split]
        table = read_shards(out, split).to_pydict()
        kept = [i for i, ids in enumerate(enc) if maskable(tokenizer, ids) > 0]
        # copy-major: all lines of copy 0, then copy 1, ...
        assert table["line"] == kept * copies
        assert table["copy"] == [c for c in range(copies) for _ in kept]
        for ids, labels, length, line in zip(table["input_ids"], table["labels"], table["length"], table["line"]):
            original = enc[line]
            assert length == len(original) == len(ids) == len(labels) <= MAX_LEN
            chosen = [j for j, lab in enumerate(labels) if lab != IGNORE]
            assert chosen, f"line {line} has nothing to predict"
            assert all(labels[j] == original[j] for j in chosen)
            assert all(ids[j] == original[j] for j in range(len(ids)) if labels[j] == IGNORE)
            assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id


def test_copies_have_different_masks(work):
    _, _, _, runs = work
    out, stats = runs["one"]
    table = read_shards(out, "train")
    n = stats["train"]["rows"] // DUPE
    labels = table.column("labels").to_pylist()
    differ = [labels[i] != labels[i + n] for i in range(n)] + [labels[i + n] != labels[i + 2 * n] for i in range(n)]
    assert np.mean(differ) > 0.8


def test_statistics(work, reference):
    _, _, tokenizer, runs = work
    _, stats = runs["one"]
    assert stats["max_seq_len"] == MAX_LEN and stats["mlm_probability"] == 0.15
    added = specials_per_line(tokenizer)
    assert added == 2
    for split in ("train", "val"):
        texts, enc = reference[split]
        s = stats[split]
        tokens = sum(len(e) for e in enc)
        unk = sum(e.count(tokenizer.unk_token_id) for e in enc)
        words = sum(len(t.split()) for t in texts)
        assert s["tokens"] == tokens
        assert s["unk"] == unk
        assert s["words"] == words
        assert s["unk_rate"] == pytest.approx(unk / tokens)
        assert s["pieces_per_word"] == pytest.approx((tokens - 2 * len(texts)) / words)
        assert s["pieces_per_word"] > 1.0  # a 600-piece vocabulary cuts words
        hist = s["length_histogram"]
        assert hist == dict(Counter(len(e) for e in enc))
        assert sum(hist.values()) == s["lines"]
        assert max(hist) == MAX_LEN  # long lines are truncated
        assert s["masked"] == s["to_mask"] + s["to_random"] + s["kept"]
    assert stats["train"]["unk"] + stats["val"]["unk"] >= 5  # the two lines with unknown words
    t = stats["train"]
    # lines have >= 8 maskable pieces, where k = floor(p*n + u) is unbiased
    assert abs(t["masked_fraction"] - 0.15) < 0.005
    assert t["masked_fraction"] == pytest.approx(t["masked"] / t["maskable"])
    assert abs(t["to_mask"] / t["masked"] - 0.8) < 0.02
    assert abs(t["to_random"] / t["masked"] - 0.1) < 0.02
    assert abs(t["kept"] / t["masked"] - 0.1) < 0.02


def test_masked_counts_match_the_shards(work):
    _, _, _, runs = work
    out, stats = runs["one"]
    for split in ("train", "val"):
        labels = read_shards(out, split).column("labels").combine_chunks().values.to_numpy()
        assert int((labels != IGNORE).sum()) == stats[split]["masked"]


def test_byte_identical_across_runs_and_process_counts(work):
    _, _, _, runs = work
    one, two, again = (sha256_of_arrows(runs[k][0]) for k in ("one", "two", "again"))
    assert len(one) >= 4
    assert runs["two"][1]["train"]["lines"] > 1000  # enough lines for datasets to really use 2 processes
    assert one == again
    assert one == two
    assert runs["one"][1] == runs["two"][1] == runs["again"][1]


def test_different_seed_changes_the_masks(work, tmp_path):
    _root, lines_dir, tokenizer, runs = work
    out = tmp_path / "masked"
    out.mkdir()
    mask_corpus(lines_dir, out, tokenizer, MaskParams(max_seq_len=MAX_LEN, dupe_factor=1), SEED + 1)
    first = read_shards(runs["one"][0], "val").column("labels").to_pylist()
    other = read_shards(out, "val").column("labels").to_pylist()
    assert len(first) == len(other)
    assert np.mean([a != b for a, b in zip(first, other)]) > 0.8
    # the input ids of unmasked positions, and so the tokenization, are the same
    assert read_shards(out, "val").column("length").to_pylist() == read_shards(runs["one"][0], "val").column(
        "length").to_pylist()


def test_no_maskable_training_line_is_an_error(tiny_model, tmp_path):
    lines_dir = tmp_path / "lines"
    lines_dir.mkdir()
    (tmp_path / "in").mkdir()
    docs = [f"{chr(0x4E00 + i)} {chr(0x5E00 + i)}" for i in range(60)]  # distinct lines, all unknown
    (tmp_path / "in" / "c.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    split_corpus(SplitParams(inputs=["in/c.txt"], val_fraction=0.3), lines_dir, seed=0, root=tmp_path)
    out = tmp_path / "masked"
    out.mkdir()
    with pytest.raises(ValueError, match="no training line has a token that can be masked"):
        mask_corpus(lines_dir, out, load_tokenizer(str(tiny_model)), MaskParams(dupe_factor=1), 0)

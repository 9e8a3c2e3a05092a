"""pipeline/encode.py mask_corpus: split lines -> tokenized, masked Arrow shards, checked against an independent
tokenization, plus statistics, dynamic mode, whole-word masking and byte-identical output across runs and
process counts."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline.config import MaskParams, SplitParams
from pipeline.corpus import split_corpus
from pipeline.encode import DYNAMIC_SCHEMA, MASKED_SCHEMA, mask_corpus, mask_spec, specials_per_line, tokenize_shards
from pipeline.masking import IGNORE, MaskSpec, mask_batch
from pipeline.models import load_tokenizer
from pipeline.shards import read_shards, shard_paths
from tests.conftest import DEMO_CORPUS

MAX_LEN = 32
DUPE = 3
SEED = 17
UNK_ONLY = "漢字 語"  # every word is unknown to the tiny tokenizer: [CLS] [UNK] [UNK] [SEP]
WITH_UNK = "the 漢 song of the 字 bus"


def make_corpus(path: Path) -> None:
    """~2,400 lines of 8-20 demo-corpus words (a 1,500-line shard: num_proc=2 really forks), in
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


def run_mask(root: Path, lines_dir: Path, tokenizer, name: str, **params) -> tuple[Path, dict]:
    out = root / "masked" / name
    out.mkdir(parents=True)
    p = MaskParams(**{"max_seq_len": MAX_LEN, "dupe_factor": DUPE, "shard_lines": 1000, "num_proc": 1, **params})
    return out, mask_corpus(lines_dir, out, tokenizer, p, SEED)


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("encode")
    make_corpus(root / "in" / "corpus.txt")
    lines_dir = root / "lines"
    lines_dir.mkdir()
    # several line shards: tokenizing shard by shard must number lines globally
    split_corpus(SplitParams(inputs=["in/corpus.txt"], val_fraction=0.1, shard_lines=1500), lines_dir, seed=SEED,
                 root=root)
    tokenizer = load_tokenizer(str(tiny_model))
    runs = {"one": run_mask(root, lines_dir, tokenizer, "one"),
            "two": run_mask(root, lines_dir, tokenizer, "two", num_proc=2),
            "again": run_mask(root, lines_dir, tokenizer, "again")}
    return root, lines_dir, tokenizer, runs


@pytest.fixture(scope="module")
def reference(work):
    """An independent tokenization of the line shards."""
    _, lines_dir, tokenizer, _ = work
    ref = {}
    for split in ("train", "val"):
        texts = read_shards(lines_dir, split).column("text").to_pylist()
        enc = tokenizer(texts, truncation=True, max_length=MAX_LEN)
        ref[split] = (texts, enc["input_ids"], [enc.word_ids(i) for i in range(len(texts))])
    return ref


def maskable(tokenizer, ids) -> int:
    special = set(tokenizer.all_special_ids)
    return sum(1 for t in ids if t not in special)


def test_schema_and_shard_files(work):
    _, lines_dir, _, runs = work
    assert len(list(lines_dir.glob("train-*.arrow"))) >= 2
    out, stats = runs["one"]
    assert read_shards(out, "train").schema.equals(MASKED_SCHEMA)
    assert read_shards(out, "val").schema.equals(MASKED_SCHEMA)
    per_copy = stats["train"]["rows"] // DUPE
    n_train = DUPE * -(-per_copy // 1000)  # each copy's rows are cut into shards of 1000
    names = sorted(p.name for p in out.iterdir())
    assert names == ["spec.json"] + [f"train-{i:05d}.arrow" for i in range(n_train)] + ["val-00000.arrow"]
    assert stats["train"]["shards"] == n_train >= 6
    assert stats["val"]["shards"] == 1
    assert stats["mode"] == "static" and stats["seed"] == SEED


def test_no_temporary_file_is_left_behind(work):
    root, _, _, runs = work
    assert not list((root / "masked").glob(".tokenized-*"))
    assert sorted(p.name for p in (root / "masked").iterdir()) == ["again", "one", "two"]
    assert not [p for p in runs["one"][0].iterdir() if p.name.startswith(".")]


def test_row_counts(work, reference):
    _, _, tokenizer, runs = work
    _, stats = runs["one"]
    for split, copies in (("train", DUPE), ("val", 1)):
        texts, enc, _ = reference[split]
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
        _texts, enc, _ = reference[split]
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
        texts, enc, _ = reference[split]
        s = stats[split]
        tokens = sum(len(e) for e in enc)
        unk = sum(e.count(tokenizer.unk_token_id) for e in enc)
        words = [len(t.split()) for t in texts]
        assert s["tokens"] == tokens
        assert s["unk"] == unk
        assert s["words"] == sum(words)
        assert s["unk_rate"] == pytest.approx(unk / (tokens - 2 * len(texts)))
        short = [i for i, e in enumerate(enc) if len(e) < MAX_LEN]
        assert s["truncated_lines"] == len(texts) - len(short) > 0
        assert s["pieces_per_word"] == pytest.approx(sum(len(enc[i]) - 2 for i in short) / sum(words[i] for i in short))
        assert s["pieces_per_word"] > 1.0  # a 600-piece vocabulary cuts words
        hist = s["length_histogram"]
        assert hist == dict(Counter(len(e) for e in enc))
        assert sum(hist.values()) == s["lines"]
        assert max(hist) == MAX_LEN  # long lines are truncated
        assert s["masked"] == s["to_mask"] + s["to_random"] + s["kept"]
        assert s["replacement"] == pytest.approx({"mask": s["to_mask"] / s["masked"],
                                                  "random": s["to_random"] / s["masked"],
                                                  "keep": s["kept"] / s["masked"]})
    assert stats["train"]["unk"] + stats["val"]["unk"] >= 5  # the two lines with unknown words
    t = stats["train"]
    # lines have >= 8 maskable pieces, where k = floor(p*n + u) is unbiased
    assert abs(t["masked_fraction"] - 0.15) < 0.005
    assert t["masked_fraction"] == pytest.approx(t["masked"] / t["maskable"])
    assert abs(t["replacement"]["mask"] - 0.8) < 0.02
    assert abs(t["replacement"]["random"] - 0.1) < 0.02
    assert abs(t["replacement"]["keep"] - 0.1) < 0.02


def test_masked_counts_match_the_shards(work):
    _, _, _, runs = work
    out, stats = runs["one"]
    for split in ("train", "val"):
        labels = read_shards(out, split).column("labels").combine_chunks().values.to_numpy()
        assert int((labels != IGNORE).sum()) == stats[split]["masked"]


def test_byte_identical_across_runs_and_process_counts(work):
    _, _, _, runs = work
    one, two, again = (sha256_of_arrows(runs[k][0]) for k in ("one", "two", "again"))
    assert len(one) >= 7
    assert runs["two"][1]["train"]["lines"] > 2000  # a 1,500-line shard is tokenized by 2 processes
    assert one == again
    assert one == two
    assert runs["one"][1] == runs["two"][1] == runs["again"][1]
    spec = {k: (runs[k][0] / "spec.json").read_bytes() for k in runs}
    assert spec["one"] == spec["two"] == spec["again"]


def test_two_processes_really_tokenize_in_parallel(work, tmp_path):
    _, lines_dir, tokenizer, _ = work
    params = MaskParams(max_seq_len=MAX_LEN, num_proc=2)
    shards = list(tokenize_shards(shard_paths(lines_dir, "train"), tokenizer, params, tmp_path))
    assert len(shards) == len(list(lines_dir.glob("train-*.arrow")))
    # a shard of >= 1,000 lines is split between the two workers, each writing its own cache file
    assert [len(files) for n, files in shards] == [2 if n >= 1000 else 1 for n, _ in shards]
    assert 1 in [len(f) for _, f in shards] and 2 in [len(f) for _, f in shards]


def test_spec_file_is_the_mask_spec(work):
    _, _, tokenizer, runs = work
    out, _ = runs["one"]
    spec = MaskSpec.from_json((out / "spec.json").read_text())
    expected = mask_spec(tokenizer, MaskParams())
    assert spec.to_json() == expected.to_json()
    assert spec.mask_id == tokenizer.mask_token_id
    assert set(spec.special_ids.tolist()) == set(tokenizer.all_special_ids)
    assert spec.vocab_size == len(tokenizer)
    assert json.loads((out / "spec.json").read_text())["whole_word"] is False


def test_different_seed_changes_the_masks(work, tmp_path):
    _root, lines_dir, tokenizer, runs = work
    out = tmp_path / "masked"
    out.mkdir()
    mask_corpus(lines_dir, out, tokenizer, MaskParams(max_seq_len=MAX_LEN, dupe_factor=1, num_proc=1), SEED + 1)
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


# --- dynamic mode --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dynamic(work):
    root, lines_dir, tokenizer, _ = work
    return run_mask(root.parent / f"{root.name}-dynamic", lines_dir, tokenizer, "dyn", mode="dynamic")


def test_dynamic_train_shards_hold_unmasked_ids(dynamic, work, reference):
    _, _, tokenizer, _ = work
    out, stats = dynamic
    train = read_shards(out, "train")
    assert train.schema.equals(DYNAMIC_SCHEMA)
    assert stats["mode"] == "dynamic" and stats["train"]["copies"] == 1
    _, enc, _ = reference["train"]
    kept = [i for i, ids in enumerate(enc) if maskable(tokenizer, ids) > 0]
    assert train.column("line").to_pylist() == kept
    assert train.column("input_ids").to_pylist() == [enc[i] for i in kept]
    assert set(train.column("copy").to_pylist()) == {0}


def test_dynamic_val_is_the_static_val(dynamic, work):
    _, _, _, runs = work
    out, stats = dynamic
    assert sha256_of_arrows(out)["val-00000.arrow"] == sha256_of_arrows(runs["one"][0])["val-00000.arrow"]
    assert stats["val"] == runs["one"][1]["val"]


def test_dynamic_masks_epoch_c_equal_static_copy_c(dynamic, work):
    """The collator's call, on the dynamic shards, reproduces every stored static copy exactly."""
    _, _, _, runs = work
    out, stats = dynamic
    spec = MaskSpec.from_json((out / "spec.json").read_text())
    rows = read_shards(out, "train")
    static = read_shards(runs["one"][0], "train")
    n = rows.num_rows
    for epoch in range(DUPE):
        ids, labels = mask_batch(rows.column("input_ids"), rows.column("line").to_numpy(), epoch, SEED, spec)
        stored = static.slice(epoch * n, n)
        assert stored.column("copy").to_pylist() == [epoch] * n
        assert ids.to_pylist() == stored.column("input_ids").to_pylist()
        assert labels.to_pylist() == stored.column("labels").to_pylist()
    # the dynamic stats describe epoch 0, which is static copy 0
    s, t = stats["train"], runs["one"][1]["train"]
    assert s["lines"] == t["lines"] and s["tokens"] == t["tokens"]
    assert s["masked"] == pytest.approx(t["masked"] / DUPE, rel=0.05)


# --- whole-word masking --------------------------------------------------------------------------------------


def test_whole_word_static_masks_whole_words(work, reference):
    root, lines_dir, tokenizer, _ = work
    out, stats = run_mask(root.parent / f"{root.name}-wwm", lines_dir, tokenizer, "wwm", whole_word=True,
                          dupe_factor=2)
    assert json.loads((out / "spec.json").read_text())["whole_word"] is True
    _, enc, word_ids = reference["train"]
    table = read_shards(out, "train").to_pydict()
    multi_piece_words_masked = 0
    for labels, line in zip(table["labels"], table["line"]):
        words = word_ids[line]
        chosen = {w for w, lab in zip(words, labels) if lab != IGNORE}
        assert None not in chosen
        for w in chosen:  # every piece of a chosen word is chosen
            pieces = [lab for ww, lab in zip(words, labels) if ww == w]
            assert IGNORE not in pieces, f"line {line}: word {w} partly masked"
            multi_piece_words_masked += len(pieces) > 1
    assert multi_piece_words_masked > 500
    assert 0.14 < stats["train"]["masked_fraction"] < 0.18


def test_whole_word_dynamic_stores_word_ids(work, reference):
    root, lines_dir, tokenizer, _ = work
    out, _ = run_mask(root.parent / f"{root.name}-wwm-dyn", lines_dir, tokenizer, "d", whole_word=True,
                      mode="dynamic")
    train = read_shards(out, "train")
    assert train.schema.names == ["input_ids", "length", "line", "copy", "word_ids"]
    _, _, word_ids = reference["train"]
    for line, words in zip(train.column("line").to_pylist(), train.column("word_ids").to_pylist()):
        assert words == [-1 if w is None else w for w in word_ids[line]]
    spec = MaskSpec.from_json((out / "spec.json").read_text())
    ids, labels = mask_batch(train.column("input_ids"), train.column("line").to_numpy(), 0, SEED, spec,
                             word_ids=train.column("word_ids"))
    assert pa.compute.sum(pa.compute.not_equal(labels.values, IGNORE)).as_py() > 0

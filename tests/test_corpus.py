"""pipeline/corpus.py split_corpus: cleaning, de-duplication, leak removal, the by-document split, determinism."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline.config import SplitParams
from pipeline.corpus import LINES_SCHEMA, split_corpus
from pipeline.shards import read_shards


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def rows(out_dir: Path, split: str) -> list[dict]:
    return read_shards(out_dir, split).to_pylist()


def all_rows(out_dir: Path) -> dict[str, list[dict]]:
    return {s: rows(out_dir, s) for s in ("train", "val")}


def make_docs(root: Path, n_docs: int = 120, per_doc: int = 5, name: str = "in/docs.txt",
              word: str = "document") -> Path:
    """n_docs blank-line-separated documents of distinct lines."""
    docs = ["\n".join(f"{word} {d} says line {i} of its text" for i in range(per_doc)) for d in range(n_docs)]
    return write(root / name, "\n\n".join(docs) + "\n")


def digest_files(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.arrow"))}


@pytest.fixture
def mixed(tmp_path) -> Path:
    a_lines = [
        "alpha line one",
        "alpha   line two",  # whitespace differs from b.jsonl's copy: a duplicate after normalize
        "",
        "beta line one",
        "a",  # too short with min_chars=3
        "secret dev sentence",  # leaked
        "x" * 50,  # too long with max_chars=40
        "",
        "gamma line",
        "gamma line",  # exact duplicate inside one file
    ]
    write(tmp_path / "in" / "a.txt", "\n".join(a_lines) + "\n")
    write(tmp_path / "in" / "b.jsonl",
          json.dumps({"text": "alpha line two"}) + "\n"
          + json.dumps({"text": "delta first\nSecret  dev sentence"}) + "\n"  # case differs: not a leak
          + json.dumps({"text": "cafe\u0301 au lait"}) + "\n"
          + json.dumps({"text": "café au lait"}) + "\n")  # NFC twin of the previous record
    return tmp_path


def test_stats_dedup_leaks_and_filters(mixed, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    params = SplitParams(inputs=["in"], min_chars=3, max_chars=40, val_fraction=0.5)
    stats = split_corpus(params, out, seed=3, leak_texts=["secret dev sentence\nsomething else"], root=mixed)
    assert stats["files"] == 2
    assert stats["lines_in"] == 13  # 8 non-blank lines in a.txt, 5 in b.jsonl
    assert stats["dropped"] == {"duplicate": 3, "leaked_from_task_dev_test": 1, "too_long": 1, "too_short": 1}
    kept = all_rows(out)
    texts = sorted(r["text"] for split in kept.values() for r in split)
    assert texts == sorted(["alpha line one", "alpha line two", "beta line one", "gamma line", "delta first",
                            "Secret dev sentence", "café au lait"])
    assert stats["lines_out"] == {"train": len(kept["train"]), "val": len(kept["val"])}
    assert sum(stats["lines_out"].values()) == stats["lines_in"] - sum(stats["dropped"].values())


def test_first_occurrence_wins_and_provenance_is_kept(mixed, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    split_corpus(SplitParams(inputs=["in"], min_chars=3, max_chars=40, val_fraction=0.5), out, seed=3,
                 leak_texts=["secret dev sentence"], root=mixed)
    by_text = {r["text"]: r for split in all_rows(out).values() for r in split}
    # "alpha line two" first appears in a.txt line 2 (normalized), so the a.txt copy is the one kept
    assert by_text["alpha line two"]["source"] == "in/a.txt"
    assert (by_text["alpha line two"]["line_no"], by_text["alpha line two"]["doc"]) == (2, 0)
    assert (by_text["beta line one"]["line_no"], by_text["beta line one"]["doc"]) == (4, 1)
    assert (by_text["gamma line"]["line_no"], by_text["gamma line"]["doc"]) == (9, 2)
    assert (by_text["delta first"]["source"], by_text["delta first"]["line_no"], by_text["delta first"]["doc"]) \
        == ("in/b.jsonl", 2, 1)
    assert (by_text["café au lait"]["line_no"], by_text["café au lait"]["doc"]) == (3, 2)


def test_leak_texts_are_normalized_before_matching(tmp_path):
    make_docs(tmp_path, n_docs=30)
    out = tmp_path / "out"
    out.mkdir()
    leaks = ["  document 3 says line 1 of its text \n\ndocument\u200b 7 says line 4 of its text",
             "document 9 says line 0 of its text"]
    stats = split_corpus(SplitParams(inputs=["in/docs.txt"], val_fraction=0.3), out, seed=1, leak_texts=leaks,
                         root=tmp_path)
    assert stats["dropped"] == {"leaked_from_task_dev_test": 3}
    texts = {r["text"] for split in all_rows(out).values() for r in split}
    assert len(texts) == 30 * 5 - 3
    assert "document 3 says line 1 of its text" not in texts
    assert "document 7 says line 4 of its text" not in texts
    assert "document 9 says line 0 of its text" not in texts


def test_min_max_chars_are_inclusive_bounds(tmp_path):
    lines = ["abc", "abcd", "abcdefghij", "abcdefghijk", "ab"]
    write(tmp_path / "in" / "c.txt", "\n\n".join(f"{t}" for t in lines) + "\n\n" + make_text_docs(40))
    out = tmp_path / "out"
    out.mkdir()
    stats = split_corpus(SplitParams(inputs=["in/c.txt"], min_chars=3, max_chars=10, val_fraction=0.3), out, 5,
                         root=tmp_path)
    texts = {r["text"] for split in all_rows(out).values() for r in split}
    assert {"abc", "abcd", "abcdefghij"} <= texts
    assert "abcdefghijk" not in texts and "ab" not in texts
    assert stats["dropped"] == {"too_long": 1, "too_short": 1}


def make_text_docs(n: int) -> str:
    return "\n\n".join(f"doc{i} a\ndoc{i} b" for i in range(n)) + "\n"


def test_documents_are_not_split_across_train_and_val(tmp_path):
    make_docs(tmp_path, n_docs=200, per_doc=5)
    make_docs(tmp_path, n_docs=50, per_doc=3, name="in/more/other.txt", word="other")
    out = tmp_path / "out"
    out.mkdir()
    split_corpus(SplitParams(inputs=["in"], val_fraction=0.3), out, seed=11, root=tmp_path)
    where: dict[tuple, set[str]] = defaultdict(set)
    sizes: dict[tuple, int] = defaultdict(int)
    for split, rs in all_rows(out).items():
        for r in rs:
            where[(r["source"], r["doc"])].add(split)
            sizes[(r["source"], r["doc"])] += 1
    assert len(where) == 250
    assert all(len(s) == 1 for s in where.values()), "a document was split between train and val"
    assert sizes[("in/docs.txt", 0)] == 5 and sizes[("in/more/other.txt", 49)] == 3
    val_docs = sum(1 for s in where.values() if s == {"val"})
    assert 0.2 < val_docs / 250 < 0.4  # binomial(250, 0.3): sd 0.029


def val_docs_for(tmp_path: Path, seed: int, tag: str) -> set[tuple]:
    out = tmp_path / f"out-{tag}"
    out.mkdir()
    split_corpus(SplitParams(inputs=["in"], val_fraction=0.3), out, seed=seed, root=tmp_path)
    return {(r["source"], r["doc"]) for r in rows(out, "val")}


def test_val_assignment_is_deterministic_and_depends_on_seed(tmp_path):
    make_docs(tmp_path, n_docs=100, per_doc=2)
    a, b, c = val_docs_for(tmp_path, 1, "a"), val_docs_for(tmp_path, 1, "b"), val_docs_for(tmp_path, 2, "c")
    assert a == b
    assert a != c
    assert len(a ^ c) > 10  # not a near-copy either


def test_val_assignment_does_not_depend_on_other_inputs(tmp_path):
    """A document's split is a function of (seed, source, doc): adding another file does not move it."""
    make_docs(tmp_path, n_docs=60, per_doc=2)
    before = val_docs_for(tmp_path, 4, "before")
    make_docs(tmp_path, n_docs=60, per_doc=2, name="in/zz-extra.txt", word="extra")
    after = val_docs_for(tmp_path, 4, "after")
    assert {d for d in after if d[0] == "in/docs.txt"} == before


def test_shards_schema_and_order(tmp_path):
    make_docs(tmp_path, n_docs=40, per_doc=3)
    out = tmp_path / "out"
    out.mkdir()
    split_corpus(SplitParams(inputs=["in/docs.txt"], val_fraction=0.25), out, seed=0, root=tmp_path)
    assert sorted(p.name for p in out.iterdir()) == ["train-00000.arrow", "val-00000.arrow"]
    for split in ("train", "val"):
        table = read_shards(out, split)
        assert table.schema.equals(LINES_SCHEMA)
        assert table.column_names == ["text", "source", "line_no", "doc", "section"]
        line_nos = table.column("line_no").to_pylist()
        assert line_nos == sorted(line_nos)  # file order is kept within a split
        for r in table.to_pylist():
            d, i = r["doc"], int(r["text"].split()[-4])
            assert r["text"] == f"document {d} says line {i} of its text"
            assert r["line_no"] == 4 * d + i + 1  # 3 lines + 1 blank per document, 1-based


def test_rerun_gives_byte_identical_shards(tmp_path):
    make_docs(tmp_path, n_docs=80, per_doc=4)
    write(tmp_path / "in" / "r.jsonl", "".join(json.dumps({"text": f"record {i}\nsecond {i}"}) + "\n"
                                               for i in range(50)))
    digests, stats = [], []
    for tag in ("one", "two"):
        out = tmp_path / tag
        out.mkdir()
        stats.append(split_corpus(SplitParams(inputs=["in"], val_fraction=0.2), out, seed=9, root=tmp_path))
        digests.append(digest_files(out))
    assert digests[0] == digests[1]
    assert set(digests[0]) == {"train-00000.arrow", "val-00000.arrow"}
    assert stats[0] == stats[1]


def test_no_val_lines_is_an_error(tmp_path):
    write(tmp_path / "in" / "one.txt", "a single document\nwith two lines\n")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ValueError) as info:
        split_corpus(SplitParams(inputs=["in/one.txt"], val_fraction=0.01), out, seed=42, root=tmp_path)
    assert "no val lines left" in str(info.value)
    assert "val_fraction" in str(info.value)


def test_everything_filtered_is_an_error(tmp_path):
    write(tmp_path / "in" / "short.txt", "a\n\nb\n\nc\n")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ValueError, match="no train lines left"):
        split_corpus(SplitParams(inputs=["in/short.txt"], min_chars=5), out, seed=0, root=tmp_path)


def test_missing_input_raises_input_error(tmp_path):
    from pipeline.text import InputError

    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError, match="^in/none.txt: no such file"):
        split_corpus(SplitParams(inputs=["in/none.txt"]), out, seed=0, root=tmp_path)


# --- disk-backed de-duplication, n-gram leaks, stats ----------------------------------------------------------


def test_dedup_matches_a_set_based_reference(tmp_path):
    """Many duplicates within and across files: the bucketed dedup keeps exactly the first occurrences."""
    rng = np.random.default_rng(3)
    pool = [f"pool line {i} with words" for i in range(3000)]
    reference, seen = [], set()
    for f in range(3):
        picks = rng.integers(0, len(pool), 4000)
        text = "\n\n".join(pool[i] + (" " if rng.random() < 0.1 else "") for i in picks)  # trailing space: same line
        write(tmp_path / "in" / f"part{f}.txt", text + "\n")
        for i in picks:
            if pool[i] not in seen:
                seen.add(pool[i])
                reference.append(pool[i])
    out = tmp_path / "out"
    out.mkdir()
    stats = split_corpus(SplitParams(inputs=["in"], val_fraction=0.2), out, seed=1, root=tmp_path)
    kept = read_shards(out, "train").to_pylist() + read_shards(out, "val").to_pylist()
    order = {(r["source"], r["line_no"]): r["text"] for r in kept}
    got = [order[k] for k in sorted(order, key=lambda k: (k[0], k[1]))]
    assert got == reference
    assert stats["dropped"] == {"duplicate": 12000 - len(reference)}
    assert not (out / ".split-work").exists()


def test_line_hashes_are_distinct_and_stable():
    from pipeline.corpus import line_hashes

    texts = pa.array([f"line {i}" for i in range(100_000)] + ["line 7"])
    hi, lo = line_hashes(texts)
    assert len(set(zip(hi.tolist(), lo.tolist()))) == 100_000
    assert (hi[7], lo[7]) == (hi[-1], lo[-1])
    again = line_hashes(pa.array(["line 7"]))
    assert (again[0][0], again[1][0]) == (hi[7], lo[7])


def test_ngram_leak_check(tmp_path):
    lines = ["the quick brown fox jumps over the lazy dog today",  # shares 5 words with the dev text
             "The Quick, Brown fox JUMPS over!",  # the same 5-gram: case and punctuation ignored
             "a quick brown fox of another kind",  # only 3 words in a row
             "completely unrelated words in this line here"]
    write(tmp_path / "in" / "c.txt", "\n\n".join(lines + [f"filler line {i}" for i in range(40)]) + "\n")
    dev = ["yesterday the quick brown fox jumps over a fence"]
    for n, expected in ((0, 0), (5, 2), (6, 2), (7, 0), (3, 3)):
        out = tmp_path / f"out{n}"
        out.mkdir()
        stats = split_corpus(SplitParams(inputs=["in"], val_fraction=0.3, leak_ngram=n), out, seed=2,
                             leak_texts=dev, root=tmp_path)
        assert stats["dropped"].get("leaked_ngram", 0) == expected, n
        assert stats["leak_check"] == {"task_lines": 1, "ngram": n}


def test_stats_add_up_and_count_documents(mixed, tmp_path):
    write(mixed / "in" / "empty.txt", "")
    write(mixed / "in" / "blank.txt", "\n \n\t\n")
    out = tmp_path / "out"
    out.mkdir()
    stats = split_corpus(SplitParams(inputs=["in"], min_chars=3, max_chars=40, val_fraction=0.5), out, seed=3,
                         leak_texts=["secret dev sentence"], root=mixed)
    assert stats["files"] == 4 and stats["empty_files"] == 2
    assert stats["blank_lines"] == 2 + 3  # two in a.txt, three in blank.txt
    assert sum(stats["lines_out"].values()) + sum(stats["dropped"].values()) == stats["lines_in"]
    kept = all_rows(out)
    for split, rs in kept.items():
        assert stats["documents_out"][split] == len({(r["source"], r["doc"]) for r in rs})
    assert stats["bytes_in"] == sum(p.stat().st_size for p in (mixed / "in").iterdir())

"""Hypothesis-driven bad input for the text readers, the split stage and the masking function: arbitrary unicode,
control characters, invalid UTF-8, every kind of line break, very long and empty inputs. Invariants: nothing
raises but the one-line InputError (a stage: exit 2 and one `error:` line, never a traceback), no reader
returns more lines than it was given or an unclean line, and masking never picks a special token, leaves
unpicked tokens alone, is a pure function of its keys and respects its proportions.

Examples are few and seeded (derandomize), so the module runs in seconds and the same way on every machine.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import math
import os
import tempfile
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.masking import IGNORE, MaskSpec, mask_batch, mask_lines
from pipeline.text import MAX_LINE_BYTES, InputError, normalize, read_lines
from tests.conftest import ROOT, run_command

FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FEW = settings(FUZZ, max_examples=15)

# Characters that break, hide or reorder text: every line break and space of str.isspace(), C0/C1 controls,
# NUL, BOM, zero-width characters, bidi overrides, combining marks, a non-character; then anything.
NASTY = "\x00\x01\x08\t\n\x0b\x0c\r\x1b\x1c\x1f \x7f\x85\x9f\xa0\u1680\u2000\u200a\u200b\u200d\u2028\u2029" \
        "\u202e\u202f\u205f\u3000\ufeff\u0301\u0308\ufffd\uffff"
text = st.text(st.one_of(st.sampled_from(NASTY), st.characters(codec="utf-8")), max_size=60)
CONTROL = {*range(0x00, 0x09), *range(0x0e, 0x1c), *range(0x7f, 0x85), *range(0x86, 0xa0), 0x200b, 0xfeff}


def assert_clean(line: str) -> None:
    """What every reader promises of a line: non-empty, no control characters, single spaces only, trimmed, NFC."""
    assert line and line == line.strip(" ") and "  " not in line, repr(line)
    assert not any(ord(c) in CONTROL or (c.isspace() and c != " ") for c in line), repr(line)
    assert unicodedata.is_normalized("NFC", line), repr(line)


@contextlib.contextmanager
def scratch():
    with tempfile.TemporaryDirectory(prefix="fuzz-") as d:
        yield Path(d)


# --- cleaning and reading -------------------------------------------------------------------------------------


@FUZZ
@given(text)
def test_normalize_any_unicode_gives_a_clean_line_and_is_idempotent(s):
    out = normalize(s)
    if out:
        assert_clean(out)
    assert normalize(out) == out


@FUZZ
@given(st.lists(st.one_of(st.binary(max_size=40), text.map(lambda t: t.encode("utf-8"))), max_size=12),
       st.sampled_from([b"\n", b"\r\n", b"\r", b""]), st.booleans())
def test_text_reader_any_bytes_never_more_lines_than_given_and_all_clean(chunks, end, bom):
    data = (b"\xef\xbb\xbf" if bom else b"") + end.join(chunks)
    with scratch() as d:
        (d / "in.txt").write_bytes(data)
        counts = Counter()
        lines = list(read_lines(d / "in.txt", counts=counts))
        try:
            list(read_lines(d / "in.txt", errors="strict"))
        except InputError as err:  # split.encoding_errors: strict -- one line naming the file and line
            assert str(err).startswith(f"{d / 'in.txt'}:") and "\n" not in str(err)
        else:
            assert b"\xff" not in data  # never valid UTF-8
    raw = data.splitlines()  # bytes.splitlines breaks exactly at \n, \r\n and a lone \r, as the reader does
    assert len(lines) <= len(raw)
    assert [x.line_no for x in lines] == sorted({x.line_no for x in lines}) and all(x.line_no <= len(raw)
                                                                                     for x in lines)
    for line in lines:
        assert_clean(line.text)
    assert counts["blank_lines"] + len(lines) == len(raw) - (data == b"\xef\xbb\xbf")  # a BOM alone is no line


@FEW
@given(st.sampled_from(["", "\n", "\n\n\n", " \t \r\n", "\x00\x00", "\ufeff", "\u200b\u2028\u2029\x85",
                        "\x1b\x7f\x9b\x08", "\r\r\r"]), st.sampled_from([".txt", ".jsonl", ".csv"]))
def test_empty_and_invisible_inputs_give_no_lines(content, suffix):
    if suffix == ".jsonl":
        content = json.dumps({"text": content}) + "\n" if content else ""
    elif suffix == ".csv" and content:
        buf = io.StringIO()
        csv.writer(buf).writerows([["text"], [content]])
        content = buf.getvalue()
    with scratch() as d:
        path = d / f"in{suffix}"
        path.write_text(content, encoding="utf-8")
        assert list(read_lines(path)) == []


values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
                      lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.sampled_from(["text", "x"]), kids,
                                                                                max_size=2), max_leaves=4)
record_line = st.one_of(st.dictionaries(st.sampled_from(["text", "body"]), values, max_size=2).map(json.dumps),
                        values.map(json.dumps), text.filter(lambda t: "\n" not in t and "\r" not in t))


@FUZZ
@given(st.lists(record_line, max_size=10), st.sampled_from(["fail", "skip"]))
def test_jsonl_reader_any_records_fails_in_one_line_or_reads_clean_lines(records, bad_records):
    with scratch() as d:
        path = d / "in.jsonl"
        path.write_text("\n".join(records) + "\n", encoding="utf-8")
        try:
            lines = list(read_lines(path, bad_records=bad_records))
        except InputError as err:
            assert bad_records == "fail" and str(err).startswith(f"{path}:") and "\n" not in str(err)
            return
    most = 0
    for r in records:
        with contextlib.suppress(json.JSONDecodeError):
            value = json.loads(r)
            if isinstance(value, dict) and isinstance(value.get("text"), str):
                most += max(1, len(value["text"].splitlines()))
    assert len(lines) <= most
    for line in lines:
        assert_clean(line.text)


@FUZZ
@given(st.lists(st.lists(text, min_size=0, max_size=3), max_size=8), st.booleans())
def test_csv_reader_any_rows_fails_in_one_line_or_reads_clean_lines(rows, header):
    buf = io.StringIO()
    writer = csv.writer(buf)
    if header:
        writer.writerow(["id", "text", "note"])
    writer.writerows(rows)
    with scratch() as d:
        path = d / "in.csv"
        path.write_text(buf.getvalue(), encoding="utf-8")
        try:
            lines = list(read_lines(path, bad_records="skip"))
        except InputError as err:
            assert "\n" not in str(err) and str(err).startswith(str(path))
            return
    assert len(lines) <= sum(max(1, len(cell.splitlines())) for row in rows for cell in row)
    for line in lines:
        assert_clean(line.text)


@FEW
@given(st.binary(max_size=200), st.integers(0, 200), st.booleans())
def test_gzip_reader_any_bytes_or_cut_archive_fails_in_one_line_or_reads(data, cut, compress):
    blob = gzip.compress(data) if compress else data
    blob = blob[:cut] if cut < len(blob) else blob
    with scratch() as d:
        path = d / "in.txt.gz"
        path.write_bytes(blob)
        try:
            lines = list(read_lines(path))
        except InputError as err:
            assert str(err).startswith(f"{path}: ") and "\n" not in str(err)
            return
    assert len(lines) <= len(data.splitlines())


def test_a_raw_line_over_16_mb_is_skipped_while_streaming_and_the_next_lines_keep_their_numbers(tmp_path):
    path = tmp_path / "long.txt"
    with open(path, "wb") as f:  # longer than two 8 MB read blocks, with no line break inside
        f.write(b"before\n" + b"y" * (MAX_LINE_BYTES + (1 << 20)) + b"\nafter one\nafter two\n")
    counts = Counter()
    lines = list(read_lines(path, counts=counts))
    assert [(x.text, x.line_no) for x in lines] == [("before", 1), ("after one", 3), ("after two", 4)]
    assert counts["too_long"] == 1


# --- the split stage, as a user meets it ------------------------------------------------------------------------

TASK = {"type": "triplet", "triplet": {"dir": str(ROOT / "data" / "demo" / "tasks" / "song-sections")}}
documents = st.lists(st.lists(text, min_size=1, max_size=4).map("\n".join), min_size=0, max_size=8)


@settings(FEW, suppress_health_check=[HealthCheck.function_scoped_fixture])  # capsys is read per example
@given(files=st.lists(documents, min_size=1, max_size=3), suffix=st.sampled_from([".txt", ".jsonl"]))
def test_split_stage_any_corpus_exits_0_with_fewer_lines_or_2_with_one_line(capsys, files, suffix):
    from stages.split import main

    with scratch() as d:
        (d / "in").mkdir()
        for i, docs in enumerate(files):
            body = ("\n\n".join(docs) if suffix == ".txt" else "".join(json.dumps({"text": t}) + "\n" for t in docs))
            (d / "in" / f"f{i}{suffix}").write_text(body, encoding="utf-8")
        (d / "params.yaml").write_text(yaml.safe_dump({"seed": 1, "task": TASK, "split": {
            "inputs": ["in"], "val_fraction": 0.5}}))
        cwd = os.getcwd()
        try:
            os.chdir(d)
            code, _, err = run_command(capsys, "dapt split", main)
        finally:
            os.chdir(cwd)
        lines = err.strip().splitlines()
        if code:
            assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
            assert not (d / "artifacts" / "lines").exists() and not list((d / "artifacts").glob(".*"))
            return
        stats = json.loads((d / "artifacts" / "lines" / "stats.json").read_text())
    out = stats["lines_out"]["train"] + stats["lines_out"]["val"]
    assert 0 < out <= stats["lines_in"] <= sum(len(t.splitlines()) for docs in files for t in docs)


# --- masking --------------------------------------------------------------------------------------------------


@st.composite
def batches(draw, whole_word: bool = False):
    vocab = draw(st.integers(6, 40))
    special = draw(st.lists(st.integers(0, vocab - 1), min_size=1, max_size=5, unique=True))
    mask_id = special[0]
    random_ids = [i for i in range(vocab) if i not in special]
    p = draw(st.floats(0.01, 0.99))
    mask_replace = draw(st.sampled_from([0.0, 0.8, 1.0]) | st.floats(0, 1))
    random_replace = draw(st.floats(0, 1)) * (1 - mask_replace) * 0.999
    spec = MaskSpec(mask_id=mask_id, special_ids=special, random_ids=random_ids, probability=p,
                    mask_replace=mask_replace, random_replace=random_replace, whole_word=whole_word,
                    vocab_size=vocab)
    lines = draw(st.lists(st.lists(st.integers(0, vocab - 1), max_size=40), max_size=8))
    words = None
    if whole_word:  # word ids rise along a line, -1 on special tokens (what a fast tokenizer gives)
        words = []
        for line in lines:
            new = draw(st.lists(st.booleans(), min_size=len(line), max_size=len(line)))
            ids, word, after_special = [], -1, True
            for t, starts in zip(line, new):
                if t in special:
                    ids.append(-1)
                    after_special = True
                    continue
                word += starts or after_special
                ids.append(word)
                after_special = False
            words.append(ids)
    index = draw(st.lists(st.integers(0, 2**40), min_size=len(lines), max_size=len(lines), unique=True))
    return spec, lines, words, np.array(index, dtype=np.int64), draw(st.integers(0, 2**31)), draw(st.integers(0, 99))


def flatten(lines):
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in lines])]).astype(np.int64)
    return np.array([t for x in lines for t in x], dtype=np.int64), offsets


def check_masks(spec, lines, out, labels, offsets):
    special = set(spec.special_ids.tolist())
    ids = np.array([t for x in lines for t in x], dtype=np.int64)
    chosen = labels != IGNORE
    assert np.array_equal(labels[chosen], ids[chosen])  # a label is the original token
    assert not any(int(t) in special for t in ids[chosen])  # never a special token
    assert np.array_equal(out[~chosen], ids[~chosen])  # unpicked tokens untouched
    allowed = {spec.mask_id, *spec.random_ids.tolist()}
    assert all(int(o) in allowed or o == i for o, i in zip(out[chosen], ids[chosen]))
    if spec.mask_replace == 0:  # [MASK] is special: never a random replacement either
        assert not any(out[chosen] == spec.mask_id)
    counts = []
    for i in range(len(lines)):
        a, b = offsets[i], offsets[i + 1]
        targets = sum(int(t) not in special for t in ids[a:b])
        k = int(chosen[a:b].sum())
        counts.append((targets, k))
        assert (k == 0) == (targets == 0)  # a line with anything to mask gets at least one
    return counts


@FUZZ
@given(batches())
def test_token_masking_invariants_for_any_batch(case):
    spec, lines, _, index, seed, copy = case
    ids, offsets = flatten(lines)
    out, labels = mask_lines(ids, offsets, index, copy, seed, spec)
    for targets, k in check_masks(spec, lines, out, labels, offsets):
        if targets:  # k = max(1, floor(p * n + u)), u in [0, 1)
            assert max(1, math.floor(spec.probability * targets)) <= k <= max(1, math.floor(spec.probability *
                                                                                            targets) + 1)
    again = mask_lines(ids, offsets, index, copy, seed, spec)
    assert np.array_equal(again[0], out) and np.array_equal(again[1], labels)  # a pure function
    for i in range(len(lines)):  # of the line and its keys alone: the same mask in any batch
        one = mask_lines(ids[offsets[i]:offsets[i + 1]], np.array([0, len(lines[i])]), index[i:i + 1], copy,
                         seed, spec)
        assert np.array_equal(one[1], labels[offsets[i]:offsets[i + 1]])


@FUZZ
@given(batches(whole_word=True))
def test_whole_word_masking_takes_whole_words_and_never_a_special_one(case):
    spec, lines, words, index, seed, copy = case
    ids, offsets = flatten(lines)
    word_ids = np.array([w for x in words for w in x], dtype=np.int64)
    out, labels = mask_lines(ids, offsets, index, copy, seed, spec, word_ids)
    check_masks(spec, lines, out, labels, offsets)
    chosen = labels != IGNORE
    for i in range(len(lines)):
        a, b = offsets[i], offsets[i + 1]
        for w in set(word_ids[a:b].tolist()) - {-1}:
            part = chosen[a:b][word_ids[a:b] == w]
            assert part.all() or not part.any(), f"word {w} of line {i} half masked"


@pytest.mark.parametrize("lines", [[], [[]], [[], [], []], [[0, 0, 0], [1]]], ids=["no-lines", "one-empty",
                                                                                   "all-empty", "all-special"])
def test_masking_degenerate_batches_picks_nothing_and_does_not_crash(lines):
    spec = MaskSpec(mask_id=1, special_ids=[0, 1], random_ids=[2, 3, 4], vocab_size=5)
    column = pa.array(lines, pa.list_(pa.int32()))
    out, labels = mask_batch(column, np.arange(len(lines), dtype=np.int64), 0, 7, spec)
    assert out.to_pylist() == lines and all(t == IGNORE for x in labels.to_pylist() for t in x)


def test_masking_a_token_id_outside_the_vocabulary_fails_with_a_value_error():
    spec = MaskSpec(mask_id=1, special_ids=[0, 1], random_ids=[2, 3, 4], vocab_size=5)
    with pytest.raises(ValueError, match="outside the vocabulary of 5"):
        mask_lines(np.array([2, 9]), np.array([0, 2]), np.array([0]), 0, 7, spec)


@FEW
@given(st.lists(text, min_size=1, max_size=12), st.booleans(), st.integers(8, 24))
def test_tokenizing_and_masking_any_text_with_a_real_tokenizer(tiny_model_tokenizer, texts, whole_word, max_len):
    from pipeline.config import MaskParams
    from pipeline.encode import Encoder, mask_spec

    tokenizer = tiny_model_tokenizer
    clean = [t for t in map(normalize, texts) if t]  # what the split stage hands the mask stage
    if not clean:
        return
    table = Encoder(tokenizer, max_len, word_ids=True)(pa.table({"text": clean}))
    spec = mask_spec(tokenizer, MaskParams(max_seq_len=max_len, whole_word=whole_word))
    ids = table.column("input_ids")
    assert all(2 <= len(x) <= max_len for x in ids.to_pylist())  # [CLS] ... [SEP], truncated
    out, labels = mask_batch(ids, np.arange(len(clean), dtype=np.int64), 0, 3, spec, table.column("word_ids"))
    lines = ids.to_pylist()
    _, offsets = flatten(lines)
    check_masks(spec, lines, np.array([t for x in out.to_pylist() for t in x]),
                np.array([t for x in labels.to_pylist() for t in x]), offsets)


@pytest.fixture(scope="module")
def tiny_model_tokenizer(tiny_model):
    from pipeline.models import load_tokenizer

    return load_tokenizer(str(tiny_model))

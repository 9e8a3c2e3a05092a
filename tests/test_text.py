"""pipeline/text.py: finding inputs, reading every supported format with provenance, and normalize()."""

from __future__ import annotations

import csv
import gzip
import json
import re
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.text import InputError, Line, expand_inputs, normalize, normalize_array, read_lines


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)
    return path


def stripped(lines) -> list[tuple[str, int, int]]:
    return [(ln.text.rstrip("\n"), ln.line_no, ln.doc) for ln in lines]


# --- expand_inputs -------------------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path) -> Path:
    write(tmp_path / "corpus" / "b.txt", "b\n")
    write(tmp_path / "corpus" / "a.txt", "a\n")
    write(tmp_path / "corpus" / "sub" / "c.jsonl", '{"text": "c"}\n')
    write(tmp_path / "corpus" / "sub" / "deeper" / "d.csv", "text\nd\n")
    write(tmp_path / "corpus" / "notes.md", "ignored\n")
    write(tmp_path / "corpus" / "sub" / "e.txt.gz", gzip.compress(b"e\n"))
    write(tmp_path / "single.jsonl", '{"text": "s"}\n')
    write(tmp_path / "other" / "x.txt", "x\n")
    write(tmp_path / "other" / "y.txt", "y\n")
    write(tmp_path / "other" / "z.csv", "text\nz\n")
    return tmp_path


def rel(paths, root) -> list[str]:
    return [p.relative_to(root).as_posix() for p in paths]


def test_expand_single_file(tree):
    assert rel(expand_inputs(["single.jsonl"], tree), tree) == ["single.jsonl"]


def test_expand_folder_recursive_sorted_supported_only(tree):
    assert rel(expand_inputs(["corpus"], tree), tree) == [
        "corpus/a.txt", "corpus/b.txt", "corpus/sub/c.jsonl", "corpus/sub/deeper/d.csv", "corpus/sub/e.txt.gz"]


def test_expand_glob(tree):
    assert rel(expand_inputs(["other/*.txt"], tree), tree) == ["other/x.txt", "other/y.txt"]
    assert rel(expand_inputs(["corpus/**/*.jsonl"], tree), tree) == ["corpus/sub/c.jsonl"]


def test_expand_mixed_keeps_pattern_order_and_dedupes(tree):
    got = rel(expand_inputs(["single.jsonl", "other/*.txt", "other", "corpus/sub/c.jsonl"], tree), tree)
    assert got == ["single.jsonl", "other/x.txt", "other/y.txt", "other/z.csv", "corpus/sub/c.jsonl"]


def test_expand_missing_path(tree):
    with pytest.raises(InputError) as info:
        expand_inputs(["corpus", "nothere.txt"], tree)
    assert str(info.value).startswith("nothere.txt: ")
    assert "no such file" in str(info.value)


def test_expand_glob_matching_nothing(tree):
    with pytest.raises(InputError) as info:
        expand_inputs(["other/*.parquet"], tree)
    assert str(info.value).startswith("other/*.parquet: matches no")


def test_expand_glob_matching_only_unsupported(tree):
    with pytest.raises(InputError, match=r"^corpus/\*\.md: matches no"):
        expand_inputs(["corpus/*.md"], tree)


def test_expand_unsupported_extension(tree):
    with pytest.raises(InputError) as info:
        expand_inputs(["corpus/notes.md"], tree)
    assert str(info.value).startswith("corpus/notes.md: unsupported file type")
    assert ".jsonl" in str(info.value)


def test_expand_folder_without_supported_files(tmp_path):
    write(tmp_path / "docs" / "a.md", "x")
    with pytest.raises(InputError, match=r"^docs: matches no"):
        expand_inputs(["docs"], tmp_path)


def test_expand_uppercase_suffix(tmp_path):
    write(tmp_path / "A.TXT", "x\n")
    assert rel(expand_inputs(["A.TXT"], tmp_path), tmp_path) == ["A.TXT"]


# --- read_lines: text files ----------------------------------------------------------------------------------


def test_txt_documents_and_line_numbers(tmp_path):
    path = write(tmp_path / "a.txt", "\n\nfirst\nsecond\n\n   \nthird\n\n\nfourth\nfifth")
    lines = list(read_lines(path))
    assert stripped(lines) == [("first", 3, 0), ("second", 4, 0), ("third", 7, 1), ("fourth", 10, 2),
                               ("fifth", 11, 2)]
    assert all(isinstance(ln, Line) and ln.source == str(path) for ln in lines)


def test_txt_crlf_and_bom(tmp_path):
    path = write(tmp_path / "win.txt", b"\xef\xbb\xbfone\r\ntwo\r\n\r\nthree\r\n")
    lines = list(read_lines(path))
    assert [ln.text for ln in lines] == ["one", "two", "three"]  # no BOM, no \r
    assert [(ln.line_no, ln.doc) for ln in lines] == [(1, 0), (2, 0), (4, 1)]


def test_txt_old_mac_line_endings(tmp_path):
    path = write(tmp_path / "mac.txt", b"one\rtwo\r\rthree")
    assert stripped(read_lines(path)) == [("one", 1, 0), ("two", 2, 0), ("three", 4, 1)]


def test_txt_gz(tmp_path):
    path = write(tmp_path / "a.txt.gz", gzip.compress("α\nβ\n\nγ\n".encode()))
    assert stripped(read_lines(path)) == [("α", 1, 0), ("β", 2, 0), ("γ", 4, 1)]


def test_corrupt_gz_is_an_input_error(tmp_path):
    path = write(tmp_path / "bad.txt.gz", b"this is not gzip at all")
    with pytest.raises(InputError, match=str(path).replace("\\", "\\\\")):
        list(read_lines(path))


def test_invalid_utf8_replace(tmp_path):
    path = write(tmp_path / "latin1.txt", b"ok\ncaf" + b"\xe9\n")
    counts = Counter()
    assert [ln.text for ln in read_lines(path, errors="replace", counts=counts)] == ["ok", "caf\ufffd"]
    assert counts["invalid_utf8_lines"] == 1


def test_invalid_utf8_strict(tmp_path):
    path = write(tmp_path / "latin1.txt", b"ok\ncaf" + b"\xe9\n")
    with pytest.raises(InputError) as info:
        list(read_lines(path, errors="strict"))
    assert str(info.value).startswith(f"{path}:2: invalid UTF-8 at byte 6 (0xe9")  # "ok\n" + "caf" = 6 bytes


def test_invalid_utf8_strict_jsonl(tmp_path):
    path = write(tmp_path / "x.jsonl", b'{"text": "caf\xe9"}\n')
    with pytest.raises(InputError, match="invalid UTF-8"):
        list(read_lines(path, errors="strict"))


# --- read_lines: record formats ------------------------------------------------------------------------------


def test_jsonl_records_and_multiline_fields(tmp_path):
    rows = [{"text": "one"}, {"text": "two\nthree\n\nfour", "id": 2}, {"text": "five\r\nsix"}]
    path = write(tmp_path / "a.jsonl", "\n".join(json.dumps(r) for r in rows[:2]) + "\n\n" + json.dumps(rows[2]))
    assert stripped(read_lines(path)) == [("one", 1, 0), ("two", 2, 1), ("three", 2, 1), ("four", 2, 1),
                                          ("five", 4, 2), ("six", 4, 2)]


def test_jsonl_gz_and_custom_field(tmp_path):
    data = "\n".join(json.dumps({"body": t}) for t in ["x", "y"]).encode()
    path = write(tmp_path / "a.jsonl.gz", gzip.compress(data))
    assert stripped(read_lines(path, text_field="body")) == [("x", 1, 0), ("y", 2, 1)]


def test_jsonl_bad_json_names_path_and_line(tmp_path):
    path = write(tmp_path / "a.jsonl", '{"text": "ok"}\n{"text": broken}\n')
    with pytest.raises(InputError) as info:
        list(read_lines(path))
    assert str(info.value).startswith(f"{path}:2: not valid JSON")


def test_jsonl_missing_field(tmp_path):
    path = write(tmp_path / "a.jsonl", '{"text": "ok"}\n{"body": "no"}\n')
    with pytest.raises(InputError, match=r":2: no field 'text' \(split.bad_records: skip drops such records\)$"):
        list(read_lines(path))


def test_jsonl_record_not_an_object(tmp_path):
    path = write(tmp_path / "a.jsonl", '["text"]\n')
    with pytest.raises(InputError, match=r":1: no field 'text'"):
        list(read_lines(path))


@pytest.mark.parametrize("value, kind", [(5, "int"), (None, "NoneType"), (["a"], "list")])
def test_jsonl_non_string_field(tmp_path, value, kind):
    path = write(tmp_path / "a.jsonl", json.dumps({"text": "fine"}) + "\n" + json.dumps({"text": value}) + "\n")
    with pytest.raises(InputError) as info:
        list(read_lines(path))
    assert str(info.value) == f"{path}:2: field 'text' is {kind}, not a string (split.bad_records: skip drops such " \
                              "records)"


def test_csv(tmp_path):
    path = tmp_path / "a.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        w.writerows([[1, "alpha"], [2, "beta, with comma"], [3, ""], [4, "gamma"]])
    assert stripped(read_lines(path)) == [("alpha", 2, 0), ("beta, with comma", 3, 1), ("gamma", 5, 3)]


def test_csv_bom_and_crlf(tmp_path):
    path = write(tmp_path / "a.csv", b"\xef\xbb\xbftext,n\r\nhello,1\r\nworld,2\r\n")
    assert stripped(read_lines(path)) == [("hello", 2, 0), ("world", 3, 1)]


def test_csv_missing_column(tmp_path):
    path = write(tmp_path / "a.csv", "id,body\n1,x\n")
    with pytest.raises(InputError) as info:
        list(read_lines(path))
    assert str(info.value).startswith(f"{path}:1: no column 'text'")
    assert "body" in str(info.value)


def test_csv_empty_file_has_no_lines(tmp_path):
    assert list(read_lines(write(tmp_path / "a.csv", ""))) == []


def test_csv_header_only_missing_column(tmp_path):
    with pytest.raises(InputError, match=r":1: no column 'text' \(columns: \['body'\]\)"):
        list(read_lines(write(tmp_path / "a.csv", "body\n")))


def test_parquet(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["first", "second\nthird", "fourth"], "n": [1, 2, 3]}), path, row_group_size=2)
    assert stripped(read_lines(path)) == [("first", 1, 0), ("second", 2, 1), ("third", 2, 1), ("fourth", 3, 2)]


def test_parquet_missing_column(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"body": ["x"]}), path)
    with pytest.raises(InputError) as info:
        list(read_lines(path))
    assert str(info.value).startswith(f"{path}: no column 'text'")


def test_parquet_non_string_column(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), path)
    with pytest.raises(InputError) as info:
        list(read_lines(path))
    assert str(info.value) == f"{path}: column 'text' is int64, not a string"


# --- normalize -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, clean", [
    ("e\u0301t\u0065\u0301", "été"),  # NFC composes
    ("a\x00b", "ab"),  # NUL removed
    ("x\x07y\x1bz\x7f", "xyz"),  # other controls (C0, DEL)
    ("a\x9fb", "ab"),  # C1 control
    ("zero\u200bwidth", "zerowidth"),
    ("\ufeffbom inside\ufeff", "bom inside"),
    ("  many \t\t spaces\u00a0\u2003here \n", "many spaces here"),  # whitespace runs, NBSP, em space
    ("line\nbreak\u2028and\u2029sep", "line break and sep"),
    ("", ""),
    ("\u200b\x00 \t", ""),
])
def test_normalize(raw, clean):
    assert normalize(raw) == clean


def test_normalize_is_idempotent_on_plain_text():
    s = "Héllo,  wörld!\tÇa va?"
    assert normalize(normalize(s)) == normalize(s) == "Héllo, wörld! Ça va?"


def test_normalize_output_is_always_nfc():
    out = normalize("caf" + "e\u200b\u0301")
    assert unicodedata.is_normalized("NFC", out)
    assert out == normalize("café")


def test_normalize_whitespace_controls_separate_words():
    assert normalize("end of page\x0cNext page") == "end of page Next page"


# --- normalize_array against the plain-Python definition ---------------------------------------------------

_REF_SEPARATING = re.compile(r"[\t\n\x0b\x0c\r\x1c-\x1f\x85\u2028\u2029]")
_REF_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f\u200b\ufeff]")


def reference_normalize(text: str) -> str:
    """The definition, in plain Python (the walking skeleton's implementation)."""
    text = _REF_CONTROL.sub("", _REF_SEPARATING.sub(" ", text))
    return re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).strip()


def test_normalize_array_matches_the_definition_on_every_code_point():
    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    # each character alone, and between letters (composition, whitespace runs, trimming)
    texts = chars + [f"a{c}b" for c in chars[::7]] + [f" {c}\u0301 " for c in chars[::101]]
    got = normalize_array(pa.array(texts)).to_pylist()
    bad = [(t, g) for t, g in zip(texts, got) if g != reference_normalize(t)]
    # The Unicode version of Python's unicodedata and Arrow's utf8proc may differ on the newest characters.
    assert len(bad) < 50, bad[:10]


def test_normalize_array_matches_the_definition_on_random_mixtures():
    rng = np.random.default_rng(0)
    alphabet = list("ab c\t\n\r\x00\x07\x1f\x7f\x85\x9f\xa0é\u0301\u200b\ufeff\u2000\u2028\u3000\ufffd漢") + ["e\u0301"]
    texts = ["".join(rng.choice(alphabet, rng.integers(0, 12))) for _ in range(20_000)]
    got = normalize_array(pa.array(texts)).to_pylist()
    assert got == [reference_normalize(t) for t in texts]


def test_normalize_array_leaves_clean_lines_alone():
    clean = ["plain ascii line", "déjà vu", "漢字 ok"]
    assert normalize_array(pa.array(clean)).to_pylist() == clean
    assert normalize_array(pa.array([], pa.string())).to_pylist() == []


# --- blocks: results do not depend on where reads cut the file --------------------------------------------


def test_block_size_does_not_change_the_lines(tmp_path, monkeypatch):
    import pipeline.text as text

    rng = np.random.default_rng(1)
    pieces = ["alpha", "béta", "漢字", "", " ", "\t", "x" * 40]
    ends = ["\n", "\r\n", "\r"]
    body = "".join(rng.choice(pieces) + rng.choice(ends) for _ in range(400))
    path = write(tmp_path / "mixed.txt", b"\xef\xbb\xbf" + body.encode("utf-8"))
    big = list(read_lines(path))
    for size in (3, 5, 8, 64):
        monkeypatch.setattr(text, "BLOCK_BYTES", size)
        assert list(read_lines(path)) == big, size
    # and they agree with Python's universal-newline reading
    expected = [normalize(t) for t in path.read_text(encoding="utf-8-sig").splitlines()]
    expected = [t for t in expected if t]
    assert [ln.text for ln in big] == expected


def test_line_numbers_and_offsets_across_blocks(tmp_path, monkeypatch):
    import pipeline.text as text

    monkeypatch.setattr(text, "BLOCK_BYTES", 16)
    lines = [f"line number {i}" for i in range(50)]
    data = ("\n".join(lines[:40]) + "\ncaf\xe9\n" + "\n".join(lines[40:])).encode("latin-1")
    path = write(tmp_path / "a.txt", data)
    with pytest.raises(InputError) as info:
        list(read_lines(path, errors="strict"))
    offset = data.index(b"\xe9")
    assert str(info.value).startswith(f"{path}:41: invalid UTF-8 at byte {offset} ")
    got = list(read_lines(path))
    assert [ln.line_no for ln in got] == list(range(1, 52))
    assert got[40].text == "caf\ufffd" and got[50].text == "line number 49"


def test_over_long_line_is_skipped_while_reading(tmp_path, monkeypatch):
    import pipeline.text as text

    monkeypatch.setattr(text, "BLOCK_BYTES", 16)
    monkeypatch.setattr(text, "MAX_LINE_BYTES", 100)
    path = write(tmp_path / "a.txt", "first\n" + "y" * 1000 + "\nafter\n\nlast")
    counts = Counter()
    got = list(read_lines(path, counts=counts))
    assert [(ln.text, ln.line_no, ln.section) for ln in got] == [("first", 1, 0), ("after", 3, 0), ("last", 5, 1)]
    assert counts["too_long"] == 1 and counts["lines_in"] == 1


def test_one_megabyte_line_is_read_whole(tmp_path):
    path = write(tmp_path / "a.txt", "short\n" + "word " * 200_000 + "\nend\n")
    got = list(read_lines(path))
    assert len(got) == 3 and len(got[1].text) == 5 * 200_000 - 1


def test_nul_bytes_are_removed(tmp_path):
    path = write(tmp_path / "a.txt", b"a\x00b\x00\nonly\x00\x00nul\n\x00\n\nnext")
    got = list(read_lines(path))
    # a line of nothing but NUL is blank: it ends the section
    assert [(ln.text, ln.section) for ln in got] == [("ab", 0), ("onlynul", 0), ("next", 1)]


def test_gzip_invalid_utf8_strict_names_the_byte(tmp_path):
    path = write(tmp_path / "a.txt.gz", gzip.compress(b"good\nbad \xff here\n"))
    with pytest.raises(InputError, match=r"a\.txt\.gz:2: invalid UTF-8 at byte 9 \(0xff"):
        list(read_lines(path, errors="strict"))


def test_truncated_gzip(tmp_path):
    data = gzip.compress(("some line of text\n" * 5000).encode())
    path = write(tmp_path / "cut.txt.gz", data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.txt\.gz: truncated or corrupt gzip after \d+ bytes of text"):
        list(read_lines(path))


def test_unreadable_path(tmp_path):
    (tmp_path / "loop.txt").symlink_to(tmp_path / "loop.txt")
    with pytest.raises(InputError, match=r"^loop\.txt: cannot read: Too many levels of symbolic links"):
        expand_inputs(["loop.txt"], tmp_path)


# --- records: sections, bad records ------------------------------------------------------------------------


def test_sections_inside_records(tmp_path):
    rows = [{"text": "a1\na2\n\nb1"}, {"text": "c1\n\n\n"}, {"text": "\n\nd1\n \nd2"}]
    path = write(tmp_path / "a.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    got = [(ln.text, ln.doc, ln.section) for ln in read_lines(path)]
    assert got == [("a1", 0, 0), ("a2", 0, 0), ("b1", 0, 1), ("c1", 1, 2), ("d1", 2, 3), ("d2", 2, 4)]


def test_bad_records_skip_counts_them(tmp_path):
    path = write(tmp_path / "a.jsonl", '{"text": "one"}\n{"text": broken}\n{"body": 1}\n{"text": 5}\n'
                                       '[1]\n{"text": "two"}\n')
    counts = Counter()
    got = [(ln.text, ln.line_no, ln.doc) for ln in read_lines(path, bad_records="skip", counts=counts)]
    assert got == [("one", 1, 0), ("two", 6, 5)]  # documents keep their record numbers
    assert counts["bad_records"] == 4


def test_csv_quoted_newlines_and_short_rows(tmp_path):
    path = tmp_path / "a.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerows([["id", "text"], [1, "two\nlines"], [2]])
    with pytest.raises(InputError, match=r"a\.csv:3: no field 'text'"):
        list(read_lines(path))
    counts = Counter()
    assert [ln.text for ln in read_lines(path, bad_records="skip", counts=counts)] == ["two", "lines"]
    assert counts["bad_records"] == 1


def test_parquet_null_values(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["x", None, "y"]}), path)
    with pytest.raises(InputError, match=r"a\.parquet:2: field 'text' is null"):
        list(read_lines(path))
    assert [(ln.text, ln.line_no) for ln in read_lines(path, bad_records="skip")] == [("x", 1), ("y", 3)]


def test_not_a_parquet_file(tmp_path):
    with pytest.raises(InputError, match=r"a\.parquet: not a readable Parquet file"):
        list(read_lines(write(tmp_path / "a.parquet", b"not parquet")))

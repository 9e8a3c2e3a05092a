"""pipeline/text.py: finding inputs, reading every supported format with provenance, and normalize()."""

from __future__ import annotations

import csv
import gzip
import json
import unicodedata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.text import InputError, Line, expand_inputs, normalize, read_lines


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
    assert [ln.text for ln in lines] == ["one\n", "two\n", "three\n"]  # no BOM, no \r
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
    assert [ln.text for ln in read_lines(path, errors="replace")] == ["ok\n", "caf\ufffd\n"]


def test_invalid_utf8_strict(tmp_path):
    path = write(tmp_path / "latin1.txt", b"ok\ncaf" + b"\xe9\n")
    with pytest.raises(InputError) as info:
        list(read_lines(path, errors="strict"))
    assert str(info.value).startswith(f"{path}: invalid UTF-8")


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
    with pytest.raises(InputError, match=r":2: no field 'text'$"):
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
    assert str(info.value) == f"{path}:2: field 'text' is {kind}, not a string"


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


def test_csv_empty_file(tmp_path):
    path = write(tmp_path / "a.csv", "")
    with pytest.raises(InputError, match="no column 'text'"):
        list(read_lines(path))


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
    with pytest.raises(InputError, match=r":1: field 'text' is int, not a string"):
        list(read_lines(path))


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

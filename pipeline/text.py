"""Reading raw text and cutting it into clean lines with provenance.

Inputs are files, folders and globs of .txt, .txt.gz, .jsonl(.gz), .csv and .parquet. Every yielded line
keeps where it came from (source file, 1-based line/row number) and which document it belongs to: in text
files a blank line starts a new section (document), in record formats each record is one document.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import json
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz", ".csv", ".parquet")


class InputError(ValueError):
    """Bad input, phrased as `path[:line]: what is wrong`."""


@dataclass(frozen=True)
class Line:
    text: str
    source: str
    line_no: int  # 1-based line of a .txt/.jsonl file; row of a .csv (header = 1) or .parquet
    doc: int  # document index within the source file


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in SUFFIXES if name.endswith(s)), None)


def expand_inputs(patterns: Iterable[str], root: Path = Path(".")) -> list[Path]:
    """Files, folders (searched recursively for supported files) and globs -> a sorted, de-duplicated list."""
    found: dict[Path, None] = {}
    for pattern in patterns:
        path = root / pattern
        if glob.has_magic(pattern):
            matches = []
            for p in map(Path, sorted(glob.glob(str(path), recursive=True))):
                matches += sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        elif path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.is_file())
        elif path.exists():
            if _kind(path) is None:
                raise InputError(f"{pattern}: unsupported file type (expected one of {', '.join(SUFFIXES)})")
            matches = [path]
        else:
            raise InputError(f"{pattern}: no such file or folder")
        matches = [p for p in matches if p.is_file() and _kind(p)]
        if not matches:
            raise InputError(f"{pattern}: matches no {'/'.join(SUFFIXES)} file")
        found.update(dict.fromkeys(matches))
    return list(found)


_SEPARATING = re.compile(r"[\t\n\x0b\x0c\r\x1c-\x1f\x85\u2028\u2029]")  # control chars that separate words
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f\u200b\ufeff]")  # the rest: deleted
_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """No control characters (NUL, BOM, zero-width space included; form feed and the like become a space),
    NFC, whitespace runs -> one space. Deleting before composing keeps the result NFC and idempotent."""
    text = _CONTROL.sub("", _SEPARATING.sub(" ", text))
    return _SPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()


def _text_lines(path: Path, errors: str) -> Iterator[tuple[int, str]]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as raw:
            # newline=None handles \n, \r\n and \r; decoding is incremental, never the whole file at once.
            reader = io.TextIOWrapper(raw, encoding="utf-8-sig", errors=errors, newline=None)
            yield from enumerate(reader, start=1)
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: invalid UTF-8 at byte {err.start} of a read block: {err.reason}") from None
    except (OSError, EOFError) as err:
        raise InputError(f"{path}: cannot read: {err}") from None


def _records(path: Path, field: str, errors: str) -> Iterator[tuple[int, object]]:
    kind = _kind(path)
    if kind in (".jsonl", ".jsonl.gz"):
        for no, raw in _text_lines(path, errors):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as err:
                raise InputError(f"{path}:{no}: not valid JSON: {err.msg}") from None
            if not isinstance(record, dict) or field not in record:
                raise InputError(f"{path}:{no}: no field '{field}'")
            yield no, record[field]
    elif kind == ".csv":
        rows = csv.DictReader(line for _, line in _text_lines(path, errors))
        if rows.fieldnames is None or field not in rows.fieldnames:
            raise InputError(f"{path}:1: no column '{field}' (columns: {rows.fieldnames})")
        for no, row in enumerate(rows, start=2):
            yield no, row[field]
    elif kind == ".parquet":
        import pyarrow.parquet as pq

        file = pq.ParquetFile(path)
        if field not in file.schema_arrow.names:
            raise InputError(f"{path}: no column '{field}' (columns: {file.schema_arrow.names})")
        no = 0
        for batch in file.iter_batches(columns=[field], batch_size=8192):
            for value in batch.column(0).to_pylist():
                no += 1
                yield no, value


def read_lines(path: Path, text_field: str = "text", errors: str = "replace") -> Iterator[Line]:
    """Raw lines of one input file, not yet normalized or filtered."""
    source = str(path)
    if _kind(path) in (".txt", ".txt.gz"):
        doc, blank, started = 0, False, False
        for no, line in _text_lines(path, errors):
            if not line.strip():
                blank = True
                continue
            if blank and started:
                doc += 1
            blank, started = False, True
            yield Line(line, source, no, doc)
        return
    for doc, (no, value) in enumerate(_records(path, text_field, errors)):
        if not isinstance(value, str):
            raise InputError(f"{path}:{no}: field '{text_field}' is {type(value).__name__}, not a string")
        for piece in value.splitlines():
            if piece.strip():
                yield Line(piece, source, no, doc)

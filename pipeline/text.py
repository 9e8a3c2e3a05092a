"""Reading raw text and cutting it into clean lines with provenance, a block of lines at a time.

Inputs are files, folders and globs of .txt, .txt.gz, .jsonl(.gz), .csv and .parquet. Every line keeps where
it came from (source file, 1-based line/row number), which document it belongs to (a record of a record
format; a blank-line-separated section of a text file) and which section (a blank line starts a new one,
inside records too). Files are read in blocks of whole lines and cleaned with Arrow compute kernels, so no
Python code runs per line of a .txt file and memory does not grow with the file.
"""

from __future__ import annotations

import csv
import glob
import gzip
import json
import os
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz", ".csv", ".parquet")
BLOCK_BYTES = 8 << 20  # read size; a block of text becomes one batch of lines
MAX_LINE_BYTES = 16 << 20  # longer raw lines are skipped while reading (counted too_long), never held whole


class InputError(ValueError):
    """Bad input, phrased as `path[:line]: what is wrong`."""


@dataclass(frozen=True)
class Line:
    text: str
    source: str
    line_no: int  # 1-based line of a .txt/.jsonl file; row of a .csv (header = 1) or .parquet
    doc: int  # document index within the source file
    section: int = 0  # blank-line-separated section index within the source file


@dataclass
class Batch:
    """Clean, non-empty lines of one file, in file order."""

    text: pa.StringArray
    line_no: np.ndarray  # int64
    doc: np.ndarray  # int64
    section: np.ndarray  # int64


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
        else:
            try:
                os.stat(path)
            except FileNotFoundError:
                raise InputError(f"{pattern}: no such file or folder") from None
            except OSError as err:
                raise InputError(f"{pattern}: cannot read: {err.strerror}") from None
            if path.is_dir():
                matches = sorted(p for p in path.rglob("*") if p.is_file())
            elif _kind(path) is None:
                raise InputError(f"{pattern}: unsupported file type (expected one of {', '.join(SUFFIXES)})")
            else:
                matches = [path]
        matches = [p for p in matches if p.is_file() and _kind(p)]
        if not matches:
            raise InputError(f"{pattern}: matches no {'/'.join(SUFFIXES)} file")
        found.update(dict.fromkeys(matches))
    return list(found)


# --- normalization -------------------------------------------------------------------------------------------
# RE2 patterns (Arrow's regex engine). Python's str.isspace() set, spelled out: RE2's \s is ASCII only.
_CONTROL = r"[\x00-\x08\x0e-\x1b\x7f-\x{84}\x{86}-\x{9f}\x{200b}\x{feff}]"  # deleted (NUL, BOM, zero-width)
_SPACES = r"\t\n\x0b\x0c\r\x1c-\x1f\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}"
_SPACE_RUN = f"[ {_SPACES}]+"
_NEEDS_WORK = f"{_CONTROL}|[{_SPACES}]|  |^ | $"  # anything the slow path would change


def normalize_array(text: pa.Array) -> pa.StringArray:
    """Clean a string array: control characters deleted (NUL, BOM, zero-width space; line and page breaks and
    other separating controls become a space), whitespace runs -> one space, trimmed, then NFC.

    Only lines that need a step pay for it (most lines of most corpora need none), so this runs at memory
    speed. Composing after collapsing is safe: NFC never creates or removes whitespace or controls."""
    if len(text) == 0:
        return pa.array([], pa.string())
    needs = pc.match_substring_regex(text, _NEEDS_WORK)
    if pc.any(needs).as_py():
        dirty = pc.filter(text, needs)
        dirty = pc.replace_substring_regex(dirty, _CONTROL, "")
        dirty = pc.utf8_trim(pc.replace_substring_regex(dirty, _SPACE_RUN, " "), " ")
        text = pc.replace_with_mask(text, needs, dirty)
    non_ascii = pc.invert(pc.string_is_ascii(text))
    if pc.any(non_ascii).as_py():
        text = pc.replace_with_mask(text, non_ascii, pc.utf8_normalize(pc.filter(text, non_ascii), "NFC"))
    return text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text


def normalize(text: str) -> str:
    """One string through `normalize_array`: the same cleaning, for task texts and tests."""
    return normalize_array(pa.array([text], pa.string()))[0].as_py()


# --- raw bytes -> blocks of whole lines ----------------------------------------------------------------------


def _chunks(path: Path, size: int) -> Iterator[bytes]:
    gz = path.name.lower().endswith(".gz")
    done = 0
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            while chunk := f.read(size):
                done += len(chunk)
                yield chunk
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise InputError(f"{path}: truncated or corrupt gzip after {done} bytes of text ({err})") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read: {err.strerror or err}") from None


def _line_ends(block: bytes) -> np.ndarray:
    """End offsets (exclusive, terminator included) of the lines in a block: \\n, \\r\\n and a lone \\r end one."""
    a = np.frombuffer(block, np.uint8)
    if b"\r" not in block:
        return np.flatnonzero(a == 10) + 1
    nl, cr = a == 10, a == 13
    cr[:-1] &= ~nl[1:]  # the \r of a \r\n is not an end of its own
    return np.flatnonzero(nl | cr) + 1


@dataclass
class _Lines:
    raw: pa.BinaryArray  # lines with their terminators
    starts: np.ndarray  # byte offset of each line in the block
    first_line: int  # 1-based number of raw[0]
    offset: int  # byte offset of raw[0] in the (decompressed) file


def _line_blocks(path: Path, counts: Counter) -> Iterator[_Lines]:
    """The file as blocks of whole raw lines. A line longer than MAX_LINE_BYTES is skipped as it streams by."""
    carry, offset, line, skipping, first = b"", 0, 1, False, True
    for chunk in _chunks(path, BLOCK_BYTES):
        if first and chunk.startswith(b"\xef\xbb\xbf"):  # UTF-8 BOM
            chunk, offset = chunk[3:], 3
        first = False
        buf = carry + chunk if carry else chunk
        # the last complete line ends at the last \n, or at a \r that is not the block's final byte
        cut = max(buf.rfind(b"\n"), buf.rfind(b"\r", 0, len(buf) - 1)) + 1
        if skipping:
            if cut == 0:
                offset, carry = offset + len(buf), b""
                continue
            end = int(_line_ends(buf[:cut])[0])
            buf, cut, offset, line, skipping = buf[end:], cut - end, offset + end, line + 1, False
        if cut == 0:
            carry = buf
            if len(carry) > MAX_LINE_BYTES:
                counts["too_long"] += 1
                counts["lines_in"] += 1
                offset, carry, skipping = offset + len(carry), b"", True
            continue
        block, carry = buf[:cut], buf[cut:]
        ends = _line_ends(block)
        if ends[0] > MAX_LINE_BYTES:  # a carried line that passed the limit in this very read: skipped too
            counts["too_long"] += 1
            counts["lines_in"] += 1
            skip = int(ends[0])
            block, ends, line, offset, cut = block[skip:], ends[1:] - skip, line + 1, offset + skip, cut - skip
            if not len(ends):
                continue
        lines = _block(block, ends, line, offset)
        yield lines
        line, offset = line + len(lines.raw), offset + cut
    if carry and not skipping:
        yield _block(carry, np.array([len(carry)]), line, offset)


def _block(block: bytes, ends: np.ndarray, line: int, offset: int) -> _Lines:
    offsets = np.concatenate([[0], ends]).astype(np.int32)
    raw = pa.Array.from_buffers(pa.binary(), len(ends), [None, pa.py_buffer(offsets), pa.py_buffer(block)])
    return _Lines(raw, offsets[:-1], line, offset)


def _decode(lines: _Lines, path: Path, errors: str, counts: Counter) -> pa.StringArray:
    """UTF-8 validation of a whole block at once; only a block with bad bytes is decoded line by line."""
    try:
        return lines.raw.cast(pa.string())
    except pa.ArrowInvalid:
        pass
    out = []
    for i, raw in enumerate(lines.raw.to_pylist()):
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            if errors == "strict":
                at = lines.offset + int(lines.starts[i]) + err.start
                raise InputError(f"{path}:{lines.first_line + i}: invalid UTF-8 at byte {at} "
                                 f"(0x{raw[err.start]:02x}: {err.reason}; split.encoding_errors: replace "
                                 "keeps the line with U+FFFD)") from None
            counts["invalid_utf8_lines"] += 1
            out.append(raw.decode("utf-8", errors="replace"))
    return pa.array(out, pa.string())


# --- numbering documents and sections ------------------------------------------------------------------------


class _Numbering:
    """Section (and, for text files, document) numbers from blank-line positions, carried across blocks."""

    def __init__(self):
        self.section = -1  # last section number handed out
        self.last = None  # (record, position) of the last non-blank line
        self.record = -1

    def number(self, blank: np.ndarray, record: np.ndarray, position: np.ndarray) -> np.ndarray:
        """Sections of the non-blank entries. `record` is each entry's record (constant for a text file),
        `position` its running index (consecutive entries of one record differ by 1)."""
        keep = np.flatnonzero(~blank)
        rec, at = record[keep], position[keep]
        prev_rec = np.concatenate([[self.last[0] if self.last else -1], rec[:-1]])
        prev_at = np.concatenate([[self.last[1] if self.last else -2], at[:-1]])
        new = (rec != prev_rec) | (at - prev_at > 1)
        if self.last is None and len(new):
            new[0] = True
        sections = self.section + np.cumsum(new)
        if len(keep):
            self.section, self.last = int(sections[-1]), (int(rec[-1]), int(at[-1]))
        return sections


# --- per-format readers --------------------------------------------------------------------------------------


def _text_batches(path: Path, errors: str, counts: Counter) -> Iterator[Batch]:
    numbering, seen = _Numbering(), 0
    for lines in _line_blocks(path, counts):
        text = normalize_array(pc.utf8_rtrim(_decode(lines, path, errors, counts), "\r\n"))
        blank = np.asarray(pc.equal(pc.binary_length(text), 0), dtype=bool)
        counts["blank_lines"] += int(blank.sum())
        line_no = lines.first_line + np.arange(len(text), dtype=np.int64)
        # positions count lines read, so only a blank line (not a skipped over-long one) ends a section
        sections = numbering.number(blank, np.zeros(len(text), np.int64), seen + np.arange(len(text)))
        seen += len(text)
        keep = ~blank
        yield Batch(pc.filter(text, pa.array(keep)), line_no[keep], sections, sections)


_PIECE_BREAK = r"\r\n|[\n\r\x0b\x0c\x1c\x1d\x1e\x{85}\x{2028}\x{2029}]"  # str.splitlines()'s breaks


def _pieces(values: pa.Array, line_no: np.ndarray, record: np.ndarray, numbering: _Numbering,
            counts: Counter) -> Batch:
    """Record texts -> their clean lines; a blank line inside a record starts a new section."""
    parts = pc.split_pattern_regex(values, _PIECE_BREAK)
    parent = np.asarray(pc.list_parent_indices(parts), dtype=np.int64)
    text = normalize_array(pc.list_flatten(parts))
    blank = np.asarray(pc.equal(pc.binary_length(text), 0), dtype=bool)
    counts["blank_lines"] += int(blank.sum())
    sections = numbering.number(blank, record[parent], np.arange(len(text), dtype=np.int64))
    keep = ~blank
    return Batch(pc.filter(text, pa.array(keep)), line_no[parent][keep], record[parent][keep], sections)


class _Records:
    """Collects (line number, text) of records, enforcing the text field's presence and type."""

    def __init__(self, path: Path, field: str, bad_records: str, counts: Counter):
        self.path, self.field, self.bad, self.counts = path, field, bad_records, counts
        self.values: list[str] = []
        self.line_no: list[int] = []
        self.record: list[int] = []
        self.n = 0  # records seen, good or bad: the document number

    def skip(self, no: int, what: str) -> None:
        """A record without usable text: fail, or (split.bad_records: skip) count it as one dropped line."""
        if self.bad == "fail":
            raise InputError(f"{self.path}:{no}: {what} (split.bad_records: skip drops such records)")
        self.counts["bad_records"] += 1
        self.counts["lines_in"] += 1
        self.n += 1

    def add(self, no: int, value: object, present: bool = True) -> None:
        if not present:
            return self.skip(no, f"no field '{self.field}'")
        if not isinstance(value, str):
            return self.skip(no, f"field '{self.field}' is {type(value).__name__}, not a string")
        self.values.append(value)
        self.line_no.append(no)
        self.record.append(self.n)
        self.n += 1

    def flush(self, numbering: _Numbering) -> Iterator[Batch]:
        if self.values:
            yield _pieces(pa.array(self.values, pa.string()), np.array(self.line_no, np.int64),
                          np.array(self.record, np.int64), numbering, self.counts)
        self.values, self.line_no, self.record = [], [], []


def _jsonl_batches(path: Path, field: str, errors: str, bad_records: str, counts: Counter) -> Iterator[Batch]:
    records, numbering = _Records(path, field, bad_records, counts), _Numbering()
    for lines in _line_blocks(path, counts):
        for i, raw in enumerate(_decode(lines, path, errors, counts).to_pylist()):
            no = lines.first_line + i
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as err:
                records.skip(no, f"not valid JSON: {err.msg}")
                continue
            is_obj = isinstance(record, dict)
            records.add(no, record.get(field) if is_obj else None, present=is_obj and field in record)
        yield from records.flush(numbering)


def _decoded_lines(path: Path, errors: str, counts: Counter) -> Iterator[str]:
    for lines in _line_blocks(path, counts):
        yield from _decode(lines, path, errors, counts).to_pylist()


def _csv_batches(path: Path, field: str, errors: str, bad_records: str, counts: Counter) -> Iterator[Batch]:
    records, numbering = _Records(path, field, bad_records, counts), _Numbering()
    csv.field_size_limit(MAX_LINE_BYTES)
    rows = csv.reader(_decoded_lines(path, errors, counts))
    try:
        header = next(rows, None)
        if header is None:  # an empty file
            return
        if field not in header:
            raise InputError(f"{path}:1: no column '{field}' (columns: {header})")
        column = header.index(field)
        for no, row in enumerate(rows, start=2):
            if not row:
                continue
            records.add(no, row[column] if column < len(row) else None, present=column < len(row))
            if len(records.values) >= 65536:
                yield from records.flush(numbering)
    except csv.Error as err:
        raise InputError(f"{path}:{rows.line_num}: not valid CSV: {err}") from None
    yield from records.flush(numbering)


def _parquet_batches(path: Path, field: str, bad_records: str, counts: Counter) -> Iterator[Batch]:
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise InputError(f"{path}: not a readable Parquet file ({err})") from None
    schema = file.schema_arrow
    if field not in schema.names:
        raise InputError(f"{path}: no column '{field}' (columns: {schema.names})")
    kind = schema.field(field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise InputError(f"{path}: column '{field}' is {kind}, not a string")
    records, numbering, start = _Records(path, field, bad_records, counts), _Numbering(), 0
    for batch in file.iter_batches(columns=[field], batch_size=65536):
        values = batch.column(0)
        rows = np.arange(start, start + len(values), dtype=np.int64)
        start += len(values)
        nulls = np.asarray(values.is_null(), dtype=bool)
        for r in rows[nulls]:
            records.skip(int(r) + 1, f"field '{field}' is null, not a string")
        good = pa.array(~nulls)
        if len(values) - nulls.sum():
            yield _pieces(pc.filter(values, good), rows[~nulls] + 1, rows[~nulls], numbering, counts)


def read_batches(path: Path, text_field: str = "text", errors: str = "replace", bad_records: str = "fail",
                 counts: Counter | None = None) -> Iterator[Batch]:
    """Clean lines of one input file, a block at a time. `counts` receives blank_lines, invalid_utf8_lines,
    bad_records and too_long (raw lines over MAX_LINE_BYTES) as they are met."""
    counts = Counter() if counts is None else counts
    kind = _kind(path)
    if kind in (".txt", ".txt.gz"):
        return _text_batches(path, errors, counts)
    if kind in (".jsonl", ".jsonl.gz"):
        return _jsonl_batches(path, text_field, errors, bad_records, counts)
    if kind == ".csv":
        return _csv_batches(path, text_field, errors, bad_records, counts)
    if kind == ".parquet":
        return _parquet_batches(path, text_field, bad_records, counts)
    raise InputError(f"{path}: unsupported file type (expected one of {', '.join(SUFFIXES)})")


def read_lines(path: Path, text_field: str = "text", errors: str = "replace", bad_records: str = "fail",
               counts: Counter | None = None) -> Iterator[Line]:
    """`read_batches` one clean line at a time (for small inputs and tests)."""
    for b in read_batches(path, text_field, errors, bad_records, counts):
        for text, no, doc, section in zip(b.text.to_pylist(), b.line_no.tolist(), b.doc.tolist(),
                                          b.section.tolist()):
            yield Line(text, str(path), no, doc, section)

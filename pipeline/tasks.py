"""Downstream task files: `<dir>/{train,dev,test}.jsonl` (or .csv / .parquet), read into plain columns.

A text field may hold a string or a list of lines (a multi-line "section"); a list is joined with the
tokenizer's separator token, which depends on the model, so the joining happens here at load time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from pipeline.config import ClassificationTask, TaskParams, TripletTask
from pipeline.text import InputError

SPLITS = ("train", "dev", "test")
FORMATS = (".jsonl", ".csv", ".parquet")


def split_file(folder: str | Path, split: str) -> Path:
    found = [Path(folder) / f"{split}{ext}" for ext in FORMATS if (Path(folder) / f"{split}{ext}").is_file()]
    if len(found) != 1:
        what = "no" if not found else "more than one"
        raise InputError(f"{folder}: {what} {split} file (expected one of {', '.join(split + e for e in FORMATS)})")
    return found[0]


def read_rows(path: Path) -> list[dict]:
    """Rows of a task file as dicts, with their 1-based row number under '_row' for error messages."""
    if path.suffix == ".jsonl":
        rows = []
        with open(path, encoding="utf-8") as f:
            for no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise InputError(f"{path}:{no}: not valid JSON: {err.msg}") from None
                if not isinstance(row, dict):
                    raise InputError(f"{path}:{no}: expected a JSON object, got {type(row).__name__}")
                rows.append({**row, "_row": no})
        return rows
    if path.suffix == ".csv":
        import csv

        with open(path, encoding="utf-8", newline="") as f:
            return [{**row, "_row": no} for no, row in enumerate(csv.DictReader(f), start=2)]
    import pyarrow.parquet as pq

    return [{**row, "_row": no} for no, row in enumerate(pq.read_table(path).to_pylist(), start=1)]


def _text(row: dict, field: str, path: Path, sep: str) -> str:
    if field not in row:
        raise InputError(f"{path}:{row['_row']}: no column '{field}'")
    value = row[field]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = f" {sep} ".join(v.strip() for v in value)
    if not isinstance(value, str):
        raise InputError(f"{path}:{row['_row']}: column '{field}' is {type(value).__name__}, not text")
    if not value.strip():
        raise InputError(f"{path}:{row['_row']}: column '{field}' is empty")
    return value


def _rows(folder: str, split: str) -> tuple[Path, list[dict]]:
    path = split_file(folder, split)
    rows = read_rows(path)
    if not rows:
        raise InputError(f"{path}: no rows")
    return path, rows


def load_triplets(task: TripletTask, split: str, sep: str) -> dict[str, list[str]]:
    path, rows = _rows(task.dir, split)
    fields = {"anchor": task.anchor_field, "positive": task.positive_field, "negative": task.negative_field}
    return {role: [_text(r, f, path, sep) for r in rows] for role, f in fields.items()}


def load_classification(task: ClassificationTask, split: str, sep: str,
                        labels: list[str] | None = None) -> tuple[list[str], list[int], list[str]]:
    """Texts, integer labels and the label names; dev/test must use the train split's `labels`."""
    path, rows = _rows(task.dir, split)
    texts = [_text(r, task.text_field, path, sep) for r in rows]
    raw = []
    for r in rows:
        if task.label_field not in r or r[task.label_field] in (None, ""):
            raise InputError(f"{path}:{r['_row']}: no label in column '{task.label_field}'")
        raw.append(str(r[task.label_field]))
    if labels is None:
        labels = sorted(set(raw))
        if len(labels) < 2:
            raise InputError(f"{path}: only one label ({labels[0]!r}); classification needs at least two")
    index = {name: i for i, name in enumerate(labels)}
    for r, name in zip(rows, raw):
        if name not in index:
            raise InputError(f"{path}:{r['_row']}: label {name!r} does not occur in the train split")
    return texts, [index[name] for name in raw], labels


def task_texts(task: TaskParams, splits=("dev", "test")) -> Iterator[str]:
    """Every text of the active task's given splits, lines kept apart (for the corpus leakage check)."""
    if task.type == "triplet":
        for split in splits:
            for column in load_triplets(task.triplet, split, sep="\n").values():
                yield from column
    else:
        for split in splits:
            path, rows = _rows(task.classification.dir, split)
            yield from (_text(r, task.classification.text_field, path, "\n") for r in rows)

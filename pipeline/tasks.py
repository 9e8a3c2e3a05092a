"""Downstream task files: `<dir>/{train,dev,test}.jsonl` (or .csv / .parquet), read into rows ready to batch.

A text field may hold a string or a list of lines (a multi-line "section"); a list is joined with the
tokenizer's separator token, which depends on the model, so the joining happens here at load time. Every
problem with a file is one line naming the file, the row and the column.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import ClassificationTask, TaskParams, TripletTask
from pipeline.text import InputError

SPLITS = ("train", "dev", "test")
FORMATS = (".jsonl", ".csv", ".parquet")
TRIPLET = ("anchor", "positive", "negative")
EVAL_TRIPLET_SEED = 0  # labeled dev/test rows become fixed triplets, drawn with this seed for every model


@dataclass
class TaskData:
    """Rows of every split. A row is a dict of text columns -- a string, or a (text, text pair) tuple -- and,
    for classification and labeled triplets, an integer 'labels'. `labels` names the integer labels."""

    type: str  # "triplet" | "classification"
    rows: dict[str, list[dict]]
    labels: list[str]
    class_weights: list[float] | None = None  # classification: the loss weight of each label
    mined: bool = False  # triplet: train rows are labeled texts for batch-hard mining; dev/test are triplets
    per_label: int = 2  # batch-hard: texts of one label placed together in a batch

    def columns(self, split: str) -> tuple[str, ...]:
        if self.type == "classification" or (self.mined and split == "train"):
            return ("text",)
        return TRIPLET


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


def field_text(row: dict, field: str, path: Path, sep: str) -> str:
    if field not in row:
        columns = ", ".join(k for k in row if k != "_row")
        raise InputError(f"{path}:{row['_row']}: no column '{field}' (the row has: {columns})")
    value = row[field]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = f" {sep} ".join(v.strip() for v in value if v.strip())
    if not isinstance(value, str):
        raise InputError(f"{path}:{row['_row']}: column '{field}' is {type(value).__name__}, not text")
    if not value.strip():
        raise InputError(f"{path}:{row['_row']}: column '{field}' is empty")
    return value


def _rows(folder: str, split: str) -> tuple[Path, list[dict]]:
    path = split_file(folder, split)
    rows = read_rows(path)
    if not rows:
        raise InputError(f"{path}: no rows (the {split} split is empty)")
    return path, rows


def _raw_labels(rows: list[dict], field: str, path: Path, kind: type | None = None) -> list[str | int]:
    """The label of every row: text or integers, one type per column (and the train split's type, `kind`)."""
    raw = []
    for r in rows:
        value = r.get(field)
        if value is None or value == "":
            raise InputError(f"{path}:{r['_row']}: no label in column '{field}'")
        if type(value) not in (str, int):
            raise InputError(f"{path}:{r['_row']}: column '{field}' is {type(value).__name__} {value!r}; "
                             "a label must be text or an integer")
        kind = kind or type(value)
        if type(value) is not kind:
            raise InputError(f"{path}:{r['_row']}: column '{field}' mixes label types: {value!r} is "
                             f"{type(value).__name__}, earlier labels are {kind.__name__}")
        raw.append(value)
    return raw


def _label_index(raw: list, names: list[str], path: Path, rows: list[dict], field: str) -> list[int]:
    index = {name: i for i, name in enumerate(names)}
    for r, value in zip(rows, raw):
        if str(value) not in index:
            raise InputError(f"{path}:{r['_row']}: column '{field}': label {value!r} does not occur in the "
                             "train split")
    return [index[str(v)] for v in raw]


def load_labeled(folder: str, text_fields: tuple[str, ...], label_field: str, sep: str
                 ) -> tuple[dict[str, list[tuple[str, ...]]], dict[str, list[int]], list[str], dict[str, Path]]:
    """Texts (a tuple of `text_fields` per row), integer labels and the label names (from train: sorted, numbers
    in numeric order) of every split."""
    texts, labels, paths, kind, names = {}, {}, {}, None, []
    for split in SPLITS:
        path, rows = _rows(folder, split)
        texts[split] = [tuple(field_text(r, f, path, sep) for f in text_fields) for r in rows]
        raw = _raw_labels(rows, label_field, path, kind)
        if split == "train":
            kind = type(raw[0])
            names = [str(v) for v in sorted(set(raw))]
            if len(names) < 2:
                raise InputError(f"{path}: column '{label_field}': every row has the label {raw[0]!r}; "
                                 "there must be at least two labels")
        labels[split], paths[split] = _label_index(raw, names, path, rows, label_field), path
    return texts, labels, names, paths


def class_weights(task: ClassificationTask, labels: list[int], names: list[str]) -> list[float] | None:
    """The loss weight of each label: none, 'auto' (n / (classes * count), as scikit-learn's 'balanced'), or
    the user's {label: weight}, which must name every train label and nothing else."""
    if task.class_weights == "none":
        return None
    if task.class_weights == "auto":
        counts = np.bincount(labels, minlength=len(names))
        return [float(len(labels) / (len(names) * c)) for c in counts]
    given = {str(k): v for k, v in task.class_weights.items()}
    unknown, missing = sorted(set(given) - set(names)), [n for n in names if n not in given]
    if unknown or missing:
        raise InputError(f"task.classification.class_weights: " + (f"no label {unknown[0]!r} in the train split"
                         if unknown else f"no weight for label {missing[0]!r}") + f" (labels: {', '.join(names)})")
    return [float(given[n]) for n in names]


def load_classification(task: ClassificationTask, sep: str) -> TaskData:
    fields = (task.text_field, task.text_pair_field) if task.text_pair_field else (task.text_field,)
    texts, labels, names, _ = load_labeled(task.dir, fields, task.label_field, sep)
    rows = {s: [{"text": t if len(t) == 2 else t[0], "labels": y} for t, y in zip(texts[s], labels[s])]
            for s in SPLITS}
    return TaskData("classification", rows, names, class_weights(task, labels["train"], names))


def fixed_triplets(texts: list[str], labels: list[int], path: Path, seed: int = EVAL_TRIPLET_SEED) -> list[dict]:
    """One triplet per row whose label occurs again: the row as anchor, a random other row of its label as
    positive, a random row of another label as negative; drawn from `seed` alone, so every model gets the same."""
    rng = np.random.default_rng(seed)
    labels_arr = np.asarray(labels)
    triplets = []
    for i, (text, y) in enumerate(zip(texts, labels)):
        same = np.flatnonzero(labels_arr == y)
        same, other = same[same != i], np.flatnonzero(labels_arr != y)
        if len(same) and len(other):
            triplets.append({"anchor": text, "positive": texts[rng.choice(same)], "negative": texts[rng.choice(other)]})
    if not triplets:
        raise InputError(f"{path}: no triplet can be formed (no label occurs twice, or there is only one label)")
    return triplets


def load_triplets(task: TripletTask, sep: str) -> TaskData:
    if task.mining == "batch_hard":
        texts, labels, names, paths = load_labeled(task.dir, (task.text_field,), task.label_field, sep)
        counts = Counter(labels["train"])
        if max(counts.values()) < 2:
            raise InputError(f"{paths['train']}: column '{task.label_field}': no label occurs twice, so no batch "
                             "holds a positive pair for batch-hard mining")
        rows = {"train": [{"text": t[0], "labels": y} for t, y in zip(texts["train"], labels["train"])]}
        for split in ("dev", "test"):
            rows[split] = fixed_triplets([t[0] for t in texts[split]], labels[split], paths[split])
        return TaskData("triplet", rows, names, mined=True, per_label=task.texts_per_label)
    fields = dict(zip(TRIPLET, (task.anchor_field, task.positive_field, task.negative_field)))
    rows = {}
    for split in SPLITS:
        path, file_rows = _rows(task.dir, split)
        rows[split] = [{role: field_text(r, f, path, sep) for role, f in fields.items()} for r in file_rows]
    return TaskData("triplet", rows, [])


def load_task(task: TaskParams, sep: str, max_train_rows: int = 0) -> TaskData:
    """Every split of the active task; `max_train_rows` > 0 keeps the first rows of train only."""
    data = load_triplets(task.triplet, sep) if task.type == "triplet" else load_classification(task.classification, sep)
    if max_train_rows:
        data.rows["train"] = data.rows["train"][:max_train_rows]
    return data


def task_texts(task: TaskParams, splits=("dev", "test")) -> Iterator[str]:
    """Every text of the active task's given splits, pair columns included and lines kept apart (for the corpus
    leakage check)."""
    if task.type == "triplet":
        t = task.triplet
        fields = (t.text_field,) if t.mining == "batch_hard" else (t.anchor_field, t.positive_field, t.negative_field)
        folder = t.dir
    else:
        c = task.classification
        fields = tuple(f for f in (c.text_field, c.text_pair_field) if f)
        folder = c.dir
    for split in splits:
        path, rows = _rows(folder, split)
        for r in rows:
            for field in fields:
                yield field_text(r, field, path, "\n")

"""Reading downstream task files: formats, pairs, label maps, class weights, labeled triplets, the leakage texts,
and every kind of bad input as one line naming file, row and column."""

from __future__ import annotations

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import ClassificationTask, TaskParams, TripletTask
from pipeline.tasks import fixed_triplets, load_task, task_texts
from pipeline.text import InputError


def write(folder, split, rows, fmt="jsonl"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{split}.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "csv":
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def classification(folder, **kw) -> TaskParams:
    return TaskParams(type="classification", classification=ClassificationTask(dir=str(folder), **kw))


def three_splits(folder, train, dev=None, test=None, fmt="jsonl"):
    for split, rows in (("train", train), ("dev", dev or train), ("test", test or train)):
        write(folder, split, rows, fmt)


ROWS = [{"text": "good day", "label": "pos"}, {"text": "bad day", "label": "neg"}, {"text": "fine", "label": "pos"}]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_every_format_gives_the_same_rows_and_label_map(tmp_path, fmt):
    three_splits(tmp_path / fmt, ROWS, fmt=fmt)
    data = load_task(classification(tmp_path / fmt), "[SEP]")
    assert data.labels == ["neg", "pos"]  # sorted: one label map for every split and both models
    assert data.rows["train"] == [{"text": "good day", "labels": 1}, {"text": "bad day", "labels": 0},
                                  {"text": "fine", "labels": 1}]


def test_text_pairs_and_integer_labels_in_numeric_order(tmp_path):
    rows = [{"premise": "a cat", "hypothesis": "an animal", "y": 10}, {"premise": "p", "hypothesis": "h", "y": 2},
            {"premise": "x", "hypothesis": ["two", "lines"], "y": 2}]
    three_splits(tmp_path, rows)
    task = classification(tmp_path, text_field="premise", text_pair_field="hypothesis", label_field="y")
    data = load_task(task, "[SEP]")
    assert data.labels == ["2", "10"]
    assert data.rows["dev"][0] == {"text": ("a cat", "an animal"), "labels": 1}
    assert data.rows["dev"][2]["text"] == ("x", "two [SEP] lines")
    # the split stage's leakage check sees both texts of a pair (lines kept apart)
    assert set(task_texts(task)) == {"a cat", "an animal", "p", "h", "x", "two \n lines"}


def test_class_weights_auto_and_explicit(tmp_path):
    rows = [{"text": f"t{i}", "label": "spam" if i < 2 else "ham"} for i in range(8)]
    three_splits(tmp_path, rows)
    auto = load_task(classification(tmp_path, class_weights="auto"), "[SEP]")
    assert auto.labels == ["ham", "spam"] and auto.class_weights == pytest.approx([8 / (2 * 6), 8 / (2 * 2)])
    given = load_task(classification(tmp_path, class_weights={"spam": 5, "ham": 1}), "[SEP]")
    assert given.class_weights == [1.0, 5.0]
    assert load_task(classification(tmp_path), "[SEP]").class_weights is None
    with pytest.raises(InputError, match=r"class_weights: no weight for label 'spam' \(labels: ham, spam\)"):
        load_task(classification(tmp_path, class_weights={"ham": 1}), "[SEP]")
    with pytest.raises(InputError, match=r"class_weights: no label 'eggs' in the train split"):
        load_task(classification(tmp_path, class_weights={"ham": 1, "spam": 2, "eggs": 1}), "[SEP]")


def test_labeled_triplets_for_batch_hard_mining(tmp_path):
    rows = [{"text": f"text {i}", "label": i % 3} for i in range(12)] + [{"text": "alone", "label": 7}]
    three_splits(tmp_path, rows)
    task = TaskParams(type="triplet", triplet=TripletTask(dir=str(tmp_path), mining="batch_hard"))
    data = load_task(task, "[SEP]")
    assert data.mined and data.columns("train") == ("text",)
    assert data.columns("test") == ("anchor", "positive", "negative")
    assert data.rows["train"][4] == {"text": "text 4", "labels": 1}
    test = data.rows["test"]
    assert len(test) == 12  # one triplet per row whose label occurs again: 'alone' has no positive
    by_text = {r["text"]: r["label"] for r in rows}
    for i, t in enumerate(test):
        assert t["anchor"] == f"text {i}" and t["positive"] != t["anchor"]
        assert by_text[t["positive"]] == by_text[t["anchor"]] != by_text[t["negative"]]
    assert load_task(task, "[SEP]").rows["test"] == test  # drawn the same way for every model
    assert set(task_texts(task)) == {r["text"] for r in rows}


def test_fixed_triplets_need_a_label_that_occurs_twice(tmp_path):
    with pytest.raises(InputError, match="dev.jsonl: no triplet can be formed"):
        fixed_triplets(["a", "b"], [0, 1], tmp_path / "dev.jsonl")


# -- bad input: one line naming the file, the row and the column ----------------------------------------------

def error(tmp_path, task_for, train, dev=None, test=None) -> str:
    three_splits(tmp_path, train, dev, test)
    with pytest.raises(InputError) as err:
        load_task(task_for(tmp_path), "[SEP]")
    message = str(err.value)
    assert "\n" not in message
    return message


def test_missing_column(tmp_path):
    msg = error(tmp_path, classification, ROWS, dev=[{"text": "x", "label": "pos"}, {"txt": "y", "label": "neg"}])
    assert msg.endswith("dev.jsonl:2: no column 'text' (the row has: txt, label)")


def test_empty_split(tmp_path):
    (tmp_path / "test.jsonl").parent.mkdir(parents=True, exist_ok=True)
    write(tmp_path, "train", ROWS)
    write(tmp_path, "dev", ROWS)
    (tmp_path / "test.jsonl").write_text("\n")
    with pytest.raises(InputError, match=r"test.jsonl: no rows \(the test split is empty\)"):
        load_task(classification(tmp_path), "[SEP]")


def test_missing_split_file(tmp_path):
    write(tmp_path, "train", ROWS)
    with pytest.raises(InputError, match=r"no dev file \(expected one of dev.jsonl, dev.csv, dev.parquet\)"):
        load_task(classification(tmp_path), "[SEP]")


def test_dev_label_unseen_in_train(tmp_path):
    msg = error(tmp_path, classification, ROWS, dev=[{"text": "a", "label": "pos"}, {"text": "c", "label": "meh"}])
    assert msg.endswith("dev.jsonl:2: column 'label': label 'meh' does not occur in the train split")


def test_one_class_train_set(tmp_path):
    msg = error(tmp_path, classification, [{"text": "a", "label": "pos"}, {"text": "b", "label": "pos"}])
    assert msg.endswith("train.jsonl: column 'label': every row has the label 'pos'; there must be at least two labels")


def test_non_string_text(tmp_path):
    msg = error(tmp_path, classification, ROWS + [{"text": 42, "label": "pos"}])
    assert msg.endswith("train.jsonl:4: column 'text' is int, not text")


def test_triplet_row_with_an_empty_field(tmp_path):
    rows = [{"anchor": "a", "positive": "b", "negative": "c"}, {"anchor": "a", "positive": ["", " "], "negative": "c"}]
    msg = error(tmp_path, lambda d: TaskParams(type="triplet", triplet=TripletTask(dir=str(d))), rows)
    assert msg.endswith("train.jsonl:2: column 'positive' is empty")


def test_label_column_of_mixed_types(tmp_path):
    rows = [{"text": "a", "label": 1}, {"text": "b", "label": 0}, {"text": "c", "label": "1"}]
    msg = error(tmp_path, classification, rows)
    assert msg.endswith("train.jsonl:3: column 'label' mixes label types: '1' is str, earlier labels are int")
    # ... also across splits: a dev file with text labels for an integer-labeled train file
    msg = error(tmp_path, classification, rows[:2], dev=[{"text": "a", "label": "1"}])
    assert msg.endswith("dev.jsonl:1: column 'label' mixes label types: '1' is str, earlier labels are int")


def test_a_float_or_missing_label(tmp_path):
    msg = error(tmp_path, classification, ROWS + [{"text": "x", "label": 0.5}])
    assert msg.endswith("train.jsonl:4: column 'label' is float 0.5; a label must be text or an integer")
    msg = error(tmp_path, classification, ROWS + [{"text": "x", "label": None}])
    assert msg.endswith("train.jsonl:4: no label in column 'label'")


def test_bad_json_line(tmp_path):
    write(tmp_path, "train", ROWS)
    (tmp_path / "train.jsonl").write_text((tmp_path / "train.jsonl").read_text() + "{oops\n")
    write(tmp_path, "dev", ROWS)
    write(tmp_path, "test", ROWS)
    with pytest.raises(InputError, match=r"train.jsonl:4: not valid JSON"):
        load_task(classification(tmp_path), "[SEP]")


def test_csv_rows_are_numbered_as_lines_of_the_file(tmp_path):
    msg = error(tmp_path, classification, ROWS, dev=[{"text": "a", "label": "pos"}, {"text": "b", "label": "x"}])
    assert "dev.jsonl:2:" in msg
    three_splits(tmp_path / "csv", ROWS, dev=[{"text": "a", "label": "pos"}, {"text": "b", "label": "x"}], fmt="csv")
    with pytest.raises(InputError, match=r"dev.csv:3: column 'label': label 'x'"):  # line 1 is the header
        load_task(classification(tmp_path / "csv"), "[SEP]")

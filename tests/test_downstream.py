"""Downstream fine-tuning on the tiny model: both task types run, metrics are right, seeds make runs repeatable."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.config import ClassificationTask, FinetuneParams, TaskParams, TripletTask
from pipeline.downstream import ClassificationModule, distance, finetune_seed, pool, task_rows
from pipeline.text import InputError


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def triplet_task(folder, n=24):
    words = ["river stone water flows", "night stars moon shine", "bread butter jam breakfast"]
    for split in ("train", "dev", "test"):
        rows = [{"anchor": [words[i % 3], "line two"], "positive": [words[i % 3]], "negative": words[(i + 1) % 3]}
                for i in range(n)]
        write_jsonl(folder / f"{split}.jsonl", rows)
    return TaskParams(type="triplet", triplet=TripletTask(dir=str(folder)))


def test_pool_and_distance():
    hidden = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [9.0, 9.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert torch.allclose(pool(hidden, mask, "mean"), torch.tensor([[2.0, 1.0]]))
    assert torch.allclose(pool(hidden, mask, "cls"), torch.tensor([[1.0, 0.0]]))
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    assert torch.allclose(distance(a, b, "cosine"), torch.tensor([1.0]))
    assert torch.allclose(distance(a, b, "euclidean"), torch.tensor([5.0]).sqrt())


def test_triplet_parts_are_joined_with_the_separator(tmp_path):
    task = triplet_task(tmp_path / "t")
    rows, labels = task_rows(task, sep="[SEP]")
    assert rows["train"][0]["anchor"] == "river stone water flows [SEP] line two"
    assert rows["train"][0]["negative"] == "night stars moon shine" and labels == []


def test_classification_metrics_on_known_predictions(tiny_model):
    from pipeline.models import load_encoder

    module = ClassificationModule(load_encoder(str(tiny_model)), FinetuneParams(), total_steps=1, num_labels=3)
    out = {"loss": np.array([0.5, 1.5, 1.0, 1.0]), "pred": np.array([0, 1, 1, 2]), "label": np.array([0, 1, 2, 2])}
    m = module.metrics(out)
    assert m["accuracy"] == 0.75 and m["loss"] == 1.0
    assert m["confusion"] == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    # per-class F1: 1, 2/3, 2/3 -> macro 7/9
    assert m["macro_f1"] == pytest.approx(7 / 9)


def test_unseen_dev_label_is_an_error_naming_file_and_row(tmp_path):
    folder = tmp_path / "c"
    write_jsonl(folder / "train.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}])
    write_jsonl(folder / "dev.jsonl", [{"text": "a", "label": "x"}, {"text": "c", "label": "z"}])
    write_jsonl(folder / "test.jsonl", [{"text": "a", "label": "x"}])
    task = TaskParams(type="classification", classification=ClassificationTask(dir=str(folder)))
    with pytest.raises(InputError, match=r"dev.jsonl:2: label 'z' does not occur in the train split"):
        task_rows(task, sep="[SEP]")


@pytest.mark.parametrize("kind", ["triplet", "classification"])
def test_same_seed_same_result_and_metrics_in_range(tmp_path, tiny_model, kind):
    if kind == "triplet":
        task = triplet_task(tmp_path / "t")
    else:
        folder = tmp_path / "c"
        for split in ("train", "dev", "test"):
            rows = [{"text": f"{w} {w}", "label": w} for w in ["sun", "rain", "snow"] * 6]
            write_jsonl(folder / f"{split}.jsonl", rows)
        task = TaskParams(type="classification", classification=ClassificationTask(dir=str(folder)))
    params = FinetuneParams(seeds=[3], epochs=2, batch_size=8, lr=1e-3, max_seq_len=16)
    rows, labels = task_rows(task, sep="[SEP]")
    first = finetune_seed(str(tiny_model), task, params, 3, rows, len(labels))
    again = finetune_seed(str(tiny_model), task, params, 3, rows, len(labels))
    assert first["test"] == again["test"] and first["curves"] == again["curves"]
    assert 0 <= first["test"]["accuracy"] <= 1 and first["best_epoch"] in (0, 1)
    # curves: dev loss before training (step 0) and after each epoch; train loss every step
    dev_steps = [s for s, _ in first["curves"]["dev/loss"]]
    assert dev_steps[0] == 0 and len(dev_steps) == 3
    assert len(first["curves"]["train/loss"]) == 2 * 3  # 2 epochs x ceil(18 / 8) batches

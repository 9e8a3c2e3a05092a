"""`dapt predict` on fine-tuned folders written by save_finetuned: labels and probabilities, pairs, triplet
ranking, and one-line errors for a wrong call."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
import torch

from pipeline.config import FinetuneParams
from pipeline.downstream import finetune_seed
from pipeline.finetuned import distances, load_finetuned, probabilities, save_finetuned
from pipeline.models import load_tokenizer
from pipeline.tasks import load_task
from stages import predict
from tests.conftest import ROOT, run_command
from tests.test_finetune_learns import Words, one_thread, pair_task, triplet_task  # noqa: F401 (one_thread: autouse)


def finetuned(tmp_path, tiny, task, params: FinetuneParams, weights: bool = True):
    data = load_task(task, "[SEP]", max_train_rows=48)
    result = finetune_seed(str(tiny), data, params, seed=1)
    folder = tmp_path / "finetuned"
    meta = {"task": data.type, "labels": data.labels, "pair": data.type == "classification"
            and isinstance(data.rows["train"][0]["text"], tuple), "finetune": params.model_dump()}
    save_finetuned(folder, result["module"] if weights else None, load_tokenizer(str(tiny)), meta)
    return folder, result["module"].eval()


def call(capsys, *argv) -> tuple[int, str, str]:
    return run_command(capsys, "dapt predict", predict.main, *argv)


@pytest.fixture(scope="module")
def words(tiny_headless):
    return Words(tiny_headless, topics=4, per_topic=5)


def test_pair_classifier_prints_label_and_probabilities(tmp_path, tiny_headless, words, capsys):
    task = pair_task(tmp_path / "mnli", words)
    folder, module = finetuned(tmp_path, tiny_headless, task, FinetuneParams(epochs=1, lr=3e-3, max_seq_len=32))
    premise, hypothesis = "a long premise", words.sentence(random.Random(0), 1)
    out = subprocess.run([sys.executable, "-m", "stages.cli", "predict", "--model", str(folder), premise, "--pair",
                          hypothesis], capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    label, p, rest = out.stdout.strip().split("\t")
    assert label in ("contradiction", "entailment", "neutral") and 0 < float(p) <= 1
    assert sorted(x.split("=")[0] for x in rest.split()) == ["contradiction", "entailment", "neutral"]
    # the saved model answers as the trained one did
    code, out, _ = call(capsys, "--model", str(folder), "--json", premise, "--pair", hypothesis)
    got = json.loads(out)["probabilities"]
    want = probabilities(module, load_tokenizer(str(tiny_headless)), [(premise, hypothesis)], 32)[0]
    labels = load_finetuned(folder)[2]["labels"]
    assert code == 0 and [got[name] for name in labels] == pytest.approx(want.tolist(), abs=1e-5)
    assert json.loads(out)["label"] == labels[int(want.argmax())]
    code, _, err = call(capsys, "--model", str(folder), premise)
    assert code == 2 and err.strip() == f"error: {folder}: a pair model: give one --pair per text"


def test_triplet_model_ranks_texts_by_distance(tmp_path, tiny_headless, words, capsys):
    params = FinetuneParams(epochs=1, mode="frozen", max_seq_len=32)  # frozen: a projection head is saved too
    folder, module = finetuned(tmp_path, tiny_headless, triplet_task(tmp_path / "t", words), params)
    assert (folder / "head.safetensors").is_file()
    texts = ["river stone", "stone river water", "the night", "bread and jam"]
    code, out, _ = call(capsys, "--model", str(folder), "--json", *texts)
    ranked = [json.loads(line) for line in out.splitlines()]
    want = distances(module, load_tokenizer(str(tiny_headless)), texts[0], texts[1:], 32).tolist()
    assert code == 0 and [r["distance"] for r in ranked] == pytest.approx(sorted(want), abs=1e-5)
    assert {r["text"] for r in ranked} == set(texts[1:])
    code, _, err = call(capsys, "--model", str(folder), "only one")
    assert code == 2 and "give two or more" in err


def test_folder_without_weights_or_metadata(tmp_path, tiny_headless, words, capsys):
    folder, _ = finetuned(tmp_path, tiny_headless, triplet_task(tmp_path / "t", words),
                          FinetuneParams(epochs=1, max_seq_len=32), weights=False)
    code, _, err = call(capsys, "--model", str(folder), "a", "b")
    assert code == 2 and err.strip() == (f"error: {folder}: saved without weights; set finetune.save_model: true in "
                                         "params.yaml and rerun the finetune stage")
    code, _, err = call(capsys, "--model", str(tiny_headless), "a", "b")
    assert code == 2 and "no finetune.json, so not a fine-tuned model" in err
    assert torch.is_grad_enabled()

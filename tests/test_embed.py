"""`dapt embed`: pooled (and per-token) vectors of a file's texts in a Parquet file, in input order."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.config import FinetuneParams, TaskParams, TripletTask
from pipeline.downstream import finetune_seed
from pipeline.features import pooled_features
from pipeline.finetuned import save_finetuned, vectors
from pipeline.models import load_encoder, load_tokenizer
from pipeline.tasks import load_task
from stages import embed
from tests.conftest import ROOT, run_command
from tests.test_finetune_learns import one_thread  # noqa: F401 (an autouse fixture)

TEXTS = ["the river runs", "a much longer line about the night and the stars and the moon", "bread", "the river runs"]


def call(capsys, *argv) -> tuple[int, str]:
    code, _, err = run_command(capsys, "dapt embed", embed.main, *argv)
    return code, err


def test_txt_input_gives_pooled_vectors_in_input_order(tmp_path, tiny_headless):
    (tmp_path / "in.txt").write_text("\n".join(TEXTS[:2]) + "\n\n" + "\n".join(TEXTS[2:]) + "\n")
    out = subprocess.run([sys.executable, "-m", "stages.cli", "embed", "--model", str(tiny_headless), "--input",
                          str(tmp_path / "in.txt"), "--output", str(tmp_path / "out.parquet"), "--batch-size", "2"],
                         capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    assert "embed 1-4 of 4" in out.stderr  # the progress bar
    table = pq.read_table(tmp_path / "out.parquet").to_pydict()
    assert table["index"] == [0, 1, 2, 3] and table["text"] == TEXTS  # the blank line is skipped
    got = np.array(table["embedding"], dtype=np.float32)
    encoder, tokenizer = load_encoder(str(tiny_headless)), load_tokenizer(str(tiny_headless))
    want = pooled_features(encoder, tokenizer, TEXTS, 128, "mean").numpy()
    assert got.shape == (4, 32) and np.allclose(got, want, atol=1e-5)
    assert np.allclose(got[0], got[3], atol=1e-5)  # the same text, batched with different neighbours


def test_jsonl_input_with_tokens_and_cls_pooling(tmp_path, tiny_headless, capsys):
    rows = [{"body": t} for t in TEXTS[:3]] + [{"body": ["two", "lines"]}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, err = call(capsys, "--model", str(tiny_headless), "--input", str(tmp_path / "in.jsonl"), "--output",
                     str(tmp_path / "out.parquet"), "--text-field", "body", "--tokens", "--pooling", "cls")
    assert code == 0, err
    table = pq.read_table(tmp_path / "out.parquet").to_pydict()
    tokenizer = load_tokenizer(str(tiny_headless))
    assert table["text"][3] == "two [SEP] lines"
    for text, tokens, vecs, emb in zip(table["text"], table["tokens"], table["token_embeddings"], table["embedding"]):
        assert tokens == tokenizer.convert_ids_to_tokens(tokenizer(text)["input_ids"])  # no padding
        assert len(vecs) == len(tokens) and np.allclose(vecs[0], emb)  # cls pooling: the first token's vector


def test_finetuned_triplet_model_embeds_with_its_projection(tmp_path, tiny_headless, capsys):
    folder = tmp_path / "task"
    folder.mkdir()
    for split in ("train", "dev", "test"):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(
            {"anchor": f"river {i}", "positive": f"stone {i}", "negative": f"night {i}"}) + "\n" for i in range(8)))
    data = load_task(TaskParams(type="triplet", triplet=TripletTask(dir=str(folder))), "[SEP]")
    params = FinetuneParams(epochs=2, mode="frozen", head_lr=0.05, max_seq_len=32)
    module = finetune_seed(str(tiny_headless), data, params, seed=1)["module"].eval()
    tokenizer = load_tokenizer(str(tiny_headless))
    save_finetuned(tmp_path / "ft", module, tokenizer, {"task": "triplet", "labels": [], "pair": False,
                                                         "finetune": params.model_dump()})
    code, err = call(capsys, "--model", str(tmp_path / "ft"), "--input", str(folder / "dev.jsonl"), "--output",
                     str(tmp_path / "out.parquet"), "--text-field", "anchor")
    assert code == 0, err
    got = np.array(pq.read_table(tmp_path / "out.parquet").column("embedding").to_pylist())
    want = vectors(module, tokenizer, [f"river {i}" for i in range(8)], 32).numpy()
    plain = pooled_features(module.encoder, tokenizer, [f"river {i}" for i in range(8)], 32, "mean").numpy()
    assert np.allclose(got, want, atol=1e-5) and not np.allclose(got, plain, atol=1e-3)


@pytest.mark.parametrize("case", ["missing field", "not parquet", "no file", "empty"])
def test_bad_input_is_one_line(tmp_path, tiny_headless, capsys, case):
    (tmp_path / "in.jsonl").write_text('{"text": "a"}\n{"body": "b"}\n')
    (tmp_path / "empty.txt").write_text("\n\n")
    inp, out, want = {
        "missing field": ("in.jsonl", "o.parquet", "in.jsonl:2: no column 'text' (the row has: body)"),
        "not parquet": ("in.jsonl", "o.csv", "o.csv: the output must be a .parquet file"),
        "no file": ("nope.txt", "o.parquet", "nope.txt: no such file"),
        "empty": ("empty.txt", "o.parquet", "empty.txt: no texts")}[case]
    code, err = call(capsys, "--model", str(tiny_headless), "--input", str(tmp_path / inp), "--output",
                     str(tmp_path / out))
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.strip().endswith(want)
    assert not (tmp_path / out).exists()
    assert torch.is_grad_enabled()

"""The evaluate stage run for real (`python -m stages.evaluate`) on two tiny models and hand-made val shards,
static and dynamic: paired per-line losses and fill_mask.json with the same questions for both models."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import yaml

from pipeline.models import load_tokenizer
from pipeline.shards import ShardWriter
from tests.test_fill_mask import other_model  # noqa: F401  (a fixture)
from tests.test_mlm import lines, masked_table, spec_of
from tests.test_pipeline_e2e import env


def workdir(root: Path, tiny_model: Path, other: Path, table: pa.Table, stats: dict, spec=None) -> Path:
    masked = root / "artifacts" / "masked"
    masked.mkdir(parents=True)
    writer = ShardWriter(masked, "val", table.schema, rows_per_shard=40)  # several shards, read as one
    writer.write(table)
    writer.finish()
    (masked / "stats.json").write_text(json.dumps(stats))
    if spec is not None:
        (masked / "spec.json").write_text(spec.to_json())
    for name, source in (("base", tiny_model), ("adapted", other)):
        (root / "models").mkdir(exist_ok=True)
        (root / "models" / name).symlink_to(source)
    (root / "params.yaml").write_text(yaml.safe_dump({"seed": 3, "evaluate": {"batch_tokens": 400,
                                                                             "fill_mask_lines": 6}}))
    return root


def evaluate(root: Path, name: str) -> tuple[dict, list[dict], dict]:
    proc = subprocess.run([sys.executable, "-m", "stages.evaluate", name], cwd=root, env=env(), capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = root / "reports" / "evaluate" / name
    with open(out / "per_line.csv") as f:
        per_line = list(csv.DictReader(f))
    return json.loads((out / "metrics.json").read_text()), per_line, json.loads((out / "fill_mask.json").read_text())


def check_pair(root: Path, n_lines: int) -> None:
    (mb, lb, fb), (ma, la, fa) = evaluate(root, "base"), evaluate(root, "adapted")
    for m in (mb, ma):
        assert set(m) == {"loss", "perplexity", "top1_accuracy", "top10_accuracy", "masked_tokens", "lines"}
        assert m["lines"] == n_lines and 0 <= m["top1_accuracy"] <= m["top10_accuracy"] <= 1
        assert np.isclose(m["perplexity"], np.exp(m["loss"]))
    assert mb["masked_tokens"] == ma["masked_tokens"] and mb["loss"] != ma["loss"]
    assert [(r["line"], r["masked"]) for r in lb] == [(r["line"], r["masked"]) for r in la]  # paired
    assert sum(int(r["masked"]) for r in lb) == mb["masked_tokens"]
    assert np.isclose(sum(float(r["loss_sum"]) for r in lb) / mb["masked_tokens"], mb["loss"], rtol=1e-4)
    assert len(fb["rows"]) == len(fa["rows"]) == 6
    questions = [(r["line"], r["text"], r["target"]) for r in fb["rows"]]
    assert questions == [(r["line"], r["text"], r["target"]) for r in fa["rows"]]
    assert all(len(r["top10"]) == 10 and r["text"].count("[MASK]") == 1 for r in fb["rows"])


def test_static_shards(tmp_path, tiny_model, other_model):  # noqa: F811
    tokenizer = load_tokenizer(str(tiny_model))
    table = masked_table(tokenizer, lines(90), seed=4)
    check_pair(workdir(tmp_path, tiny_model, other_model, table, {"mode": "static"}), 90)


def test_dynamic_shards_are_masked_once_the_same_for_both_models(tmp_path, tiny_model, other_model):  # noqa: F811
    tokenizer = load_tokenizer(str(tiny_model))
    enc = tokenizer(lines(90), truncation=True, max_length=32)["input_ids"]
    raw = pa.table({"input_ids": pa.array(enc, type=pa.list_(pa.int32())),
                    "length": pa.array([len(e) for e in enc], type=pa.int32()), "line": np.arange(len(enc))})
    root = workdir(tmp_path, tiny_model, other_model, raw, {"mode": "dynamic", "train": {"copies": 1}},
                   spec_of(tokenizer))
    check_pair(root, 90)
    with open(root / "reports" / "evaluate" / "base" / "per_line.csv") as f:
        assert all(int(r["masked"]) >= 1 for r in csv.DictReader(f))


def test_a_missing_model_is_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    proc = subprocess.run([sys.executable, "-m", "stages.evaluate", "base"], cwd=tmp_path, env=env(),
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: models/base")

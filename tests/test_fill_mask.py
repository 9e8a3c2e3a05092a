"""pipeline/fill_mask.py and `dapt fill-mask`: the same held-out questions for every model, top-10 side by side."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from pipeline.fill_mask import MASK, fill_text, held_out_rows, pick_positions, side_by_side
from pipeline.masking import IGNORE
from pipeline.models import load_masked_lm, load_tokenizer
from tests.test_mlm import lines, masked_table
from tests.test_pipeline_e2e import env


@pytest.fixture(scope="module")
def other_model(tiny_model, tmp_path_factory):
    """The tiny BERT with different weights: another model over the same tokenizer."""
    model, _ = load_masked_lm(str(tiny_model))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("other")
    model.save_pretrained(folder)
    load_tokenizer(str(tiny_model)).save_pretrained(folder)
    return folder


def test_picks_are_spread_masked_word_positions_and_depend_on_the_shards_only(tiny_model):
    tokenizer = load_tokenizer(str(tiny_model))
    table = masked_table(tokenizer, lines(200))
    picks = pick_positions(table, tokenizer, 20)
    assert len(picks) == 20 and picks == pick_positions(table, tokenizer, 20)
    rows = [r for r, _ in picks]
    assert rows == sorted(set(rows)) and rows[0] < 20 and rows[-1] > 180  # spread over the held-out lines
    labels = table.column("labels").to_pylist()
    originals = [[t if t != IGNORE else i for i, t in zip(ids, lab)]
                 for ids, lab in zip(table.column("input_ids").to_pylist(), labels)]
    for r, pos in picks:
        assert labels[r][pos] != IGNORE
        token = tokenizer.convert_ids_to_tokens(labels[r][pos])
        following = tokenizer.convert_ids_to_tokens(originals[r][pos + 1])
        assert token.isalpha() and len(token) > 1 and not following.startswith("##")  # a whole word
    assert pick_positions(table, tokenizer, 0) == [] and len(pick_positions(table.slice(0, 3), tokenizer, 20)) == 3


def test_held_out_rows_ask_both_models_the_same_questions(tiny_model, other_model):
    tokenizer = load_tokenizer(str(tiny_model))
    table = masked_table(tokenizer, lines(100))
    picks = pick_positions(table, tokenizer, 8)
    a = held_out_rows(load_masked_lm(str(tiny_model))[0], tokenizer, table, picks)["rows"]
    b = held_out_rows(load_masked_lm(str(other_model))[0], tokenizer, table, picks)["rows"]
    assert len(a) == len(b) == 8
    assert [(r["line"], r["text"], r["target"]) for r in a] == [(r["line"], r["text"], r["target"]) for r in b]
    assert [r["top10"] for r in a] != [r["top10"] for r in b]
    originals = table.column("input_ids").to_pylist()
    for row, (r, pos) in zip(a, picks):
        assert row["text"].count(MASK) == 1  # only the picked position; the other masked tokens are restored
        assert row["target"] == tokenizer.convert_ids_to_tokens(table.column("labels")[r].as_py()[pos])
        assert row["line"] == table.column("line")[r].as_py()
        probs = [p for _, p in row["top10"]]
        assert len(probs) == 10 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
        assert "[CLS]" not in row["text"] and originals[r]  # specials other than the mask are not shown


def test_fill_text_answers_every_mask_and_side_by_side_marks_the_truth(tiny_model):
    model, tokenizer = load_masked_lm(str(tiny_model))[0], load_tokenizer(str(tiny_model))
    answers = fill_text(model, tokenizer, f"the {MASK} is dark and {MASK} cold", k=5)
    assert len(answers) == 2 and all(len(a) == 5 for a in answers)
    assert fill_text(model, tokenizer, "no mask here") == []
    table = side_by_side({"A": [("night", 0.5), ("day", 0.25)], "B": [("day", 0.75)]}, target="night")
    rows = table.splitlines()
    assert "A" in rows[0] and "B" in rows[0] and len(rows) == 3
    assert rows[1].startswith(" 1  *night") and "0.500" in rows[1] and "0.750" in rows[1]
    assert rows[2].startswith(" 2   day")


def test_cli_prints_two_columns_of_ten(tiny_model, other_model):
    cmd = [sys.executable, "-m", "stages.cli", "fill-mask", "--model", str(tiny_model), "--model",
           str(other_model), f"the night is {MASK} and cold"]
    proc = subprocess.run(cmd, env=env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(out) if str(tiny_model) in line)
    assert str(other_model) in out[header]
    ranked = out[header + 1:header + 11]
    assert [r.split()[0] for r in ranked] == [str(i) for i in range(1, 11)]
    assert all(len(r.split()) >= 5 for r in ranked)  # rank, then token and probability for each model
    bad = subprocess.run(cmd[:-1] + ["nothing masked"], env=env(), capture_output=True, text=True)
    assert bad.returncode == 2 and "no [MASK]" in bad.stderr
    usage = subprocess.run([sys.executable, "-m", "stages.cli", "fill-mask", "--help"], env=env(),
                           capture_output=True, text=True)
    assert usage.returncode == 0 and "--model" in usage.stdout

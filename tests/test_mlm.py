"""The masked-LM objective on the tiny model: sparse head == full head, training lowers the loss, evaluation."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from pipeline.batching import LengthBucketSampler, MaskedLines, keep_batch
from pipeline.masking import IGNORE, MaskSpec, mask_lines
from pipeline.mlm import MaskedLM, evaluate_masked_lm, masked_logits
from pipeline.models import load_masked_lm, load_tokenizer


def masked_table(tokenizer, texts: list[str], copies: int = 1, seed: int = 0) -> pa.Table:
    enc = tokenizer(texts, truncation=True, max_length=32)["input_ids"]
    offsets = np.concatenate([[0], np.cumsum([len(e) for e in enc])])
    ids = np.concatenate(enc)
    vocab = np.arange(len(tokenizer))
    special = np.array(tokenizer.all_special_ids)
    spec = MaskSpec(tokenizer.mask_token_id, special, vocab[~np.isin(vocab, special)])
    tables = []
    for copy in range(copies):
        out, labels = mask_lines(ids, offsets, np.arange(len(enc)), copy, seed, spec)
        o = offsets.astype(np.int32)
        tables.append(pa.table({
            "input_ids": pa.ListArray.from_arrays(o, out), "labels": pa.ListArray.from_arrays(o, labels),
            "length": np.diff(offsets).astype(np.int32), "line": np.arange(len(enc))}))
    return pa.concat_tables(tables)


def lines(n: int = 64) -> list[str]:
    from tests.conftest import DEMO_CORPUS

    return [t for t in DEMO_CORPUS.read_text().splitlines() if len(t.split()) > 3][:n]


def test_sparse_head_loss_equals_full_head_loss(tiny_model):
    tokenizer = load_tokenizer(str(tiny_model))
    model, missing = load_masked_lm(str(tiny_model))
    assert missing == []
    model.eval()
    batch = MaskedLines(masked_table(tokenizer, lines(16)), tokenizer.pad_token_id).__getitems__(list(range(16)))
    logits, targets, rows = masked_logits(model, batch)
    sparse = F.cross_entropy(logits, targets)
    full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert len(targets) == int((batch["labels"] != IGNORE).sum()) > 0
    assert abs(sparse.item() - full.item()) < 1e-5


def test_headless_base_gets_a_fresh_head_and_says_so(tiny_headless):
    _, missing = load_masked_lm(str(tiny_headless))
    assert any("cls.predictions" in k for k in missing)


def test_training_steps_lower_the_loss_and_evaluation_pairs_lines(tiny_model):
    torch.manual_seed(0)
    tokenizer = load_tokenizer(str(tiny_model))
    model, _ = load_masked_lm(str(tiny_model))
    table = masked_table(tokenizer, lines(128), copies=2)
    data = MaskedLines(table, tokenizer.pad_token_id)

    def eval_loader():
        sampler = LengthBucketSampler(table.column("length").to_numpy(), 32, shuffle=False)
        return DataLoader(data, batch_sampler=sampler, collate_fn=keep_batch)

    before, per_line = evaluate_masked_lm(model, eval_loader())
    # per-line sums add up to the total, and every row is reported once, sorted by line
    assert per_line["masked"].sum() == before["masked_tokens"]
    assert np.isclose(per_line["loss_sum"].sum() / before["masked_tokens"], before["loss"], rtol=1e-5)
    assert len(per_line["line"]) == table.num_rows and np.all(np.diff(per_line["line"]) >= 0)

    module = MaskedLM(model, lr=3e-3, warmup_steps=2, max_steps=30, weight_decay=0.01)
    sampler = LengthBucketSampler(table.column("length").to_numpy(), 16, seed=1)
    trainer = pl.Trainer(max_steps=30, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader(data, batch_sampler=sampler, collate_fn=keep_batch))
    after, _ = evaluate_masked_lm(module.model, eval_loader())
    assert after["loss"] < before["loss"] - 0.5

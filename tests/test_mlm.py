"""The masked-LM objective on tiny models: sparse head == full head (BERT, RoBERTa, DistilBERT), training lowers
the loss, the head warm-up trains the head alone, divergence stops cleanly, a resume continues exactly."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import ModelCheckpoint

from pipeline.batching import DynamicMasking, MaskedLines, masked_loader
from pipeline.masking import IGNORE, MaskSpec, mask_lines
from pipeline.mlm import Diverged, MaskedLM, MaskedShardData, Throughput, evaluate_masked_lm, masked_logits, sparse_head
from pipeline.models import head_parameters, load_masked_lm, load_tokenizer
from pipeline.optim import adamw_warmup_linear, warmup_decay


def spec_of(tokenizer) -> MaskSpec:
    vocab = np.arange(len(tokenizer))
    special = np.array(tokenizer.all_special_ids)
    return MaskSpec(tokenizer.mask_token_id, special, vocab[~np.isin(vocab, special)])


def masked_table(tokenizer, texts: list[str], copies: int = 1, seed: int = 0) -> pa.Table:
    enc = tokenizer(texts, truncation=True, max_length=32)["input_ids"]
    offsets = np.concatenate([[0], np.cumsum([len(e) for e in enc])])
    ids = np.concatenate(enc)
    tables = []
    for copy in range(copies):
        out, labels = mask_lines(ids, offsets, np.arange(len(enc)), copy, seed, spec_of(tokenizer))
        o = offsets.astype(np.int32)
        tables.append(pa.table({
            "input_ids": pa.ListArray.from_arrays(o, out), "labels": pa.ListArray.from_arrays(o, labels),
            "length": np.diff(offsets).astype(np.int32), "line": np.arange(len(enc))}))
    return pa.concat_tables(tables)


def lines(n: int = 64) -> list[str]:
    from tests.conftest import DEMO_CORPUS

    return [t for t in DEMO_CORPUS.read_text().splitlines() if len(t.split()) > 3][:n]


def family_model(family: str, tiny_model):
    """A tiny masked-LM of `family` over the tiny tokenizer's vocabulary, built from a config."""
    from transformers import (BertForMaskedLM, DistilBertConfig, DistilBertForMaskedLM, RobertaConfig,
                              RobertaForMaskedLM)

    tokenizer = load_tokenizer(str(tiny_model))
    torch.manual_seed(0)
    if family == "bert":
        return BertForMaskedLM.from_pretrained(tiny_model), tokenizer
    size = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    if family == "roberta":
        config = RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                               max_position_embeddings=160, **size)
        return RobertaForMaskedLM(config), tokenizer
    config = DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=128, **size)
    return DistilBertForMaskedLM(config), tokenizer


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_sparse_head_loss_equals_full_head_loss(family, tiny_model):
    model, tokenizer = family_model(family, tiny_model)
    assert sparse_head(model) is not None  # the sparse path, not the fallback, is under test
    model.eval()
    batch = MaskedLines(masked_table(tokenizer, lines(16)), tokenizer.pad_token_id).__getitems__(list(range(16)))
    logits, targets, rows = masked_logits(model, batch)
    sparse = F.cross_entropy(logits, targets)
    full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert len(targets) == int((batch["labels"] != IGNORE).sum()) > 0
    assert logits.shape == (len(targets), len(tokenizer))
    assert abs(sparse.item() - full.item()) < 1e-5
    assert rows.tolist() == (batch["labels"] != IGNORE).nonzero()[:, 0].tolist()


def test_headless_base_gets_a_fresh_head_and_says_so(tiny_headless):
    model, missing = load_masked_lm(str(tiny_headless))
    assert any("cls.predictions" in k for k in missing)
    head = head_parameters(model)
    # the transform and the output bias; the output matrix is the (tied) input embedding, part of the encoder
    assert 0 < sum(p.numel() for p in head) < sum(p.numel() for p in model.parameters()) / 4
    assert all(id(p) != id(model.bert.embeddings.word_embeddings.weight) for p in head)


def fit(module, loader, steps: int, **kwargs) -> pl.Trainer:
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                         **kwargs)
    trainer.fit(module, loader)
    return trainer


def test_training_steps_lower_the_loss_and_evaluation_pairs_lines(tiny_model):
    torch.manual_seed(0)
    tokenizer = load_tokenizer(str(tiny_model))
    model, _ = load_masked_lm(str(tiny_model))
    table = masked_table(tokenizer, lines(128), copies=2)

    before, per_line = evaluate_masked_lm(model, masked_loader(table, tokenizer.pad_token_id, 1024))
    # per-line sums add up to the total, and every row is reported once, sorted by line
    assert per_line["masked"].sum() == before["masked_tokens"]
    assert np.isclose(per_line["loss_sum"].sum() / before["masked_tokens"], before["loss"], rtol=1e-5)
    assert len(per_line["line"]) == table.num_rows and np.all(np.diff(per_line["line"]) >= 0)

    module = MaskedLM(model, lr=3e-3, warmup_steps=2, total_steps=30, weight_decay=0.01)
    throughput = Throughput(every=5)
    fit(module, masked_loader(table, tokenizer.pad_token_id, 512, seed=1, shuffle=True), 30,
        callbacks=[throughput])
    after, _ = evaluate_masked_lm(module.model, masked_loader(table, tokenizer.pad_token_id, 1024))
    assert after["loss"] < before["loss"] - 0.5
    t = throughput.totals
    assert t["batches_per_rank"] == [30] and 0 <= t["padding_fraction"] < 0.05 and t["tokens_per_second"] > 0


def test_head_warmup_trains_the_head_alone_on_the_eval_mode_encoder(tiny_headless):
    torch.manual_seed(0)
    tokenizer = load_tokenizer(str(tiny_headless))
    model, _ = load_masked_lm(str(tiny_headless))
    table = masked_table(tokenizer, lines(128))
    encoder = {k: v.clone() for k, v in model.base_model.state_dict().items()}
    head = {id(p): p.detach().clone() for p in head_parameters(model)}
    module = MaskedLM(model, lr=3e-3, warmup_steps=2, total_steps=20, weight_decay=0.01, head_only=True)

    class EncoderMode(pl.Callback):
        modes: list = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.modes.append((pl_module.model.base_model.training, pl_module.model.cls.training))

    mode = EncoderMode()
    before, _ = evaluate_masked_lm(model, masked_loader(table, tokenizer.pad_token_id, 1024))
    fit(module, masked_loader(table, tokenizer.pad_token_id, 256, seed=1, shuffle=True), 20, callbacks=[mode])
    after, _ = evaluate_masked_lm(model, masked_loader(table, tokenizer.pad_token_id, 1024))
    assert all(torch.equal(encoder[k], v) for k, v in model.base_model.state_dict().items())
    assert all(not torch.equal(head[id(p)], p) for p in head_parameters(model))
    assert set(mode.modes) == {(False, True)}  # encoder without dropout, head training
    assert after["loss"] < before["loss"]
    # the adapting module that follows trains everything again
    MaskedLM(model, lr=1e-3, warmup_steps=0, total_steps=1, weight_decay=0.0)
    assert all(p.requires_grad for p in model.parameters())


def test_schedules_warm_up_then_decay_to_zero():
    linear, cosine = warmup_decay(4, 14, "linear"), warmup_decay(4, 14, "cosine")
    assert [linear(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0] == [cosine(s) for s in range(4)]
    assert linear(9) == pytest.approx(0.5) and cosine(9) == pytest.approx(0.5)
    assert linear(6) == pytest.approx(0.8) and cosine(6) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.2)))
    assert linear(14) == cosine(14) == pytest.approx(0.0) and linear(20) == 0.0
    with pytest.raises(ValueError, match="schedule"):
        warmup_decay(1, 2, "step")
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    out = adamw_warmup_linear(model, 1.0, 0.1, 2, 10)  # the fine-tuning stage's call, unchanged
    groups = out["optimizer"].param_groups
    assert [len(g["params"]) for g in groups] == [1, 3] and [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert out["lr_scheduler"]["scheduler"].lr_lambdas[0](5) == pytest.approx(5 / 8)


def test_a_nan_loss_stops_training_and_nan_weights_are_never_checkpointed(tiny_model, tmp_path):
    tokenizer = load_tokenizer(str(tiny_model))
    model, _ = load_masked_lm(str(tiny_model))
    table = masked_table(tokenizer, lines(64))

    class Poison(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 3:
                with torch.no_grad():
                    pl_module.model.bert.embeddings.word_embeddings.weight[:] = float("nan")

    module = MaskedLM(model, lr=1e-3, warmup_steps=0, total_steps=10, weight_decay=0.0)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0, every_n_train_steps=2)
    trainer = pl.Trainer(max_steps=10, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[checkpoint, Poison()])
    with pytest.raises(Diverged, match="loss is nan at step 3"):
        trainer.fit(module, masked_loader(table, tokenizer.pad_token_id, 256, shuffle=True))
    kept = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert kept["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values())
    with pytest.raises(Diverged, match="weights are no longer finite"):
        module.on_save_checkpoint({})


class Crash(Exception):
    pass


class Seen(pl.Callback):
    """The lines of every training batch, in order, and the step they were trained at."""

    def __init__(self, crash_at: int = 0):
        self.crash_at, self.batches = crash_at, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.crash_at and trainer.global_step == self.crash_at:
            raise Crash  # the process dies here, without any further checkpoint
        self.batches.append((trainer.global_step, batch["line"].tolist()))


@pytest.mark.parametrize("batch_tokens, per_epoch", [(500, 4), (400, 5)])  # step 8 ends an epoch / is mid-epoch
def test_a_resumed_run_trains_on_the_same_batches_and_ends_with_the_same_weights(tiny_model, tmp_path,
                                                                                  batch_tokens, per_epoch):
    tokenizer = load_tokenizer(str(tiny_model))
    table = masked_table(tokenizer, lines(96))  # a few batches an epoch: the 14 steps cross epoch boundaries

    def run(folder, seen: Seen, resume: str | None = None):
        pl.seed_everything(3, verbose=False)
        model, _ = load_masked_lm(str(tiny_model))  # dropout 0.1: the random state matters too
        module = MaskedLM(model, lr=2e-3, warmup_steps=2, total_steps=14, weight_decay=0.01)
        trainer = pl.Trainer(max_steps=14, accelerator="cpu", logger=False, enable_progress_bar=False,
                             enable_model_summary=False, use_distributed_sampler=False, deterministic=True,
                             callbacks=[seen, ModelCheckpoint(dirpath=folder, save_last=True, save_top_k=0,
                                                              every_n_train_steps=4)])
        data = MaskedShardData(table, table, tokenizer.pad_token_id, batch_tokens=batch_tokens, seed=5)
        trainer.fit(module, datamodule=data, ckpt_path=resume)
        return module

    whole = Seen()
    expected = run(tmp_path / "a", whole).model.state_dict()
    assert len(masked_loader(table, tokenizer.pad_token_id, batch_tokens)) == per_epoch
    assert len(whole.batches) == 14 and len({tuple(b) for _, b in whole.batches}) < 14  # epochs repeat lines
    crashed = Seen(crash_at=10)
    with pytest.raises(Crash):
        run(tmp_path / "b", crashed)  # step 8 was the last checkpoint
    assert [s for s, _ in crashed.batches] == list(range(10))
    resumed = Seen()
    got = run(tmp_path / "b", resumed, resume=str(tmp_path / "b" / "last.ckpt")).model.state_dict()
    assert resumed.batches == whole.batches[8:]
    assert all(torch.allclose(expected[k], got[k], atol=1e-6) for k in expected)


def test_dynamic_masking_draws_a_new_mask_each_epoch_the_same_on_every_rank(tiny_model):
    tokenizer = load_tokenizer(str(tiny_model))
    enc = tokenizer(lines(40), truncation=True, max_length=32)["input_ids"]
    raw = pa.table({"input_ids": pa.array(enc, type=pa.list_(pa.int32())),
                    "length": pa.array([len(e) for e in enc], type=pa.int32()), "line": np.arange(len(enc))})
    dynamic = DynamicMasking(spec_of(tokenizer), seed=11)

    def epoch_batches(epoch, rank=0, world=1):
        loader = masked_loader(raw, tokenizer.pad_token_id, 300, seed=2, shuffle=True, rank=rank,
                               world_size=world, dynamic=dynamic)
        loader.batch_sampler.set_epoch(epoch)  # what Lightning does at every epoch
        return {line: (ids[m].tolist(), lab[m].tolist())
                for b in loader for line, ids, lab, m in zip(b["line"].tolist(), b["input_ids"], b["labels"],
                                                              b["attention_mask"].bool())}

    e0, e1 = epoch_batches(0), epoch_batches(1)
    assert e0.keys() == e1.keys() == set(range(len(enc)))
    assert e0 == epoch_batches(0)  # deterministic
    assert sum(e0[i] != e1[i] for i in e0) > len(enc) / 2  # a new mask every epoch
    for line, (ids, labels) in e0.items():  # labels hold the true tokens where masked, nothing elsewhere
        chosen = [i for i, lab in enumerate(labels) if lab != IGNORE]
        assert chosen and all(labels[i] == enc[line][i] for i in chosen)
        assert all(ids[i] == enc[line][i] for i in range(len(ids)) if i not in chosen)
    ranks = {**epoch_batches(1, 0, 2), **epoch_batches(1, 1, 2)}  # another batch composition, same masks
    assert all(ranks[i] == e1[i] for i in ranks)

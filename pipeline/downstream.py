"""Downstream fine-tuning: a triplet objective (are two sections from the same piece?) or classification.

Both models -- base and adapted -- go through exactly this code with the same seeds, so they see the same
data order, the same dropout masks where the architectures allow, and the same hyperparameters.
"""

from __future__ import annotations

import copy

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from pipeline.config import FinetuneParams, TaskParams
from pipeline.models import load_encoder, load_tokenizer
from pipeline.optim import adamw_warmup_linear
from pipeline.tasks import SPLITS, load_classification, load_triplets
from pipeline.tracking import Curves


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    if how == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


def distance(a: torch.Tensor, b: torch.Tensor, how: str) -> torch.Tensor:
    if how == "cosine":
        return 1 - F.cosine_similarity(a, b, dim=-1)
    return (a - b).norm(dim=-1)


class Downstream(pl.LightningModule):
    """Shared plumbing: encode + pool, optimizer, and dev/test metrics gathered over a whole epoch."""

    def __init__(self, encoder: nn.Module, params: FinetuneParams, total_steps: int):
        super().__init__()
        self.encoder, self.params, self.total_steps = encoder, params, total_steps
        self._outputs: list[dict] = []
        self.results: dict[str, dict] = {}

    def embed(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.encoder(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])[0]
        return pool(hidden, inputs["attention_mask"], self.params.pooling)

    def outputs(self, batch) -> dict[str, torch.Tensor]:  # per example: "loss", and what metrics need
        raise NotImplementedError

    def metrics(self, out: dict[str, np.ndarray]) -> dict:
        raise NotImplementedError

    def training_step(self, batch, batch_idx):
        loss = self.outputs(batch)["loss"].mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["labels"]) if "labels" in batch else None)
        return loss

    def _collect(self, batch) -> None:
        self._outputs.append({k: v.detach().float().cpu() for k, v in self.outputs(batch).items()})

    def _summarize(self, prefix: str) -> dict:
        out = {k: torch.cat([o[k] for o in self._outputs]).numpy() for k in self._outputs[0]}
        self._outputs.clear()
        metrics = self.metrics(out)
        self.results[prefix] = metrics
        self.log_dict({f"{prefix}/{k}": v for k, v in metrics.items() if np.isscalar(v)}, prog_bar=prefix == "dev")
        return metrics

    def validation_step(self, batch, batch_idx):
        self._collect(batch)

    def test_step(self, batch, batch_idx):
        self._collect(batch)

    def on_validation_epoch_end(self):
        self._summarize("dev")

    def on_test_epoch_end(self):
        self._summarize("test")

    def configure_optimizers(self):
        warmup = int(self.params.warmup_ratio * self.total_steps)
        return adamw_warmup_linear(self, self.params.lr, self.params.weight_decay, warmup, self.total_steps)


class TripletModule(Downstream):
    def outputs(self, batch):
        a, p, n = (self.embed(batch[role]) for role in ("anchor", "positive", "negative"))
        d_ap, d_an = distance(a, p, self.params.distance), distance(a, n, self.params.distance)
        return {"loss": F.relu(d_ap - d_an + self.params.margin), "correct": (d_ap < d_an).float()}

    def metrics(self, out):
        return {"loss": float(out["loss"].mean()), "accuracy": float(out["correct"].mean())}


class ClassificationModule(Downstream):
    def __init__(self, encoder: nn.Module, params: FinetuneParams, total_steps: int, num_labels: int):
        super().__init__(encoder, params, total_steps)
        self.head = nn.Sequential(nn.Dropout(0.1), nn.Linear(encoder.config.hidden_size, num_labels))
        self.num_labels = num_labels

    def outputs(self, batch):
        logits = self.head(self.embed(batch["text"]))
        loss = F.cross_entropy(logits.float(), batch["labels"], reduction="none")
        return {"loss": loss, "pred": logits.argmax(-1), "label": batch["labels"]}

    def metrics(self, out):
        pred, label = out["pred"].astype(int), out["label"].astype(int)
        confusion = np.zeros((self.num_labels, self.num_labels), dtype=int)
        np.add.at(confusion, (label, pred), 1)
        tp = np.diag(confusion).astype(float)
        precision = tp / np.maximum(confusion.sum(0), 1)
        recall = tp / np.maximum(confusion.sum(1), 1)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)
        present = confusion.sum(1) > 0  # macro-F1 over the classes that occur in this split
        return {"loss": float(out["loss"].mean()), "accuracy": float((pred == label).mean()),
                "macro_f1": float(f1[present].mean()), "confusion": confusion.tolist()}


class TextBatches:
    """collate_fn: tokenize a list of row dicts, one tokenizer call per text column."""

    def __init__(self, tokenizer, max_len: int, text_columns: tuple[str, ...]):
        self.tokenizer, self.max_len, self.text_columns = tokenizer, max_len, text_columns

    def __call__(self, rows: list[dict]) -> dict:
        batch = {}
        for col in self.text_columns:
            enc = self.tokenizer([r[col] for r in rows], truncation=True, max_length=self.max_len,
                                 padding=True, return_tensors="pt")
            batch[col] = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        if "labels" in rows[0]:
            batch["labels"] = torch.tensor([r["labels"] for r in rows])
        return batch


def loader(rows: list[dict], collate: TextBatches, batch_size: int, seed: int | None) -> DataLoader:
    """seed=None: fixed order (evaluation); otherwise shuffled by a generator seeded only by `seed`, so two
    models fine-tuned with the same seed see the batches in the same order."""
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return DataLoader(rows, batch_size=batch_size, shuffle=seed is not None, generator=generator,
                      collate_fn=collate, num_workers=0)


class KeepBest(pl.Callback):
    """Keep (in memory) the weights of the epoch with the lowest dev loss; restore them before testing."""

    def __init__(self):
        self.best_loss, self.best_epoch, self.state, self.metrics = float("inf"), -1, None, {}

    def on_validation_end(self, trainer, pl_module):  # runs after the module has computed its dev metrics
        if trainer.state.fn != "fit" or trainer.sanity_checking:
            return  # a stand-alone validate() before training is not a candidate
        metrics = pl_module.results["dev"]
        if metrics["loss"] < self.best_loss:
            self.best_loss, self.best_epoch, self.metrics = metrics["loss"], trainer.current_epoch, metrics
            self.state = copy.deepcopy({k: v.detach().cpu() for k, v in pl_module.state_dict().items()})

    def restore(self, pl_module: pl.LightningModule) -> None:
        if self.state is not None:
            pl_module.load_state_dict(self.state)


def task_rows(task: TaskParams, sep: str, max_train_rows: int = 0) -> tuple[dict[str, list[dict]], list[str]]:
    """Rows of every split as dicts of text columns (+ integer 'labels'), and the label names (classification)."""
    if task.type == "triplet":
        splits = {s: load_triplets(task.triplet, s, sep) for s in SPLITS}
        rows = {s: [dict(zip(cols, vals)) for vals in zip(*cols.values())] for s, cols in splits.items()}
        label_names: list[str] = []
    else:
        texts, labels, label_names = load_classification(task.classification, "train", sep)
        rows = {"train": [{"text": t, "labels": y} for t, y in zip(texts, labels)]}
        for split in ("dev", "test"):
            texts, labels, _ = load_classification(task.classification, split, sep, label_names)
            rows[split] = [{"text": t, "labels": y} for t, y in zip(texts, labels)]
    if max_train_rows:
        rows["train"] = rows["train"][:max_train_rows]
    return rows, label_names


def finetune_seed(model_dir: str, task: TaskParams, params: FinetuneParams, seed: int,
                  rows: dict[str, list[dict]], num_labels: int, logger=None) -> dict:
    """Fine-tune one copy of the encoder in `model_dir` with one seed; test the best dev epoch.

    Returns {"dev": best dev metrics, "test": test metrics, "best_epoch", "curves": {name: [(step, value)]}}.
    """
    pl.seed_everything(seed, workers=True, verbose=False)
    tokenizer, encoder = load_tokenizer(model_dir), load_encoder(model_dir).train()
    columns = ("anchor", "positive", "negative") if task.type == "triplet" else ("text",)
    collate = TextBatches(tokenizer, params.max_seq_len, columns)
    train = loader(rows["train"], collate, params.batch_size, seed)
    dev, test = (loader(rows[s], collate, params.batch_size * 2, None) for s in ("dev", "test"))
    total = params.epochs * len(train)
    module = (TripletModule(encoder, params, total) if task.type == "triplet"
              else ClassificationModule(encoder, params, total, num_labels))
    curves, best = Curves(prefixes=("dev/",)), KeepBest()
    trainer = pl.Trainer(max_epochs=params.epochs, accelerator="auto", devices=1, logger=logger or False,
                         callbacks=[curves, best], enable_checkpointing=False, num_sanity_val_steps=0,
                         deterministic=True, log_every_n_steps=1, enable_model_summary=False)
    trainer.validate(module, dev, verbose=False)  # the dev loss before any fine-tuning: step 0 of the curves
    trainer.fit(module, train, dev)
    best.restore(module)
    trainer.test(module, test, verbose=False)
    return {"dev": best.metrics, "test": module.results["test"], "best_epoch": best.best_epoch,
            "curves": {k: v for k, v in curves.series.items()}}

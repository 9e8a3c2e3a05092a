"""The masked-LM objective: a sparse prediction head, the Lightning module that trains it, and its evaluation.

The head runs on masked positions only. With a 30k vocabulary the head costs as much as the encoder on short
lines, and ~85% of positions carry no loss, so skipping them is most of the FLOPs saved.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from pipeline.batching import LengthBucketSampler, MaskedLines, keep_batch
from pipeline.masking import IGNORE
from pipeline.optim import adamw_warmup_linear


def sparse_head(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The model's MLM head as a function of hidden states, for the families we know; None otherwise."""
    if hasattr(model, "cls") and hasattr(model.cls, "predictions"):  # BERT, MiniLM
        return model.cls
    if hasattr(model, "lm_head") and model.config.model_type in ("roberta", "xlm-roberta", "camembert"):
        return model.lm_head
    if model.config.model_type == "distilbert":
        return lambda h: model.vocab_projector(model.vocab_layer_norm(model.activation(model.vocab_transform(h))))
    return None


def masked_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits at masked positions only: (logits [M, V], targets [M], batch row of each [M])."""
    labels = batch["labels"]
    selected = labels != IGNORE
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    head = sparse_head(model)
    if head is None:  # an unknown family: full head, then keep the masked positions
        logits = model(**inputs).logits[selected]
    else:
        hidden = model.base_model(**inputs)[0]
        logits = head(hidden[selected])
    return logits, labels[selected], selected.nonzero()[:, 0]


class MaskedLM(pl.LightningModule):
    def __init__(self, model: nn.Module, lr: float, warmup_steps: int, max_steps: int, weight_decay: float):
        super().__init__()
        self.model = model.train()  # transformers loads in eval mode; dropout belongs to training
        self.lr, self.warmup_steps, self.max_steps, self.weight_decay = lr, warmup_steps, max_steps, weight_decay

    def training_step(self, batch, batch_idx):
        logits, targets, _ = masked_logits(self.model, batch)
        loss = F.cross_entropy(logits.float(), targets)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"pretrain: loss is {loss.item()} at step {self.global_step}; stopping. The last good checkpoint "
                "is kept; lower pretrain.lr or use precision 32-true"
            )
        self.log("train/loss", loss, prog_bar=True, batch_size=len(targets))
        self.log("train/lr", self.lr_schedulers().get_last_lr()[0])
        return loss

    def validation_step(self, batch, batch_idx):
        logits, targets, _ = masked_logits(self.model, batch)
        self.log("val/loss", F.cross_entropy(logits.float(), targets), prog_bar=True,
                 batch_size=len(targets), sync_dist=True)

    def configure_optimizers(self):
        return adamw_warmup_linear(self.model, self.lr, self.weight_decay, self.warmup_steps, self.max_steps)


@torch.no_grad()
def evaluate_masked_lm(model: nn.Module, loader, device: torch.device | str = "cpu") -> tuple[dict, dict]:
    """Held-out MLM figures over every masked token, and per-line sums so two models can be compared paired.

    Returns (metrics, per_line) where per_line maps 'line' / 'masked' / 'loss_sum' to numpy arrays.
    """
    model.eval().to(device)
    lines, counts, sums = [], [], []
    total, loss_sum, top1, top10 = 0, 0.0, 0, 0
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        logits, targets, rows = masked_logits(model, batch)
        losses = F.cross_entropy(logits.float(), targets, reduction="none")
        top = logits.topk(10, dim=-1).indices
        top1 += (top[:, 0] == targets).sum().item()
        top10 += (top == targets[:, None]).any(-1).sum().item()
        total += len(targets)
        loss_sum += losses.sum().item()
        n_rows = len(batch["line"])
        lines.append(batch["line"].cpu().numpy())
        counts.append(torch.bincount(rows, minlength=n_rows).cpu().numpy())
        sums.append(torch.zeros(n_rows, device=losses.device).index_add_(0, rows, losses).cpu().numpy())
    if total == 0:
        raise ValueError("evaluate: no masked tokens in the held-out shards")
    loss = loss_sum / total
    metrics = {"loss": loss, "perplexity": math.exp(min(loss, 700)), "top1_accuracy": top1 / total,
               "top10_accuracy": top10 / total, "masked_tokens": total}
    per_line = {"line": np.concatenate(lines), "masked": np.concatenate(counts), "loss_sum": np.concatenate(sums)}
    order = np.argsort(per_line["line"], kind="stable")
    return metrics, {k: v[order] for k, v in per_line.items()}


class MaskedShardData(pl.LightningDataModule):
    """Train/val loaders over masked shards; the batch sampler learns its rank once DDP is set up."""

    def __init__(self, train, val, pad_id: int, batch_size: int, seed: int):
        super().__init__()
        self.train, self.val, self.pad_id, self.batch_size, self.seed = train, val, pad_id, batch_size, seed

    def _loader(self, table, shuffle: bool) -> DataLoader:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        sampler = LengthBucketSampler(table.column("length").to_numpy(), self.batch_size, self.seed,
                                      shuffle=shuffle, rank=rank, world_size=world)
        return DataLoader(MaskedLines(table, self.pad_id), batch_sampler=sampler, collate_fn=keep_batch)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val, shuffle=False)

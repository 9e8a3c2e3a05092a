"""The masked-LM objective: a sparse prediction head, the Lightning module that trains it, and its evaluation.

The head runs on masked positions only. With a 30k vocabulary the head costs as much as the encoder on short
lines, and ~85% of positions carry no loss, so skipping them is most of the FLOPs saved.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.plugins.io import TorchCheckpointIO
from torch import nn

from pipeline.batching import DynamicMasking, masked_loader
from pipeline.io import atomic_file
from pipeline.masking import IGNORE
from pipeline.models import head_parameters
from pipeline.optim import adamw_warmup_linear


class Diverged(RuntimeError):
    """The loss or the weights stopped being finite numbers; training stops, the last good checkpoint stays."""


class CheckpointBeside(TorchCheckpointIO):
    """Checkpoints written to a temporary sibling and renamed into place. Lightning's own save goes through a
    file in TMPDIR moved into place: a copy, not a rename, when /tmp is another file system (a kill mid-copy
    truncates last.ckpt), and a full /tmp fails a run whose own disk has room."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        with atomic_file(path, "wb") as f:
            torch.save(checkpoint, f)


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
    """Masked-LM training of an HF model. head_only=True trains the MLM head alone: the encoder is frozen and
    kept in eval mode, so the head learns the features the base encoder really produces (and no encoder
    gradients are computed: a head warm-up step costs about a forward pass)."""

    def __init__(self, model: nn.Module, lr: float, warmup_steps: int, total_steps: int, weight_decay: float,
                 schedule: str = "linear", head_only: bool = False):
        super().__init__()
        self.model = model.train()  # transformers loads in eval mode; dropout belongs to training
        self.lr, self.warmup_steps, self.total_steps = lr, warmup_steps, total_steps
        self.weight_decay, self.schedule, self.head_only = weight_decay, schedule, head_only
        head = {id(p) for p in head_parameters(model)}
        for param in model.parameters():
            param.requires_grad = not head_only or id(param) in head

    def on_train_start(self):
        # Lightning keeps the modes modules had before fit (an evaluation may have left eval mode behind).
        self.model.train()
        if self.head_only:
            self.model.base_model.eval()

    def training_step(self, batch, batch_idx):
        logits, targets, _ = masked_logits(self.model, batch)
        # The mean over this micro-batch's masked tokens. Token-budget batches hold nearly the same number of
        # tokens, hence of masked tokens, so averaging these means over devices and accumulation steps weighs
        # every masked token almost equally.
        loss = F.cross_entropy(logits.float(), targets)
        bad = (~torch.isfinite(loss.detach())).float()
        if self.trainer.world_size > 1:  # every rank must stop together, or the others hang in all-reduce
            bad = self.trainer.strategy.reduce(bad, reduce_op="sum")
        if bad.item() > 0:
            raise Diverged(f"the loss is {loss.item()} at step {self.global_step}")
        n = len(targets)
        self.log("head/loss" if self.head_only else "train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=n)
        self.log("train/padding", 1.0 - batch["real_tokens"] / max(1, batch["padded_tokens"]), batch_size=n)
        return loss

    def validation_step(self, batch, batch_idx):
        logits, targets, _ = masked_logits(self.model, batch)
        self.log("val/loss", F.cross_entropy(logits.float(), targets), prog_bar=True,
                 batch_size=len(targets), sync_dist=True)

    def configure_optimizers(self):
        return adamw_warmup_linear(self.model, self.lr, self.weight_decay, self.warmup_steps, self.total_steps,
                                   self.schedule, fused=self.device.type in ("cpu", "cuda"))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # A checkpoint is only worth resuming from if its weights are numbers: refuse to overwrite the last good
        # one with a broken one.
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            raise Diverged(f"the weights are no longer finite after step {self.global_step}")
        # Lightning does not save the random state; dropout then draws the same masks after a resume.
        checkpoint["rng_torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            checkpoint["rng_cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "rng_torch" in checkpoint:
            torch.set_rng_state(checkpoint["rng_torch"])
        if "rng_cuda" in checkpoint and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(checkpoint["rng_cuda"])


class Throughput(pl.Callback):
    """Real (non-pad) tokens per second and the padding fraction while training, and totals at the end.

    `totals` after training: batches each rank trained on, real and padded tokens over all ranks, training
    seconds (validation excluded) and the step training started from. The counts are saved in checkpoints,
    so a resumed run reports the whole run.
    """

    def __init__(self, every: int = 10):
        self.every = every
        self.batches, self.real, self.padded, self.seconds = 0, 0, 0, 0.0
        self.start_step = 0
        self.totals: dict = {}

    def _seconds(self) -> float:
        if not hasattr(self, "start"):  # training never started (a resumed run that was already complete)
            return self.seconds
        return self.seconds + time.perf_counter() - self.start - self.val_seconds

    def on_train_start(self, trainer, pl_module):
        self.start_step = trainer.global_step
        self.val_seconds = 0.0
        self.start = self.window_start = time.perf_counter()
        self.window_real = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        real = batch["real_tokens"]
        self.batches += 1
        self.real += real
        self.padded += batch["padded_tokens"]
        self.window_real += real
        if self.batches % self.every == 0:
            now = time.perf_counter()
            pl_module.log("train/tokens_per_s_device", self.window_real / max(1e-9, now - self.window_start),
                          prog_bar=True)
            self.window_start, self.window_real = now, 0

    def on_validation_start(self, trainer, pl_module):
        self.val_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module):
        if trainer.training:
            self.val_seconds += time.perf_counter() - self.val_start
            self.window_start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        counts = torch.tensor([self.batches, self.real, self.padded], dtype=torch.int64, device=pl_module.device)
        self.totals = self.summary(pl_module.all_gather(counts).reshape(-1, 3).cpu())

    def summary(self, per_rank: torch.Tensor | None = None) -> dict:
        """The totals from per-rank (batches, real, padded) counts; this rank's alone by default."""
        if per_rank is None:
            per_rank = torch.tensor([[self.batches, self.real, self.padded]])
        real, padded, seconds = int(per_rank[:, 1].sum()), int(per_rank[:, 2].sum()), self._seconds()
        return {"batches_per_rank": per_rank[:, 0].tolist(), "real_tokens": real, "padded_tokens": padded,
                "seconds": seconds, "tokens_per_second": real / max(1e-9, seconds),
                "padding_fraction": 1.0 - real / max(1, padded), "start_step": self.start_step}

    def state_dict(self) -> dict:
        return {"batches": self.batches, "real": self.real, "padded": self.padded, "seconds": self._seconds()}

    def load_state_dict(self, state: dict) -> None:
        self.batches, self.real, self.padded = state["batches"], state["real"], state["padded"]
        self.seconds = state["seconds"]


@torch.no_grad()
def evaluate_masked_lm(model: nn.Module, loader, device: torch.device | str = "cpu") -> tuple[dict, dict]:
    """Held-out MLM figures over every masked token, and per-line sums so two models can be compared paired.

    Returns (metrics, per_line) where per_line maps 'line' / 'masked' / 'loss_sum' to numpy arrays.
    """
    model.eval().to(device)
    lines, counts, sums = [], [], []
    total, loss_sum, top1, top10 = 0, 0.0, 0, 0
    for batch in loader:
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
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


def held_out_masking(table, dynamic: DynamicMasking | None) -> DynamicMasking | None:
    """Held-out shards stored unmasked are masked as epoch 0: the same positions for every model."""
    if dynamic is None or "labels" in table.column_names:
        return None
    return dataclasses.replace(dynamic, held_out=True)


def micro_batch(batch_tokens: int, batch_size: int, world_size: int, accumulate: int) -> tuple[int, int]:
    """The (tokens, lines) budget of one micro-batch, so that world_size x accumulate of them make one global
    batch of at most batch_tokens tokens and batch_size lines (0 = no line cap)."""
    parts = world_size * accumulate
    return batch_tokens // parts, batch_size // parts if batch_size else 0


class MaskedShardData(pl.LightningDataModule):
    """Train/val loaders over masked shards, cut into micro-batches of the global batch for this rank.

    The training loader is resumable: Lightning checkpoints its position within the epoch.
    """

    def __init__(self, train, val, pad_id: int, batch_tokens: int, batch_size: int = 0, accumulate: int = 1,
                 seed: int = 0, dynamic: DynamicMasking | None = None):
        super().__init__()
        self.train, self.val, self.pad_id, self.seed, self.dynamic = train, val, pad_id, seed, dynamic
        self.batch_tokens, self.batch_size, self.accumulate = batch_tokens, batch_size, accumulate

    def _budget(self) -> tuple[int, int, int, int]:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        return (*micro_batch(self.batch_tokens, self.batch_size, world, self.accumulate), rank, world)

    def train_dataloader(self):
        tokens, rows, rank, world = self._budget()
        return masked_loader(self.train, self.pad_id, tokens, rows, self.seed, True, rank, world, self.dynamic)

    def val_dataloader(self):
        # Every rank scores all held-out lines (they are capped by val_lines): the loss is then exact, and no
        # rank is left without a batch to log when there are few.
        tokens, rows, _, _ = self._budget()
        return masked_loader(self.val, self.pad_id, tokens, rows, dynamic=held_out_masking(self.val, self.dynamic))

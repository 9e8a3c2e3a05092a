"""Downstream fine-tuning: a triplet objective (explicit triplets, or batch-hard mining on labeled texts) or
classification (single texts or pairs), with the encoder trained (`full`), frozen under a trained head
(`frozen`, on features cached once per model), or frozen for the first epochs and then trained.

Both models -- base and adapted -- go through exactly this code with the same seeds, so they see the same
data order, the same head initialisation and dropout masks, and the same hyperparameters.
"""

from __future__ import annotations

import copy

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import EarlyStopping
from torch import nn
from torch.utils.data import DataLoader, Sampler

from pipeline.config import FinetuneParams, ParamsError
from pipeline.features import FeatureCache, pool, tokenize
from pipeline.models import SAFE, Trust, load_encoder, load_tokenizer
from pipeline.optim import adamw_warmup_linear
from pipeline.tasks import SPLITS, TaskData
from pipeline.tracking import Curves

MAIN_METRICS = ("loss", "accuracy", "macro_f1")  # shown on the progress bar; the rest are only logged


def distance(a: torch.Tensor, b: torch.Tensor, how: str) -> torch.Tensor:
    if how == "cosine":
        return 1 - F.cosine_similarity(a, b, dim=-1)
    return (a - b).norm(dim=-1)


def pairwise_distance(x: torch.Tensor, how: str) -> torch.Tensor:
    if how == "cosine":
        x = F.normalize(x, dim=-1)
        return 1 - x @ x.T
    squared = (x.unsqueeze(1) - x.unsqueeze(0)).pow(2).sum(-1)
    return squared.clamp(min=1e-12).sqrt()  # the clamp keeps the gradient finite on the diagonal


def batch_hard_loss(x: torch.Tensor, labels: torch.Tensor, how: str, margin: float
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per anchor: max(0, d(hardest positive) - d(hardest negative) + margin) within the batch (Hermans et al.,
    2017), and whether the anchor has both a positive and a negative in the batch (the others score 0)."""
    d = pairwise_distance(x, how)
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=x.device)
    hardest_pos = torch.where(positive, d, torch.full_like(d, -torch.inf)).amax(1)
    hardest_neg = torch.where(~same, d, torch.full_like(d, torch.inf)).amin(1)
    valid = positive.any(1) & (~same).any(1)
    loss = torch.where(valid, F.relu(hardest_pos - hardest_neg + margin), torch.zeros_like(hardest_pos))
    return loss, valid


class Projection(nn.Module):
    """The triplet head over a frozen encoder: x + f(x) with f's last layer zero-initialised, so training starts
    from the encoder's own geometry (and weight decay pulls back towards it)."""

    def __init__(self, hidden: int, kind: str):
        super().__init__()
        layers = [nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden)] if kind == "mlp" else [
            nn.Linear(hidden, hidden)]
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)
        self.f = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.f(x)


def classifier(hidden: int, num_labels: int, kind: str) -> nn.Module:
    if kind == "mlp":
        return nn.Sequential(nn.Dropout(0.1), nn.Linear(hidden, hidden), nn.GELU(), nn.Dropout(0.1),
                             nn.Linear(hidden, num_labels))
    return nn.Sequential(nn.Dropout(0.1), nn.Linear(hidden, num_labels))


class Downstream(pl.LightningModule):
    """Shared plumbing: encode + pool (or take cached features), optimizer, dev/test metrics over a whole epoch."""

    def __init__(self, encoder: nn.Module, params: FinetuneParams, head: nn.Module | None):
        super().__init__()
        self.encoder, self.head, self.params = encoder, head, params
        self.lr, self.total_steps = params.lr, 1  # set for each phase (frozen, full) by finetune_seed
        self._outputs: list[dict] = []
        self.results: dict[str, dict] = {}  # split -> metrics of its last evaluation
        self.per_example: dict[str, dict[str, np.ndarray]] = {}  # split -> outputs of every example, in order

    def embed(self, x: dict[str, torch.Tensor] | torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.Tensor):  # pooled features of the frozen encoder, cached once
            return x
        return pool(self.encoder(**x)[0], x["attention_mask"], self.params.pooling)

    def outputs(self, batch) -> dict[str, torch.Tensor]:  # per example: "loss", and what metrics need
        raise NotImplementedError

    def metrics(self, out: dict[str, np.ndarray]) -> dict:
        raise NotImplementedError

    def training_step(self, batch, batch_idx):
        out = self.outputs(batch)
        weight = out.get("weight", torch.ones_like(out["loss"]))  # batch-hard: anchors without a pair weigh 0
        loss = out["loss"].sum() / weight.sum().clamp(min=1)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(out["loss"]))
        return loss

    def _collect(self, batch) -> None:
        self._outputs.append({k: v.detach().float().cpu() for k, v in self.outputs(batch).items()})

    def _summarize(self, prefix: str) -> None:
        out = {k: torch.cat([o[k] for o in self._outputs]).numpy() for k in self._outputs[0]}
        self._outputs.clear()
        metrics = self.metrics(out)
        self.results[prefix], self.per_example[prefix] = metrics, out
        scalars = {f"{prefix}/{k}": v for k, v in metrics.items() if np.isscalar(v)}
        main = {k: v for k, v in scalars.items() if k.split("/", 1)[1] in MAIN_METRICS}
        self.log_dict(main, prog_bar=prefix == "dev")
        self.log_dict({k: v for k, v in scalars.items() if k not in main})

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
        return adamw_warmup_linear(self, self.lr, self.params.weight_decay, warmup, self.total_steps)


class TripletModule(Downstream):
    def vectors(self, x) -> torch.Tensor:
        v = self.embed(x)
        return v if self.head is None else self.head(v)

    def outputs(self, batch):
        p = self.params
        if "labels" in batch:  # labeled texts: mine the hardest triplets of the batch
            loss, valid = batch_hard_loss(self.vectors(batch["text"]), batch["labels"], p.distance, p.margin)
            return {"loss": loss, "weight": valid.float()}
        a, pos, neg = (self.vectors(batch[role]) for role in ("anchor", "positive", "negative"))
        d_ap, d_an = distance(a, pos, p.distance), distance(a, neg, p.distance)
        return {"loss": F.relu(d_ap - d_an + p.margin), "correct": (d_ap < d_an).float()}

    def metrics(self, out):
        return {"loss": float(out["loss"].mean()), "accuracy": float(out["correct"].mean())}


class ClassificationModule(Downstream):
    def __init__(self, encoder: nn.Module, params: FinetuneParams, labels: list[str],
                 class_weights: list[float] | None = None):
        super().__init__(encoder, params, classifier(encoder.config.hidden_size, len(labels), params.head))
        self.labels = labels
        weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights)

    def logits(self, x) -> torch.Tensor:
        return self.head(self.embed(x)).float()

    def outputs(self, batch):
        logits = self.logits(batch["text"])
        # reduction="none" with weights gives weight[label] * cross-entropy per example; the objective is their mean
        loss = F.cross_entropy(logits, batch["labels"], weight=self.class_weights, reduction="none")
        return {"loss": loss, "pred": logits.argmax(-1), "label": batch["labels"]}

    def metrics(self, out):
        pred, label, k = out["pred"].astype(int), out["label"].astype(int), len(self.labels)
        confusion = np.zeros((k, k), dtype=int)
        np.add.at(confusion, (label, pred), 1)
        tp = np.diag(confusion).astype(float)
        precision = tp / np.maximum(confusion.sum(0), 1)
        recall = tp / np.maximum(confusion.sum(1), 1)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)
        present = confusion.sum(1) > 0  # macro-F1 over the classes that occur in this split
        metrics = {"loss": float(out["loss"].mean()), "accuracy": float((pred == label).mean()),
                   "macro_f1": float(f1[present].mean()), "confusion": confusion.tolist()}
        for i, name in enumerate(self.labels):
            metrics.update({f"precision/{name}": float(precision[i]), f"recall/{name}": float(recall[i]),
                            f"f1/{name}": float(f1[i])})
        return metrics


def build_module(encoder: nn.Module, task_type: str, labels: list[str], params: FinetuneParams,
                 class_weights: list[float] | None = None) -> Downstream:
    """Classification always has a head; triplet has one (a projection) only when the encoder starts frozen."""
    if task_type == "classification":
        return ClassificationModule(encoder, params, labels, class_weights)
    head = Projection(encoder.config.hidden_size, params.head) if params.mode == "frozen" else None
    return TripletModule(encoder, params, head)


class EpochOrder(Sampler[int]):
    """Row indices in an order that is a pure function of (seed, epoch): whatever the model and mode, a seed
    means the same batches. Lightning calls set_epoch before every epoch, as for a DistributedSampler."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch])

    def __iter__(self):
        return iter(self.rng().permutation(self.n).tolist())

    def __len__(self) -> int:
        return self.n


class LabelBatches(Sampler[list[int]]):
    """Batches for batch-hard mining: each label's rows are shuffled and cut into groups of `per_label`, and
    batches take `batch_size // per_label` shuffled groups -- so a batch holds >= 2 texts of most of its labels
    and several labels. A pure function of (seed, epoch), like EpochOrder."""

    def __init__(self, labels: list[int], batch_size: int, per_label: int, seed: int):
        if batch_size < 2 * per_label:
            raise ParamsError(f"finetune.batch_size = {batch_size} must hold at least two groups of "
                              f"task.triplet.texts_per_label = {per_label} texts")
        self.labels, self.per_label = np.asarray(labels), per_label
        self.groups_per_batch = batch_size // per_label
        self.sampler = EpochOrder(len(labels), seed)  # Lightning sets the epoch of a batch sampler's sampler
        n_groups = sum(-(-c // per_label) for c in np.unique(self.labels, return_counts=True)[1])
        self.n_batches = -(-n_groups // self.groups_per_batch)

    def __iter__(self):
        rng = self.sampler.rng()
        groups = []
        for label in np.unique(self.labels):
            rows = rng.permutation(np.flatnonzero(self.labels == label))
            groups += [rows[i:i + self.per_label] for i in range(0, len(rows), self.per_label)]
        groups = [groups[i] for i in rng.permutation(len(groups))]
        for b in range(self.n_batches):
            chunk = groups[b * self.groups_per_batch:(b + 1) * self.groups_per_batch]
            yield np.concatenate(chunk).tolist()

    def __len__(self) -> int:
        return self.n_batches


class Collate:
    """collate_fn: rows -> a batch holding, per text column, the tokenized inputs or (frozen encoder) the cached
    pooled features, and the integer 'labels' where rows have them."""

    def __init__(self, columns: tuple[str, ...], tokenizer, max_len: int, cache: FeatureCache | None = None):
        self.columns, self.tokenizer, self.max_len, self.cache = columns, tokenizer, max_len, cache

    def __call__(self, rows: list[dict]) -> dict:
        batch = {}
        for col in self.columns:
            units = [r[col] for r in rows]
            batch[col] = self.cache(units) if self.cache is not None else tokenize(self.tokenizer, units, self.max_len)
        if "labels" in rows[0]:
            batch["labels"] = torch.tensor([r["labels"] for r in rows])
        return batch


def loaders(data: TaskData, params: FinetuneParams, tokenizer, seed: int, cache: FeatureCache | None = None
            ) -> dict[str, DataLoader]:
    """train: shuffled by (seed, epoch) -- in label groups for batch-hard mining; dev/test: in file order."""
    out = {}
    for split in SPLITS:
        rows, collate = data.rows[split], Collate(data.columns(split), tokenizer, params.max_seq_len, cache)
        if split != "train":
            out[split] = DataLoader(rows, batch_size=params.batch_size * 2, collate_fn=collate)
        elif data.mined:
            batches = LabelBatches([r["labels"] for r in rows], params.batch_size, data.per_label, seed)
            out[split] = DataLoader(rows, batch_sampler=batches, collate_fn=collate)
        else:
            out[split] = DataLoader(rows, batch_size=params.batch_size, sampler=EpochOrder(len(rows), seed),
                                    collate_fn=collate)
    return out


def task_features(encoder: nn.Module, tokenizer, data: TaskData, params: FinetuneParams) -> FeatureCache:
    """The frozen encoder's pooled features of every distinct text (or pair) of every split, computed once."""
    units = [r[col] for split in SPLITS for r in data.rows[split] for col in data.columns(split)]
    encoder.to("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return FeatureCache(encoder, tokenizer, units, params.max_seq_len, params.pooling, params.batch_size * 2,
                            desc="features (frozen encoder)")
    finally:
        encoder.cpu()


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


def phases(params: FinetuneParams) -> list[tuple[bool, int]]:
    """(encoder frozen?, epochs) of each training phase: full; frozen; or frozen, then full."""
    frozen = (params.unfreeze_after or params.epochs) if params.mode == "frozen" else 0
    return [(f, n) for f, n in ((True, frozen), (False, params.epochs - frozen)) if n]


def finetune_seed(model_dir: str, data: TaskData, params: FinetuneParams, seed: int,
                  cache: FeatureCache | None = None, logger=None, callbacks=(), trust: Trust = SAFE) -> dict:
    """Fine-tune one copy of the encoder in `model_dir` with one seed; test the epoch with the best dev loss.

    `cache`: the frozen encoder's features (task_features), shared by the seeds; computed here if missing and
    needed. Returns {"dev": best dev metrics, "test": test metrics, "best_epoch", "curves": {name: [(step,
    value)]}, "per_example": test outputs per example, "module": the model at its best epoch}.
    """
    tokenizer, encoder = load_tokenizer(model_dir, trust), load_encoder(model_dir, trust)
    plan = phases(params)
    if plan[0][0] and cache is None:
        cache = task_features(encoder, tokenizer, data, params)
    pl.seed_everything(seed, workers=True, verbose=False)  # after loading: head init and dropout depend on seed only
    module = build_module(encoder, data.type, data.labels, params, data.class_weights)
    curves, best = Curves(prefixes=("dev/",)), KeepBest()
    early = [EarlyStopping("dev/loss", patience=params.patience, mode="min")] if params.patience else []
    trainer = pl.Trainer(max_epochs=params.epochs, accelerator="auto", devices=1, logger=logger or False,
                         callbacks=[curves, best, *early, *callbacks], enable_checkpointing=False,
                         num_sanity_val_steps=0, deterministic=True, log_every_n_steps=1, enable_model_summary=False)
    trainer.validate(module, loaders(data, params, tokenizer, seed, cache if plan[0][0] else None)["dev"],
                     verbose=False)  # the dev loss before any fine-tuning: step 0 of the curves
    for frozen, epochs in plan:
        dl = loaders(data, params, tokenizer, seed, cache if frozen else None)
        # train mode: Lightning keeps the modes it finds, and from_pretrained returns the encoder in eval mode
        module.train().encoder.requires_grad_(not frozen)
        module.lr, module.total_steps = (params.head_lr if frozen else params.lr), epochs * len(dl["train"])
        # One trainer for both phases: steps, epochs and curves run on; fit() builds this phase's optimizer.
        trainer.fit_loop.max_epochs = trainer.current_epoch + epochs
        trainer.should_stop = False  # early stopping ends a frozen phase, not the fine-tuning
        for callback in early:
            callback.wait_count = 0
        trainer.fit(module, dl["train"], dl["dev"])
    if best.state is None:  # NaN never beats anything: every epoch diverged
        raise ParamsError(f"finetune seed {seed}: the dev loss is not a number after any epoch (training "
                          f"diverged); lower finetune.lr = {params.lr:g} / head_lr = {params.head_lr:g}")
    best.restore(module)
    trainer.test(module, dl["test"], verbose=False)
    out = module.per_example["test"]
    per_example = ({"loss": out["loss"].tolist(), "correct": out["correct"].astype(int).tolist()}
                   if data.type == "triplet" else
                   {"loss": out["loss"].tolist(), "pred": out["pred"].astype(int).tolist(),
                    "label": out["label"].astype(int).tolist()})
    return {"dev": best.metrics, "test": module.results["test"], "best_epoch": best.best_epoch,
            "curves": dict(curves.series), "per_example": per_example, "module": module.cpu()}

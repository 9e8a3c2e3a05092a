"""Texts -> encoder inputs -> pooled sentence vectors: shared by fine-tuning (the frozen-mode feature cache)
and `dapt embed`.

A "unit" is what the encoder reads at once: a text, or a (text, text pair) tuple encoded as one sequence
`[CLS] a [SEP] b [SEP]`, as BERT reads MNLI premise/hypothesis pairs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from tqdm.auto import tqdm

Unit = str | tuple[str, str]


def tokenize(tokenizer, units: Sequence[Unit], max_len: int) -> dict[str, torch.Tensor]:
    """A padded batch of encoder inputs (only those this model takes: DistilBERT has no token_type_ids)."""
    pairs = isinstance(units[0], tuple)
    first = [u[0] if pairs else u for u in units]
    second = [u[1] for u in units] if pairs else None
    enc = tokenizer(first, second, truncation=True, max_length=max_len, padding=True, return_tensors="pt")
    return {k: enc[k] for k in tokenizer.model_input_names if k in enc}


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    if how == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


def _length(unit: Unit) -> int:
    return len(unit) if isinstance(unit, str) else len(unit[0]) + len(unit[1])


@torch.no_grad()
def encode_batches(encoder, tokenizer, units: Sequence[Unit], max_len: int, batch_size: int, desc: str | None = None
                   ) -> Iterator[tuple[list[int], dict[str, torch.Tensor], torch.Tensor]]:
    """(positions in `units`, inputs, last hidden states) per batch, in eval mode. Batches are cut from the
    units sorted by length, so a batch pads to similar lengths; `desc` shows a progress bar."""
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    order = sorted(range(len(units)), key=lambda i: _length(units[i]))
    bar = tqdm(total=len(units), desc=desc, unit="text", disable=desc is None, mininterval=1)
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            inputs = {k: v.to(device) for k, v in tokenize(tokenizer, [units[i] for i in idx], max_len).items()}
            yield idx, inputs, encoder(**inputs)[0]
            bar.update(len(idx))
    finally:
        bar.close()
        encoder.train(was_training)


def pooled_features(encoder, tokenizer, units: Sequence[Unit], max_len: int, pooling: str, batch_size: int = 64,
                    desc: str | None = None) -> torch.Tensor:
    """One pooled vector per unit (float32, CPU), in the order of `units`."""
    out = torch.empty(len(units), encoder.config.hidden_size)
    for idx, inputs, hidden in encode_batches(encoder, tokenizer, units, max_len, batch_size, desc):
        out[idx] = pool(hidden, inputs["attention_mask"], pooling).float().cpu()
    return out


class FeatureCache:
    """Pooled features of a frozen encoder for every distinct unit of a task, computed once per model:
    epochs then cost only the head."""

    def __init__(self, encoder, tokenizer, units: Sequence[Unit], max_len: int, pooling: str, batch_size: int = 64,
                 desc: str | None = None):
        self.units = list(dict.fromkeys(units))  # distinct, first-seen order
        self.index = {u: i for i, u in enumerate(self.units)}
        self.vectors = pooled_features(encoder, tokenizer, self.units, max_len, pooling, batch_size, desc)

    def __call__(self, units: Sequence[Unit]) -> torch.Tensor:
        return self.vectors[[self.index[u] for u in units]]

"""The optimizer every training stage uses: AdamW, linear warm-up, then linear (or cosine) decay to zero."""

from __future__ import annotations

import math

import torch
from torch import nn

SCHEDULES = ("linear", "cosine")


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: no weight decay on biases and LayerNorm weights, as BERT was trained.
    Frozen parameters (requires_grad False) are left out."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_decay(warmup_steps: int, total_steps: int, schedule: str = "linear"):
    """The learning-rate factor at each step: 1/w, 2/w, ... up to 1 over `warmup_steps`, then down to 0 at
    `total_steps`, along a straight line or half a cosine."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule '{schedule}': expected one of {SCHEDULES}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def adamw_warmup_linear(model: nn.Module, lr: float, weight_decay: float, warmup_steps: int, total_steps: int,
                        schedule: str = "linear", fused: bool = False):
    """Lightning's configure_optimizers() return value for AdamW with a per-step warm-up/decay schedule.

    fused=True: torch's one-kernel AdamW (CPU or CUDA parameters); the same update, ~9x faster on CPU for a
    22M-parameter model, where the step otherwise costs as much as a small batch's backward pass."""
    optimizer = torch.optim.AdamW(decay_groups(model, weight_decay), lr=lr, fused=fused or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_decay(warmup_steps, total_steps, schedule))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

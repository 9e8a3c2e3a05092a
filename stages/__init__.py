"""One module per DVC stage: read params.yaml, call `pipeline`, write outputs atomically.

The paths below are the contract with dvc.yaml (its `deps` / `outs`); keep the two in step.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

LINES = Path("artifacts/lines")  # split -> mask
MASKED = Path("artifacts/masked")  # mask -> pretrain, evaluate
MODELS = Path("models")  # pretrain -> models/base, models/adapted (+ models/checkpoints, persisted)
CHECKPOINTS = MODELS / "checkpoints"
REPORTS = Path("reports")

MODEL_NAMES = ("base", "adapted")

# Nothing phones home from a stage: the user opts in to W&B uploads (tracking.wandb: online).
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def parser(doc: str, prog: str, model: bool = False) -> argparse.ArgumentParser:
    """The command line of a stage: its docstring as help; settings come from params.yaml."""
    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Settings are read from params.yaml in the current folder "
                                       "(see pipeline/config.py for every key). Normally run by `dvc repro`.")
    if model:
        p.add_argument("model", choices=MODEL_NAMES, help="which model: models/base or models/adapted")
    return p


def trust_flags(p: argparse.ArgumentParser) -> None:
    """The opt-ins of the `dapt` tools that load any model (params.yaml's trust_remote_code and
    allow_pickle_weights, for the pipeline's stages): off unless given."""
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run the model folder's own Python code (config.json auto_map); only for code you have read")
    p.add_argument("--allow-pickle-weights", action="store_true",
                   help="also load pytorch_model.bin (pickle) when the model has no safetensors weights")


def run(main: Callable[[list[str]], None]) -> None:
    """Run a stage's main(); known input/params errors end as one line on stderr and exit status 2, a full disk
    (or a file-size limit) as one line naming what was being written and exit status 1."""
    from pipeline.config import ParamsError
    from pipeline.io import room_reason
    from pipeline.text import InputError

    try:
        main(sys.argv[1:])
    except Exception as err:
        reason = room_reason(err)
        if reason is not None:  # outputs are written atomically: nothing half-written is left behind
            path = getattr(err, "path", None) or getattr(err, "filename", None) or "a file"
            print(f"error: no space left writing {path} ({reason})", file=sys.stderr)
            raise SystemExit(1) from None
        # ModelError lives next to transformers, whose import costs seconds: a stage that never loaded
        # pipeline.models (split, compare, launch, any --help) cannot have raised it, so it is not imported here.
        models = sys.modules.get("pipeline.models")
        if not isinstance(err, (ParamsError, InputError, *([models.ModelError] if models else []))):
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None

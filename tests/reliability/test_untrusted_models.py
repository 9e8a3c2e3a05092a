"""Untrusted checkpoints: a model is data, not code, unless the user opts in.

`trust_remote_code` and `allow_pickle_weights` (params.yaml; --trust-remote-code / --allow-pickle-weights for
the `dapt` tools) are off by default. Off, a folder with only pickle weights (pytorch_model.bin) is refused in
one line before a byte of it is unpickled, and a model's own Python code (config.json auto_map) never runs.
Each planted payload would create a marker file if it ran.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.config import ParamsError, load_params, parse_params
from pipeline.models import SAFE, ModelError, Trust, load_encoder, load_masked_lm
from tests.conftest import ROOT, run_command
from tests.reliability.conftest import run_env


class Payload:
    """Unpickling this runs a shell command: what a malicious pytorch_model.bin does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def pickle_only(tiny: Path, dest: Path, payload: Path | None = None) -> Path:
    shutil.copytree(tiny, dest)
    weights = load_masked_lm(str(tiny))[0].state_dict()
    torch.save({**weights, "x": Payload(payload)} if payload else weights, dest / "pytorch_model.bin")
    (dest / "model.safetensors").unlink()
    return dest


def with_code(tiny: Path, dest: Path, marker: Path, model_type: str) -> Path:
    """A model folder whose config.json points at its own code (auto_map), which writes `marker` when run."""
    shutil.copytree(tiny, dest)
    config = json.loads((dest / "config.json").read_text())
    config.update(model_type=model_type, auto_map={"AutoConfig": "custom.Config", "AutoModel": "custom.Encoder",
                                                   "AutoModelForMaskedLM": "custom.MaskedLM"})
    (dest / "config.json").write_text(json.dumps(config))
    (dest / "custom.py").write_text(
        f"open({str(marker)!r}, 'a').write('ran\\n')\n"
        "from transformers import BertConfig, BertForMaskedLM, BertModel\n\n\n"
        f"class Config(BertConfig):\n    model_type = {model_type!r}\n\n\n"
        "class Encoder(BertModel):\n    config_class = Config\n\n\n"
        "class MaskedLM(BertForMaskedLM):\n    config_class = Config\n")
    return dest


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


def test_both_switches_are_off_by_default_in_the_schema_and_the_shipped_params_and_must_be_booleans():
    for params in (parse_params({}), load_params(ROOT / "params.yaml")):
        assert params.trust_remote_code is False and params.allow_pickle_weights is False
        assert Trust.of(params) == SAFE
    for value in ("yes", 1, "false"):
        with pytest.raises(ParamsError, match=r"^params\.yaml: trust_remote_code = .*: Input should be a valid bool"):
            parse_params({"trust_remote_code": value})


@pytest.mark.parametrize("loader", [load_encoder, load_masked_lm], ids=["encoder", "masked-lm"])
def test_a_pickle_only_checkpoint_is_refused_in_one_line_before_it_is_unpickled(tiny_model, tmp_path, loader):
    marker = tmp_path / "payload-ran"
    folder = pickle_only(tiny_model, tmp_path / "pickle", payload=marker)
    with pytest.raises(ModelError) as err:
        loader(str(folder))
    message = one_line(err)
    assert message.startswith(f"{folder}: only pickle weights (pytorch_model.bin)")
    assert "allow_pickle_weights: true" in message and "--allow-pickle-weights" in message
    assert not marker.exists()


def test_pickle_weights_load_when_allowed_and_equal_the_original(tiny_model, tmp_path):
    folder = pickle_only(tiny_model, tmp_path / "pickle")
    model, missing = load_masked_lm(str(folder), Trust(pickle_weights=True))
    original = load_masked_lm(str(tiny_model))[0].state_dict()
    assert missing == [] and all(torch.equal(v, original[k]) for k, v in model.state_dict().items())


def test_a_code_running_pickle_is_refused_even_when_pickle_weights_are_allowed(tiny_model, tmp_path):
    marker = tmp_path / "payload-ran"
    folder = pickle_only(tiny_model, tmp_path / "evil", payload=marker)
    with pytest.raises(ModelError) as err:
        load_masked_lm(str(folder), Trust(pickle_weights=True))
    assert one_line(err).startswith(f"{folder}: the pickle weights hold objects other than tensors")
    assert not marker.exists()  # torch's weights-only unpickler never called os.system


def test_a_models_own_code_is_not_run_for_an_architecture_transformers_knows(tiny_model, tmp_path):
    marker = tmp_path / "code-ran"
    folder = with_code(tiny_model, tmp_path / "known", marker, "bert")
    model, _ = load_masked_lm(str(folder))
    assert type(model).__name__ == "BertForMaskedLM" and not marker.exists()  # transformers' own class


@pytest.mark.parametrize("loader", [load_encoder, load_masked_lm], ids=["encoder", "masked-lm"])
def test_a_model_that_needs_its_own_code_is_refused_in_one_line(tiny_model, tmp_path, loader):
    marker = tmp_path / "code-ran"
    folder = with_code(tiny_model, tmp_path / "custom", marker, "daptcustombert")
    with pytest.raises(ModelError) as err:
        loader(str(folder))
    message = one_line(err)
    assert message.startswith(f"{folder}: needs its own Python code") and "trust_remote_code: true" in message
    assert not marker.exists()


def test_the_evaluate_stage_refuses_a_pickle_only_model_unless_params_allow_it(tiny_model, tmp_path, capsys,
                                                                            monkeypatch):
    from stages.evaluate import main

    pickle_only(tiny_model, tmp_path / "models" / "base")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")  # the stage's seed_everything sets it: restored after the test
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"seed": 1}))
    code, _, err = run_command(capsys, "dapt evaluate", main, "base")
    assert code == 2 and err.startswith("error: models/base: only pickle weights") and err.count("\n") == 1, err
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"seed": 1, "allow_pickle_weights": True}))
    code, _, err = run_command(capsys, "dapt evaluate", main, "base")
    assert code == 2 and err == "error: artifacts/masked: no val-*.arrow shards (did the previous stage run?)\n"


def test_the_fill_mask_tool_refuses_a_model_with_code_unless_given_the_flag(tiny_model, tmp_path, capsys,
                                                                           monkeypatch):
    from stages.fill_mask import main

    marker = tmp_path / "code-ran"
    folder = with_code(tiny_model, tmp_path / "custom", marker, "daptcustombert")
    code, _, err = run_command(capsys, "dapt fill-mask", main, "--model", str(folder), "a [MASK]")
    assert code == 2 and err.startswith(f"error: {folder}: needs its own Python code") and err.count("\n") == 1
    assert not marker.exists()


def test_every_stage_that_loads_a_model_reads_and_declares_both_switches():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name in ("mask", "pretrain", "evaluate", "finetune"):
        entry = stages[name].get("do", stages[name])
        assert {"trust_remote_code", "allow_pickle_weights"} <= set(entry["params"]), name  # DVC reruns on a change
        source = (ROOT / "stages" / f"{name}.py").read_text()
        assert "Trust.of(params)" in source, name
    for tool in ("fill_mask", "embed", "predict"):
        assert "trust_flags(" in (ROOT / "stages" / f"{tool}.py").read_text(), tool


def test_trust_remote_code_runs_the_code_with_one_warning_however_many_models_load(tiny_model, tmp_path):
    """The real `dapt fill-mask` with the opt-in: the folder's code runs, and one warning says so."""
    marker = tmp_path / "code-ran"
    folder = with_code(tiny_model, tmp_path / "custom", marker, "daptcustombert")
    dapt = Path(sys.executable).parent / "dapt"
    environ = run_env(HF_MODULES_CACHE=str(tmp_path / "modules"))  # where transformers copies the code to
    proc = subprocess.run([str(dapt), "fill-mask", "--trust-remote-code", "--model", str(folder), "--model",
                           str(folder), "the [MASK] night"], cwd=tmp_path, env=environ, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("warning: trust_remote_code is on") == 1, proc.stderr[-3000:]
    assert marker.read_text().count("ran") >= 1

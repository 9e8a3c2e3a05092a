"""pipeline/config.py: defaults, the repo's params.yaml, and one-line errors for every kind of bad value."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.config import (
    ClassificationTask,
    FinetuneParams,
    MaskParams,
    Params,
    ParamsError,
    SplitParams,
    TaskParams,
    TripletTask,
    load_params,
    parse_params,
)

ROOT = Path(__file__).resolve().parent.parent


def write_params(tmp_path: Path, raw) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw) if not isinstance(raw, str) else raw, encoding="utf-8")
    return path


def load_error(tmp_path: Path, raw) -> str:
    path = write_params(tmp_path, raw)
    with pytest.raises(ParamsError) as info:
        load_params(path)
    msg = str(info.value)
    assert "\n" not in msg, f"not one line: {msg!r}"
    assert msg.startswith(str(path) + ": "), msg
    return msg


# --- valid configurations ------------------------------------------------------------------------------------


def test_defaults_are_valid_and_documented_values():
    p = Params()
    assert p.seed == 42
    assert p.split.inputs == ["data/demo/corpus"]
    assert p.split.val_fraction == 0.1
    assert p.split.encoding_errors == "replace"
    assert (p.mask.mlm_probability, p.mask.mask_replace, p.mask.random_replace) == (0.15, 0.8, 0.1)
    assert p.finetune.seeds == [1, 2]
    assert p.task.type == "triplet"
    # an empty mapping / empty file means "all defaults"
    assert parse_params({}) == p
    assert parse_params(None) == p


def test_default_factories_are_not_shared():
    a, b = Params(), Params()
    a.split.inputs.append("more")
    assert b.split.inputs == ["data/demo/corpus"]


def test_repo_params_yaml_loads():
    p = load_params(ROOT / "params.yaml")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    assert p.seed == raw["seed"]
    assert p.split.inputs == raw["split"]["inputs"]
    assert p.mask.dupe_factor == raw["mask"]["dupe_factor"]
    assert p.pretrain.max_steps == raw["pretrain"]["max_steps"]
    assert p.finetune.seeds == raw["finetune"]["seeds"]
    assert p.task.type == raw["task"]["type"]
    assert p.task.dir == raw["task"][raw["task"]["type"]]["dir"]
    assert p.tracking.wandb == raw["tracking"]["wandb"]


def test_empty_file_gives_defaults(tmp_path):
    assert load_params(write_params(tmp_path, "")) == Params()


def test_overrides_are_applied_and_coerced(tmp_path):
    text = "seed: 7\npretrain:\n  lr: 1e-4\n  devices: 2\nfinetune:\n  seeds: [3, 1]\n"
    p = load_params(write_params(tmp_path, text))
    assert p.seed == 7
    assert p.pretrain.lr == pytest.approx(1e-4)  # YAML 1.1 reads "1e-4" as a string: coerced to float
    assert p.pretrain.devices == 2
    assert p.finetune.seeds == [3, 1]
    assert p.mask == MaskParams()  # untouched sections keep their defaults


@pytest.mark.parametrize("kind, expected", [("triplet", "data/x/trip"), ("classification", "data/x/cls")])
def test_task_dir_follows_type(kind, expected):
    task = TaskParams(type=kind, triplet=TripletTask(dir="data/x/trip"),
                      classification=ClassificationTask(dir="data/x/cls"))
    assert task.dir == expected


def test_task_dir_defaults():
    assert TaskParams().dir == "data/demo/tasks/song-sections"
    assert TaskParams(type="classification").dir == "data/demo/tasks/fortune-category"


def test_mask_split_exactly_one_is_allowed():
    m = MaskParams(mask_replace=0.9, random_replace=0.1)
    assert m.mask_replace + m.random_replace == pytest.approx(1.0)


# --- errors: one line naming the key and the value -------------------------------------------------------------


def test_wrong_type_names_key_and_value(tmp_path):
    msg = load_error(tmp_path, {"finetune": {"lr": "abc"}})
    assert "finetune.lr = 'abc'" in msg
    assert "valid number" in msg


def test_misspelt_nested_key(tmp_path):
    msg = load_error(tmp_path, {"split": {"input": ["data"]}})
    assert "unknown key 'split.input'" in msg


def test_misspelt_top_level_section(tmp_path):
    msg = load_error(tmp_path, {"pretrian": {"lr": 0.1}})
    assert "unknown key 'pretrian'" in msg


@pytest.mark.parametrize("raw, needle", [
    ({"mask": {"mlm_probability": 1.5}}, "mask.mlm_probability = 1.5"),
    ({"split": {"val_fraction": 0}}, "split.val_fraction = 0"),
    ({"mask": {"max_seq_len": 4}}, "mask.max_seq_len = 4"),
    ({"finetune": {"warmup_ratio": 1.0}}, "finetune.warmup_ratio = 1.0"),
])
def test_value_out_of_range(tmp_path, raw, needle):
    msg = load_error(tmp_path, raw)
    assert needle in msg
    assert ("less than" in msg) or ("greater than" in msg)


def test_a_pretrain_of_no_length_says_which_two_keys(tmp_path):
    msg = load_error(tmp_path, {"pretrain": {"max_steps": 0}})  # epochs defaults to 0: the run would not train
    assert "pretrain = {'max_steps': 0}: max_steps and epochs are both 0: set one of them" in msg


@pytest.mark.parametrize("raw, needle, allowed", [
    ({"pretrain": {"precision": "fp16"}}, "pretrain.precision = 'fp16'", "'bf16-mixed'"),
    ({"split": {"encoding_errors": "ignore"}}, "split.encoding_errors = 'ignore'", "'replace' or 'strict'"),
    ({"task": {"type": "regression"}}, "task.type = 'regression'", "'triplet' or 'classification'"),
    ({"tracking": {"wandb": "yes please"}}, "tracking.wandb = 'yes please'", "'offline'"),
])
def test_bad_literal_lists_allowed_values(tmp_path, raw, needle, allowed):
    msg = load_error(tmp_path, raw)
    assert needle in msg
    assert allowed in msg


def test_union_int_or_auto(tmp_path):
    msg = load_error(tmp_path, {"pretrain": {"devices": "two"}})
    assert "pretrain.devices = 'two'" in msg
    assert "valid integer" in msg and "'auto'" in msg  # both branches of the union are explained


def test_fractional_int(tmp_path):
    msg = load_error(tmp_path, {"pretrain": {"max_steps": 2.5}})
    assert "pretrain.max_steps = 2.5" in msg
    assert "fractional" in msg


def test_non_distinct_seeds(tmp_path):
    msg = load_error(tmp_path, {"finetune": {"seeds": [1, 1]}})
    assert msg.count("finetune") >= 1
    assert "seeds = [1, 1]" in msg and "distinct" in msg


def test_empty_seeds(tmp_path):
    msg = load_error(tmp_path, {"finetune": {"seeds": []}})
    assert "finetune.seeds = []" in msg


def test_mask_and_random_replace_over_one(tmp_path):
    msg = load_error(tmp_path, {"mask": {"mask_replace": 0.8, "random_replace": 0.3}})
    assert msg.startswith(str(tmp_path / "params.yaml") + ": mask")
    assert "mask_replace + random_replace = 1.1" in msg and "<= 1" in msg


def test_section_of_wrong_type(tmp_path):
    msg = load_error(tmp_path, "split: 5\n")
    assert "split = 5" in msg


def test_top_level_not_a_mapping(tmp_path):
    msg = load_error(tmp_path, "- a\n- b\n")
    assert "expected a mapping" in msg and "list" in msg


def test_invalid_yaml(tmp_path):
    msg = load_error(tmp_path, "seed: [1, 2\nsplit: {\n")
    assert "not valid YAML" in msg


def test_missing_file(tmp_path):
    path = tmp_path / "nope" / "params.yaml"
    with pytest.raises(ParamsError) as info:
        load_params(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: not found")


def test_parse_params_source_name_in_message():
    with pytest.raises(ParamsError, match=r"^exp\.yaml: seed = 'x': "):
        parse_params({"seed": "x"}, source="exp.yaml")


def test_paramserror_is_a_valueerror():
    assert issubclass(ParamsError, ValueError)


def test_direct_model_validation_also_rejects():
    # the sections themselves enforce the rules (stages may build them directly)
    with pytest.raises(ValueError):
        SplitParams(inputs=[])
    with pytest.raises(ValueError):
        FinetuneParams(seeds=[2, 2])


def test_boolean_for_an_int_is_rejected(tmp_path):
    load_error(tmp_path, "seed: yes\n")

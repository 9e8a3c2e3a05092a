"""compare: base vs adapted, MLM and downstream, with paired statistics -> reports/compare.json + report.html.

Reads what evaluate@{base,adapted}, finetune@{base,adapted}, pretrain, split and mask wrote. compare.json (a DVC
metrics file; schema in docs/compare-schema.md) holds the numbers and verdicts; report.html shows them with the
loss curves, fill-mask examples, data statistics and params in one self-contained page.
"""

import csv
import math
from pathlib import Path

import numpy as np

from pipeline.config import load_params
from pipeline.io import atomic_file, read_json, write_json
from pipeline.report import curves_figure, headline, render
from pipeline.stats import (MIN_PAIRS, has_example_metric, mlm_loss_difference, paired_difference,
                            per_example_difference, summary)
from pipeline.text import InputError
from pipeline.tracking import log_comparison
from stages import LINES, MASKED, MODEL_NAMES, REPORTS, parser, run

PRIMARY = {"triplet": "accuracy", "classification": "macro_f1"}
SCHEMA_VERSION = 1


def load(path: Path):
    """read_json, with a missing input named in one line (DVC guarantees them; a hand-run stage may not)."""
    try:
        return read_json(path)
    except FileNotFoundError:
        raise InputError(f"{path}: not found (run the stages before compare: dvc repro)") from None


def read_per_line(path: Path) -> dict[int, tuple[int, float]]:
    if not path.is_file():
        raise InputError(f"{path}: not found (run the stages before compare: dvc repro)")
    with open(path, encoding="utf-8") as f:
        return {int(r["line"]): (int(r["masked"]), float(r["loss_sum"])) for r in csv.DictReader(f)}


def compare_mlm(seed: int) -> dict:
    """Held-out MLM figures of both models and their difference, paired by line on identical masks."""
    evaluated = {m: load(REPORTS / "evaluate" / m / "metrics.json") for m in MODEL_NAMES}
    paths = {m: REPORTS / "evaluate" / m / "per_line.csv" for m in MODEL_NAMES}
    base, adapted = (read_per_line(paths[m]) for m in MODEL_NAMES)
    if base.keys() != adapted.keys() or any(base[i][0] != adapted[i][0] for i in base):
        raise InputError(f"{paths['base']} and {paths['adapted']}: not the same lines and masks (rerun evaluate "
                         "for both models on the same shards)")
    lines = sorted(base)
    diff = mlm_loss_difference([base[i][0] for i in lines], [base[i][1] for i in lines],
                               [adapted[i][1] for i in lines], seed)
    pretrain = load(REPORTS / "pretrain" / "metrics.json")
    return {**{m: {k: evaluated[m][k] for k in ("loss", "perplexity", "top1_accuracy", "top10_accuracy")}
               for m in MODEL_NAMES},
            "lines": len(lines), "masked_tokens": int(sum(base[i][0] for i in lines)),
            "base_head_untrained": bool(pretrain.get("base_head_untrained", False)),
            "base_head_warmup_steps": pretrain.get("head_warmup_steps"),
            "loss_difference": diff,
            "perplexity_ratio": {"value": math.exp(diff["mean"]), "ci95_low": math.exp(diff["ci95_low"]),
                                 "ci95_high": math.exp(diff["ci95_high"])}}


def per_example_columns(details: dict, seeds: list[str], path: Path) -> list[dict] | None:
    """Per-example test outputs of each seed as numpy columns; None when the finetune stage wrote none.
    Accepts a list of row dicts or a dict of columns per seed."""
    per_example = details.get("per_example")
    if not per_example:
        return None
    out = []
    for s in seeds:
        rows = per_example.get(s)
        if rows is None:
            raise InputError(f"{path}: per_example has no seed {s}")
        if isinstance(rows, list):
            rows = {k: [r[k] for r in rows] for k in (rows[0] if rows else {"loss": 0})}
        out.append({k: np.asarray(v) for k, v in rows.items()})
    return out


def compare_downstream(seed: int) -> tuple[dict, dict]:
    """Per test metric: mean ± std over seeds for each model, the paired difference and its verdict."""
    paths = {m: REPORTS / "finetune" / m for m in MODEL_NAMES}
    finetuned = {m: load(paths[m] / "metrics.json") for m in MODEL_NAMES}
    details = {m: load(paths[m] / "details.json") for m in MODEL_NAMES}
    seeds = sorted(finetuned["base"]["seeds"].keys() & finetuned["adapted"]["seeds"].keys(), key=int)
    if not seeds:
        raise InputError(f"{paths['base']}/metrics.json and {paths['adapted']}/metrics.json: no seed in common")
    examples = {m: per_example_columns(details[m], seeds, paths[m] / "details.json") for m in MODEL_NAMES}
    if examples["base"] and examples["adapted"]:
        b, a = examples["base"][0], examples["adapted"][0]
        if len(b["loss"]) != len(a["loss"]) or ("label" in b and not np.array_equal(b["label"], a["label"])):
            raise InputError(f"{paths['base']}/details.json and {paths['adapted']}/details.json: per_example "
                             "does not list the same test examples")
    else:
        examples = None
    task = finetuned["base"]["task"]
    labels = details["base"].get("labels") or []
    metrics = {}
    for metric in sorted(finetuned["base"]["test_mean"].keys() & finetuned["adapted"]["test_mean"].keys()):
        values = {m: [finetuned[m]["seeds"][s]["test"][metric] for s in seeds] for m in MODEL_NAMES}
        entry = {m: summary(values[m]) for m in MODEL_NAMES}
        by_seed = paired_difference(values["base"], values["adapted"], metric, seed)
        by_example = (per_example_difference(examples["base"], examples["adapted"], metric, labels, seed)
                      if examples and has_example_metric(metric, examples["base"][0], labels) else None)
        few = len(seeds) < MIN_PAIRS and by_example is not None
        entry["difference"] = by_example if few else by_seed
        entry["test_set"] = None if few else by_example
        metrics[metric] = entry
    down = {"task": task, "seeds": [int(s) for s in seeds], "primary_metric": PRIMARY[task], "metrics": metrics}
    return down, {"finetuned": finetuned, "details": details}


def compare_data() -> tuple[dict, dict, dict]:
    split, mask = load(LINES / "stats.json"), load(MASKED / "stats.json")
    t = mask["train"]
    data = {"leaked_lines": int(split.get("dropped", {}).get("leaked_from_task_dev_test", 0)),
            "duplicate_lines": int(split.get("dropped", {}).get("duplicate", 0)),
            "train_lines": int(split["lines_out"]["train"]), "val_lines": int(split["lines_out"]["val"]),
            "unk_rate": t["unk_rate"], "pieces_per_word": t["pieces_per_word"],
            "masked_fraction": t["masked_fraction"]}
    return data, split, mask


def read_curve(path: Path) -> list[tuple[int, float]]:
    if not path.is_file():
        raise InputError(f"{path}: not found (run the stages before compare: dvc repro)")
    with open(path, encoding="utf-8") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


def figures(details: dict, seeds: list[int], mlm: dict) -> dict[str, str]:
    """Downstream train and dev loss (base vs adapted, each seed faint, the mean bold) and pretraining loss."""
    out = {}
    for name, key, title in (("train/loss", "train", "downstream train loss"),
                             ("dev/loss", "dev", "downstream dev loss")):
        series = {}
        for m in MODEL_NAMES:
            runs = [[tuple(p) for p in details[m]["curves"][str(s)].get(name, [])] for s in seeds]
            steps = sorted(set.intersection(*(set(x for x, _ in r) for r in runs)))
            series[m] = {"seeds": runs, "mean": [(x, float(np.mean([dict(r)[x] for r in runs]))) for x in steps]}
        out[key] = curves_figure(title, series, key=key)
    pre = {"train": {"mean": read_curve(REPORTS / "pretrain" / "train_loss.csv")},
           "held-out": {"mean": read_curve(REPORTS / "pretrain" / "val_loss.csv")}}
    out["pretrain"] = curves_figure("pretraining (masked-LM) loss", pre, key="pretrain",
                                    hlines={"base held-out loss": mlm["base"]["loss"],
                                            "adapted held-out loss": mlm["adapted"]["loss"]})
    return out


def read_fill_mask() -> dict | None:
    paths = {m: REPORTS / "evaluate" / m / "fill_mask.json" for m in MODEL_NAMES}
    return {m: load(p) for m, p in paths.items()} if all(p.is_file() for p in paths.values()) else None


def main(argv: list[str]) -> None:
    parser(__doc__, "dapt compare").parse_args(argv)
    params = load_params()
    mlm = compare_mlm(params.seed)
    down, finetune = compare_downstream(params.seed)
    data, split, mask = compare_data()
    compare = {"schema_version": SCHEMA_VERSION, "verdict": down["metrics"][down["primary_metric"]]["difference"]
               ["verdict"], "mlm": mlm, "downstream": down, "data": data}
    inputs = {"finetune": finetune["finetuned"], "pretrain": load(REPORTS / "pretrain" / "metrics.json"),
              "split": split, "mask": mask, "fill_mask": read_fill_mask()}
    page = render(compare, figures(finetune["details"], down["seeds"], mlm), Path("params.yaml").read_text(
        encoding="utf-8"), inputs)
    write_json(REPORTS / "compare.json", compare)
    with atomic_file(REPORTS / "report.html") as f:
        f.write(page)
    log_comparison(params.tracking, compare, REPORTS / "report.html")
    print("\n".join(headline(compare)))
    print(f"report: {(REPORTS / 'report.html').resolve()}")


if __name__ == "__main__":
    run(main)

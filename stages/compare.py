"""compare: base vs adapted, MLM and downstream, with paired statistics -> reports/compare.json + report.html."""

import csv
import json

import numpy as np

from pipeline.config import load_params
from pipeline.io import atomic_file, read_json, write_json
from pipeline.report import curves_figure, render
from pipeline.stats import paired_difference, summary
from stages import LINES, MASKED, MODEL_NAMES, REPORTS, parser, run

PRIMARY = {"triplet": "accuracy", "classification": "macro_f1"}


def per_line_loss(name: str) -> dict[int, float]:
    with open(REPORTS / "evaluate" / name / "per_line.csv", encoding="utf-8") as f:
        return {int(r["line"]): float(r["loss_sum"]) / int(r["masked"]) for r in csv.DictReader(f)}


def main(argv: list[str]) -> None:
    parser(__doc__, "dapt compare").parse_args(argv)
    params = load_params()
    pretrain = read_json(REPORTS / "pretrain" / "metrics.json")
    evaluated = {m: read_json(REPORTS / "evaluate" / m / "metrics.json") for m in MODEL_NAMES}
    base_lines, adapted_lines = per_line_loss("base"), per_line_loss("adapted")
    lines = sorted(base_lines.keys() & adapted_lines.keys())
    mlm = {**evaluated, "lines": len(lines), "base_head_untrained": pretrain["base_head_untrained"],
           "paired_loss": paired_difference([base_lines[i] for i in lines], [adapted_lines[i] for i in lines],
                                            "loss", seed=params.seed)}

    finetuned = {m: read_json(REPORTS / "finetune" / m / "metrics.json") for m in MODEL_NAMES}
    seeds = sorted(finetuned["base"]["seeds"].keys() & finetuned["adapted"]["seeds"].keys(), key=int)
    metrics = {}
    for metric in finetuned["base"]["test_mean"]:
        values = {m: [finetuned[m]["seeds"][s]["test"][metric] for s in seeds] for m in MODEL_NAMES}
        metrics[metric] = {m: summary(values[m]) for m in MODEL_NAMES}
        metrics[metric]["difference"] = paired_difference(values["base"], values["adapted"], metric, params.seed)
    task = finetuned["base"]["task"]
    primary = PRIMARY[task]
    down = {"task": task, "seeds": [int(s) for s in seeds], "primary_metric": primary, "metrics": metrics}

    p = metrics[primary]
    headline = (f"Downstream ({task}, {len(seeds)} seeds): adapted {primary} {p['adapted']['mean']:.4f} vs base "
                f"{p['base']['mean']:.4f} → {p['difference']['verdict']}. Held-out MLM loss: adapted "
                f"{evaluated['adapted']['loss']:.3f} vs base {evaluated['base']['loss']:.3f}"
                + (" (base scored with an untrained MLM head)." if mlm["base_head_untrained"] else "."))
    data = {"split": read_json(LINES / "stats.json"), "mask": read_json(MASKED / "stats.json")}
    t = data["mask"]["train"]
    data_text = (json.dumps(data["split"], indent=1) + "\n" +
                 f"mask: {t['lines']} training lines, {t['tokens']} tokens, {t['copies']} masked copies, "
                 f"masked fraction {t['masked_fraction']:.4f}; base tokenizer on this corpus: UNK rate "
                 f"{t['unk_rate']:.4%}, {t['pieces_per_word']:.3f} word pieces per word")
    compare = {"headline": headline, "mlm": mlm, "downstream": down, "data": data, "data_text": data_text}

    details = {m: read_json(REPORTS / "finetune" / m / "details.json") for m in MODEL_NAMES}
    figures = {}
    for name, title in (("train/loss", "downstream train loss"), ("dev/loss", "downstream dev loss")):
        series = {}
        for m in MODEL_NAMES:
            runs = [details[m]["curves"][s].get(name, []) for s in seeds]
            steps = sorted(set.intersection(*(set(x for x, _ in r) for r in runs)))
            series[m] = {"seeds": runs, "mean": [(x, float(np.mean([dict(r)[x] for r in runs]))) for x in steps]}
        figures[name] = curves_figure(title, series)
    pre = {}
    for split, name in (("train", "train_loss.csv"), ("held-out", "val_loss.csv")):
        with open(REPORTS / "pretrain" / name, encoding="utf-8") as f:
            pre[split] = {"mean": [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]}
    figures["pretrain"] = curves_figure("pretraining (masked-LM) loss", pre)

    write_json(REPORTS / "compare.json", {k: v for k, v in compare.items() if k != "data_text"})
    with atomic_file(REPORTS / "report.html") as f:
        f.write(render(compare, figures, open("params.yaml", encoding="utf-8").read()))
    print(headline)
    print(f"report: {(REPORTS / 'report.html').resolve()}")


if __name__ == "__main__":
    run(main)

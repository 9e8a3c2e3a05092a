"""finetune <base|adapted>: fine-tune the encoder on the downstream task once per seed; test the best dev epoch.

base and adapted run this same code with the same seeds, data order and hyperparameters. Writes
reports/finetune/<name>/: metrics.json (per seed and mean), details.json (confusion matrices, label map,
per-seed curves) and train_loss.csv / dev_loss.csv (mean over seeds, for dvc plots).
"""

import numpy as np

from pipeline.config import load_params
from pipeline.downstream import finetune_seed, task_rows
from pipeline.io import write_json
from pipeline.models import load_tokenizer, set_threads
from pipeline.tracking import finish_wandb, wandb_logger, write_curve
from stages import MODELS, REPORTS, parser, run


def mean_curve(runs: list[dict], name: str) -> list[tuple[int, float]]:
    """The mean over seeds at each step every seed recorded (the seeds share the step grid)."""
    per_seed = [dict(r["curves"].get(name, [])) for r in runs]
    steps = sorted(set.intersection(*(set(c) for c in per_seed)))
    return [(s, float(np.mean([c[s] for c in per_seed]))) for s in steps]


def main(argv: list[str]) -> None:
    args = parser(__doc__, "dapt finetune", model=True).parse_args(argv)
    name = args.model
    params = load_params()
    p, task = params.finetune, params.task
    set_threads(p.threads)
    folder = str(MODELS / name)
    rows, label_names = task_rows(task, load_tokenizer(folder).sep_token, p.max_train_rows)
    runs = {}
    for seed in p.seeds:
        logger = wandb_logger(params.tracking, f"finetune-{name}-seed{seed}", "finetune", [name, task.type],
                              {"model": name, "seed": seed, "task": task.model_dump(), "finetune": p.model_dump()})
        runs[seed] = finetune_seed(folder, task, p, seed, rows, len(label_names), logger)
        if logger is not None:
            logger.experiment.summary.update({f"test/{k}": v for k, v in runs[seed]["test"].items()
                                              if np.isscalar(v)})
        finish_wandb(logger)
        print(f"finetune {name} seed {seed}: " + ", ".join(
            f"test {k} {v:.4f}" for k, v in runs[seed]["test"].items() if np.isscalar(v)))

    def scalars(metrics: dict) -> dict:
        return {k: v for k, v in metrics.items() if np.isscalar(v)}

    out = REPORTS / "finetune" / name
    tests = [scalars(r["test"]) for r in runs.values()]
    write_json(out / "metrics.json", {
        "task": task.type,
        "seeds": {str(s): {"test": scalars(r["test"]), "dev": scalars(r["dev"]), "best_epoch": r["best_epoch"]}
                  for s, r in runs.items()},
        "test_mean": {k: float(np.mean([t[k] for t in tests])) for k in tests[0]},
        "test_std": {k: float(np.std([t[k] for t in tests], ddof=1)) if len(tests) > 1 else 0.0 for k in tests[0]},
    })
    write_json(out / "details.json", {
        "labels": label_names,
        "confusion": {str(s): r["test"].get("confusion") for s, r in runs.items()},
        "curves": {str(s): r["curves"] for s, r in runs.items()},
        "rows": {split: len(r) for split, r in rows.items()},
    })
    seeds = list(runs.values())
    write_curve(out / "train_loss.csv", mean_curve(seeds, "train/loss"))
    write_curve(out / "dev_loss.csv", mean_curve(seeds, "dev/loss"))


if __name__ == "__main__":
    run(main)

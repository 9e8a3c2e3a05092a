"""finetune <base|adapted>: fine-tune the encoder on the downstream task once per seed; test the best dev epoch.

base and adapted run this same code with the same seeds, data order and hyperparameters (task and finetune
sections of params.yaml). Writes reports/finetune/<name>/: metrics.json (per seed and mean), details.json
(label map, confusion matrices, per-seed curves, per-example test outputs) and train_loss.csv / dev_loss.csv
(mean over seeds, for dvc plots); and models/finetuned/<name>/: finetune.json (task, label map, params), plus
the best seed's weights with finetune.save_model: true (for `dapt predict` and `dapt embed`).
"""

import time

import numpy as np

from pipeline.config import load_params
from pipeline.downstream import finetune_seed, phases, task_features
from pipeline.finetuned import save_finetuned
from pipeline.io import atomic_dir, write_json
from pipeline.models import Trust, load_encoder, load_tokenizer, set_threads
from pipeline.tasks import load_task
from pipeline.tracking import finish_wandb, set_summary, wandb_logger, write_curve
from stages import MODELS, REPORTS, parser, run

FINETUNED = MODELS / "finetuned"


def mean_curve(runs: list[dict], name: str) -> list[tuple[int, float]]:
    """The mean over seeds at each step every seed recorded (the seeds share the step grid)."""
    per_seed = [dict(r["curves"].get(name, [])) for r in runs]
    steps = sorted(set.intersection(*(set(c) for c in per_seed)))
    return [(s, float(np.mean([c[s] for c in per_seed]))) for s in steps]


def scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if np.isscalar(v)}


def main(argv: list[str]) -> None:
    args = parser(__doc__, "dapt finetune", model=True).parse_args(argv)
    name, start = args.model, time.time()
    params = load_params()
    p, task = params.finetune, params.task
    set_threads(p.threads)
    folder, trust = str(MODELS / name), Trust.of(params)
    tokenizer = load_tokenizer(folder, trust)
    data = load_task(task, tokenizer.sep_token, p.max_train_rows)
    # Frozen encoder: its features are the same for every seed, so they are computed once for the model.
    cache = task_features(load_encoder(folder, trust), tokenizer, data, p) if phases(p)[0][0] else None
    runs, best = {}, None
    for seed in p.seeds:
        logger = wandb_logger(params.tracking, f"finetune-{name}-seed{seed}", "finetune", [name, task.type],
                              {"model": name, "seed": seed, "task": task.model_dump(), "finetune": p.model_dump()})
        runs[seed] = finetune_seed(folder, data, p, seed, cache, logger, trust=trust)
        module = runs[seed].pop("module")
        if p.save_model and (best is None or runs[seed]["dev"]["loss"] < runs[best[0]]["dev"]["loss"]):
            best = (seed, module)  # the seed with the lowest dev loss is the one saved
        set_summary(logger, {"test": scalars(runs[seed]["test"]), "dev": scalars(runs[seed]["dev"]),
                             "best_epoch": runs[seed]["best_epoch"]})
        finish_wandb(logger)
        print(f"finetune {name} seed {seed}: " + ", ".join(
            f"test {k} {v:.4f}" for k, v in runs[seed]["test"].items() if k in ("loss", "accuracy", "macro_f1")))

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
        "labels": data.labels,
        "class_weights": data.class_weights,
        "confusion": {str(s): r["test"].get("confusion") for s, r in runs.items()},
        "curves": {str(s): r["curves"] for s, r in runs.items()},
        "per_example": {str(s): r["per_example"] for s, r in runs.items()},
        "rows": {split: len(r) for split, r in data.rows.items()},
    })
    seeds = list(runs.values())
    write_curve(out / "train_loss.csv", mean_curve(seeds, "train/loss"))
    write_curve(out / "dev_loss.csv", mean_curve(seeds, "dev/loss"))
    meta = {"model": name, "task": task.type, "labels": data.labels, "pair": bool(task.classification.text_pair_field)
            and task.type == "classification", "finetune": p.model_dump(),
            "seed": best[0] if best else None, "dev": scalars(runs[best[0]]["dev"]) if best else None}
    with atomic_dir(FINETUNED / name) as tmp:
        save_finetuned(tmp, best[1] if best else None, tokenizer, meta)
    print(f"finetune {name}: {len(p.seeds)} seeds in {time.time() - start:.0f} s"
          + (f"; saved seed {best[0]} to {FINETUNED / name}" if best else ""))


if __name__ == "__main__":
    run(main)

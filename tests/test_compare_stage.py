"""stages/compare.py on constructed inputs: every file the upstream stages write, with known true effects."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import ROOT

PARAMS = {"seed": 42, "finetune": {"seeds": [1, 2, 3]}, "tracking": {"wandb": "disabled"}}


def write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)


def write_inputs(root: Path, accuracy: dict[str, list[float]], task: str = "triplet", n_test: int = 200,
                 per_example: bool = True, fill_mask: bool = True, head: dict | None = None,
                 mlm_gain: float = 0.4, leaked: int = 3, seed: int = 0) -> Path:
    """Write every input of the compare stage into `root`, as the upstream stages would.

    accuracy[model][i] is the test accuracy of seed i; per-example outputs are drawn to match it exactly, and
    every scalar in metrics.json is computed from them, so the files agree with each other like real ones."""
    rng = np.random.default_rng(seed)
    seeds = [str(s) for s in range(1, len(accuracy["base"]) + 1)]
    labels = ["cat", "dog", "eel"]
    truth = rng.integers(0, 3, n_test)
    for model, accs in accuracy.items():
        out = root / "reports" / "finetune" / model
        metrics, per_ex, curves = {}, {}, {}
        for s, acc in zip(seeds, accs):
            correct = np.zeros(n_test, bool)
            correct[rng.choice(n_test, round(acc * n_test), replace=False)] = True
            loss = np.where(correct, rng.uniform(0.0, 0.4, n_test), rng.uniform(0.4, 1.2, n_test))
            test = {"loss": float(loss.mean()), "accuracy": float(correct.mean())}
            if task == "triplet":
                per_ex[s] = [{"loss": float(x), "correct": float(c)} for x, c in zip(loss, correct)]
            else:
                pred = np.where(correct, truth, (truth + 1 + rng.integers(0, 2, n_test)) % 3)
                per_ex[s] = {"loss": loss.tolist(), "pred": pred.tolist(), "label": truth.tolist()}
                from pipeline.stats import class_scores

                scores = class_scores(pred, truth, 3)  # what the finetune stage reports, per class too
                test["macro_f1"] = float(scores["macro_f1"])
                for kind in ("precision", "recall", "f1"):
                    test.update({f"{kind}/{name}": float(v) for name, v in zip(labels, scores[kind])})
            metrics[s] = {"test": test, "dev": {"loss": test["loss"] + 0.01}, "best_epoch": 0}
            offset = 0.2 if model == "base" else 0.0
            curves[s] = {"train/loss": [[i, 1.5 - 0.1 * i + offset + 0.05 * int(s)] for i in range(1, 11)],
                         "dev/loss": [[0, 1.4 + offset], [5, 1.0 + offset], [10, 0.8 + offset + 0.01 * int(s)]]}
        names = list(metrics[seeds[0]]["test"])
        write(out / "metrics.json", {
            "task": task, "seeds": metrics,
            "test_mean": {k: float(np.mean([metrics[s]["test"][k] for s in seeds])) for k in names},
            "test_std": {k: float(np.std([metrics[s]["test"][k] for s in seeds], ddof=1)) if len(seeds) > 1 else 0.0
                         for k in names}})
        details = {"labels": labels if task == "classification" else [], "confusion": {s: None for s in seeds},
                   "curves": curves, "rows": {"train": 500, "dev": 100, "test": n_test}}
        if per_example:
            details["per_example"] = per_ex
        write(out / "details.json", details)
        write_csv(out / "train_loss.csv", [(i, 1.0) for i in range(3)])
        write_csv(out / "dev_loss.csv", [(i, 1.0) for i in range(3)])

    lines = np.arange(0, 300, 2)  # line numbers of the held-out lines (not contiguous, as in real shards)
    masked = rng.integers(1, 6, len(lines))
    base_loss = rng.uniform(4.0, 6.0, len(lines)) * masked
    losses = {"base": base_loss, "adapted": base_loss - mlm_gain * masked + rng.normal(0, 0.3, len(lines))}
    for model, loss_sum in losses.items():
        out = root / "reports" / "evaluate" / model
        loss = float(loss_sum.sum() / masked.sum())
        write(out / "metrics.json", {"loss": loss, "perplexity": float(np.exp(loss)), "top1_accuracy": 0.2,
                                     "top10_accuracy": 0.5, "masked_tokens": int(masked.sum()), "lines": len(lines)})
        with open(out / "per_line.csv", "w", encoding="utf-8") as f:
            f.write("line,masked,loss_sum\n" + "".join(f"{i},{m},{x:.6g}\n" for i, m, x in zip(lines, masked, loss_sum)))
        if fill_mask:
            top = [["love", 0.3], ["heart", 0.2], ["night", 0.1]] if model == "adapted" else [["the", 0.1], ["a", 0.05]]
            write(out / "fill_mask.json", {"rows": [{"line": int(i), "text": f"my [MASK] is <{i}>", "target": "love",
                                                     "top10": top} for i in lines[:20]]})
    pre = root / "reports" / "pretrain"
    write(pre / "metrics.json", {"steps": 20, "train_loss_last": 3.1, "val_loss_last": 3.3, "seconds": 12.5,
                                 "precision": "32-true", "devices": 1, **(head or {"base_head_untrained": False}),
                                 "base_head_missing_weights": []})
    write_csv(pre / "train_loss.csv", [(i, 6.0 - 0.1 * i) for i in range(1, 21)])
    write_csv(pre / "val_loss.csv", [(10, 5.2), (20, 4.6)])
    write(root / "artifacts" / "lines" / "stats.json", {
        "files": 2, "lines_in": 1000, "lines_out": {"train": 800, "val": 150},
        "dropped": {"duplicate": 40, "leaked_from_task_dev_test": leaked, "too_short": 7}})
    split = {"lines": 800, "copies": 4, "tokens": 9000, "words": 7000, "unk": 9, "masked_fraction": 0.15,
             "unk_rate": 0.001, "pieces_per_word": 1.15}
    write(root / "artifacts" / "masked" / "stats.json", {"max_seq_len": 64, "mlm_probability": 0.15, "train": split,
                                                         "val": {**split, "lines": 150, "copies": 1}})
    params = {**PARAMS, "task": {"type": task}, "finetune": {"seeds": [int(s) for s in seeds]}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def write_csv(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["step", "loss"])
        w.writerows(rows)


def run_compare(root: Path) -> subprocess.CompletedProcess:
    """The stage as DVC runs it: a fresh process in the repository root."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "stages.compare"], cwd=root, env=env, capture_output=True, text=True)


def compare(root: Path) -> dict:
    """The stage in this process (importing Lightning and matplotlib once for all tests), from `root`."""
    from stages import compare as stage

    cwd = os.getcwd()
    os.chdir(root)
    try:
        stage.main([])
    finally:
        os.chdir(cwd)
    return json.loads((root / "reports" / "compare.json").read_text())


def compare_error(root: Path, capsys) -> str:
    """Run the stage through `stages.run` (as `python -m stages.compare` does); return its one-line error."""
    from stages import compare as stage
    from stages import run

    cwd, argv = os.getcwd(), sys.argv
    os.chdir(root)
    sys.argv = ["dapt compare"]
    try:
        with pytest.raises(SystemExit) as exit_:
            run(stage.main)
    finally:
        os.chdir(cwd)
        sys.argv = argv
    assert exit_.value.code == 2
    return capsys.readouterr().err.strip()


BETTER = {"base": [0.70, 0.72, 0.69, 0.71, 0.70], "adapted": [0.76, 0.77, 0.75, 0.78, 0.76]}
SAME = {"base": [0.70, 0.72, 0.69, 0.71, 0.70], "adapted": [0.71, 0.70, 0.70, 0.70, 0.71]}


def test_adapted_truly_better(tmp_path):
    c = compare(write_inputs(tmp_path, BETTER))
    acc = c["downstream"]["metrics"]["accuracy"]
    d = acc["difference"]
    assert d["method"] == "seeds" and d["n"] == 5
    assert d["verdict"] == "better" and c["verdict"] == "better"
    assert 0 < d["ci95_low"] <= d["mean"] <= d["ci95_high"]
    assert d["mean"] == pytest.approx(np.mean(BETTER["adapted"]) - np.mean(BETTER["base"]), abs=1e-9)
    assert acc["base"]["mean"] == pytest.approx(np.mean(BETTER["base"]))
    assert acc["adapted"]["std"] == pytest.approx(np.std(BETTER["adapted"], ddof=1))
    # the test-set bootstrap is reported alongside: same point estimate, its own (wider: 200 examples) CI
    t = acc["test_set"]
    assert t["method"] == "test-set" and t["n"] == 200 and t["mean"] == pytest.approx(d["mean"])
    html = (tmp_path / "reports" / "report.html").read_text()
    assert "Adapting helped on the downstream task (triplet)" in html
    assert "<th>test-set 95% CI</th>" in html


def test_adapted_not_better(tmp_path):
    c = compare(write_inputs(tmp_path, SAME))
    d = c["downstream"]["metrics"]["accuracy"]["difference"]
    assert d["verdict"] == "no significant difference" and c["verdict"] == "no significant difference"
    assert d["ci95_low"] < 0 < d["ci95_high"]
    assert "No clear effect of adapting" in (tmp_path / "reports" / "report.html").read_text()


def test_adapted_worse(tmp_path):
    c = compare(write_inputs(tmp_path, {"base": BETTER["adapted"], "adapted": BETTER["base"]}))
    d = c["downstream"]["metrics"]["accuracy"]["difference"]
    assert d["verdict"] == "worse" and d["ci95_high"] < 0


def test_mlm_paired_by_line(tmp_path):
    c = compare(write_inputs(tmp_path, BETTER, mlm_gain=0.4))
    mlm = c["mlm"]
    d = mlm["loss_difference"]
    assert d["method"] == "lines" and d["n"] == mlm["lines"] == 150
    assert d["verdict"] == "better" and d["ci95_high"] < 0
    # the paired difference is the difference of the two models' losses (token-weighted, as evaluate reports)
    assert d["mean"] == pytest.approx(mlm["adapted"]["loss"] - mlm["base"]["loss"], abs=1e-5)
    assert d["mean"] == pytest.approx(-0.4, abs=0.1)
    r = mlm["perplexity_ratio"]
    assert r["value"] == pytest.approx(mlm["adapted"]["perplexity"] / mlm["base"]["perplexity"], rel=1e-4)
    assert r["ci95_low"] < r["value"] < r["ci95_high"] < 1
    c2 = compare(write_inputs(tmp_path / "same", BETTER, mlm_gain=0.0))
    d2 = c2["mlm"]["loss_difference"]
    assert d2["verdict"] == "no significant difference" and d2["ci95_low"] < 0 < d2["ci95_high"]


def test_single_seed_uses_a_labelled_test_set_bootstrap(tmp_path):
    c = compare(write_inputs(tmp_path, {"base": [0.60], "adapted": [0.80]}))
    d = c["downstream"]["metrics"]["accuracy"]["difference"]
    assert d["method"] == "test-set" and d["n"] == 200
    assert d["mean"] == pytest.approx(0.2)
    assert d["verdict"] == "better" and d["ci95_low"] > 0
    assert c["downstream"]["metrics"]["accuracy"]["test_set"] is None  # it *is* the difference
    html = (tmp_path / "reports" / "report.html").read_text()
    assert "test-set bootstrap over 200 examples (1 seed)" in html
    assert "only 1 seed, so the CI is a test-set bootstrap" in html
    assert "<th>test-set 95% CI</th>" not in html  # the CI column already is the test-set bootstrap


def test_single_seed_small_difference_is_not_significant(tmp_path):
    c = compare(write_inputs(tmp_path, {"base": [0.70], "adapted": [0.71]}, n_test=100))
    d = c["downstream"]["metrics"]["accuracy"]["difference"]
    assert d["method"] == "test-set" and d["verdict"] == "no significant difference"
    assert d["ci95_low"] < 0 < d["ci95_high"]


def test_single_seed_without_per_example_has_no_ci(tmp_path):
    c = compare(write_inputs(tmp_path, {"base": [0.6], "adapted": [0.8]}, per_example=False))
    d = c["downstream"]["metrics"]["accuracy"]["difference"]
    assert d["method"] == "seeds" and d["ci95_low"] is None
    assert d["verdict"] == "too few seeds to tell (n=1, need 3)"
    assert "Too little evidence to tell" in (tmp_path / "reports" / "report.html").read_text()


def test_classification_macro_f1_is_resampled_and_primary(tmp_path):
    c = compare(write_inputs(tmp_path, {"base": [0.5, 0.55], "adapted": [0.8, 0.82]}, task="classification"))
    down = c["downstream"]
    assert down["primary_metric"] == "macro_f1"
    assert set(down["metrics"]) == {"loss", "accuracy", "macro_f1"} | {
        f"{kind}/{name}" for kind in ("precision", "recall", "f1") for name in ("cat", "dog", "eel")}
    f1 = down["metrics"]["macro_f1"]
    assert f1["difference"]["method"] == "test-set"  # two seeds: too few for a CI over seeds
    # the bootstrap's point estimate recomputes macro-F1 from the per-example predictions: it must match the
    # finetune stage's own figures
    assert f1["difference"]["mean"] == pytest.approx(f1["adapted"]["mean"] - f1["base"]["mean"], abs=1e-9)
    assert f1["difference"]["verdict"] == "better"
    for name in ("cat", "dog", "eel"):  # per-class figures are recomputed per resample as well
        d = down["metrics"][f"f1/{name}"]["difference"]
        assert d["method"] == "test-set" and d["mean"] == pytest.approx(
            down["metrics"][f"f1/{name}"]["adapted"]["mean"] - down["metrics"][f"f1/{name}"]["base"]["mean"])
    page = (tmp_path / "reports" / "report.html").read_text()
    assert "Per class (precision, recall, F1 of each label)" in page and "<td>f1/dog</td>" in page


def test_compare_json_is_a_dvc_metrics_file(tmp_path):
    c = compare(write_inputs(tmp_path, BETTER, leaked=3))
    assert c["schema_version"] == 1
    assert c["data"]["leaked_lines"] == 3 and c["data"]["duplicate_lines"] == 40
    assert c["data"]["unk_rate"] == 0.001 and c["data"]["pieces_per_word"] == 1.15
    assert c["data"]["train_lines"] == 800 and c["data"]["val_lines"] == 150

    def leaves(tree):  # DVC shows numbers, bools and strings and drops lists: keep every statistic a scalar
        for v in tree.values():
            if isinstance(v, dict):
                yield from leaves(v)
            else:
                yield v

    assert not [v for v in leaves(c) if isinstance(v, list) and v is not c["downstream"]["seeds"]]
    assert (tmp_path / "reports" / "compare.json").read_text().endswith("\n")


def test_head_caution_follows_the_pretrain_flag(tmp_path):
    compare(write_inputs(tmp_path / "u", BETTER, head={"base_head_untrained": True}))
    page = (tmp_path / "u" / "reports" / "report.html").read_text()
    assert "never trained" in page and "scored with an untrained MLM head" in page
    compare(write_inputs(tmp_path / "w", BETTER, head={"base_head_untrained": False, "head_warmup_steps": 150}))
    page = (tmp_path / "w" / "reports" / "report.html").read_text()
    assert "a head warmed up for 150 steps with the encoder frozen" in page and "never trained" not in page
    compare(write_inputs(tmp_path / "o", BETTER))
    page = (tmp_path / "o" / "reports" / "report.html").read_text()
    assert "warmed up" not in page and "never trained" not in page


def test_fill_mask_side_by_side_and_its_absence(tmp_path):
    compare(write_inputs(tmp_path / "f", BETTER))
    page = (tmp_path / "f" / "reports" / "report.html").read_text()
    assert "<td>my [MASK] is &lt;0&gt;</td><td><b>love</b></td><td>the&nbsp;0.10<br>a&nbsp;0.05</td>" \
           "<td><b>love</b>&nbsp;0.30<br>heart&nbsp;0.20<br>night&nbsp;0.10</td>" in page
    compare(write_inputs(tmp_path / "n", BETTER, fill_mask=False))
    page = (tmp_path / "n" / "reports" / "report.html").read_text()
    assert "Not available: the evaluate stage wrote no reports/evaluate/&lt;model&gt;/fill_mask.json" in page


def test_report_is_self_contained_with_curves(tmp_path):
    compare(write_inputs(tmp_path, BETTER))
    page = (tmp_path / "reports" / "report.html").read_text()
    assert page.index('id="verdict"') < page.index("<h2>")
    for key in ("train", "dev"):
        assert f'id="{key}-base-mean"' in page and f'id="{key}-adapted-mean"' in page
    assert 'id="pretrain-train-mean"' in page and 'id="pretrain-held-out-mean"' in page
    assert "<script" not in page.lower() and "<link" not in page and "src=" not in page
    assert "3 corpus lines also occurred in the task's dev/test texts" in page
    assert "seed: 42" in page  # params used


def test_mismatched_masks_are_one_clear_error(tmp_path, capsys):
    root = write_inputs(tmp_path, BETTER)
    path = root / "reports" / "evaluate" / "adapted" / "per_line.csv"
    rows = path.read_text().splitlines()
    line, masked, loss = rows[1].split(",")
    path.write_text("\n".join([rows[0], f"{line},{int(masked) + 1},{loss}", *rows[2:]]) + "\n")
    assert compare_error(root, capsys) == ("error: reports/evaluate/base/per_line.csv and reports/evaluate/adapted/"
                                   "per_line.csv: not the same lines and masks (rerun evaluate for both models "
                                   "on the same shards)")


def test_missing_input_is_one_clear_error(tmp_path):
    root = write_inputs(tmp_path, BETTER)
    (root / "reports" / "finetune" / "adapted" / "details.json").unlink()
    proc = run_compare(root)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: reports/finetune/adapted/details.json: not found (run the stages before "
                                   "compare: dvc repro)")


def test_per_example_of_different_test_sets_is_an_error(tmp_path, capsys):
    root = write_inputs(tmp_path, {"base": [0.6], "adapted": [0.8]}, task="classification")
    path = root / "reports" / "finetune" / "adapted" / "details.json"
    details = json.loads(path.read_text())
    details["per_example"]["1"]["label"] = details["per_example"]["1"]["label"][::-1]
    path.write_text(json.dumps(details))
    assert "per_example does not list the same test examples" in compare_error(root, capsys)

"""pipeline/stats.py: paired differences, bootstrap CIs and verdicts; per-example metrics; summaries."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.stats import (MIN_PAIRS, example_bootstrap, example_metric, has_example_metric, lower_is_better,
                            macro_f1, mlm_loss_difference, paired_difference, per_example_difference, summary,
                            verdict)

BASE = [0.70, 0.72, 0.69, 0.71, 0.73]


def test_clearly_better_accuracy():
    adapted = [b + d for b, d in zip(BASE, [0.030, 0.025, 0.035, 0.028, 0.032])]
    r = paired_difference(BASE, adapted, "accuracy")
    assert r["verdict"] == "better" and r["method"] == "seeds"
    assert r["n"] == 5
    assert r["mean"] == pytest.approx(0.03)
    assert 0 < r["ci95_low"] <= r["mean"] <= r["ci95_high"]
    assert r["ci95_low"] >= 0.025 and r["ci95_high"] <= 0.035  # the CI of the mean lies within the diffs' range


def test_clearly_worse_accuracy():
    adapted = [b - d for b, d in zip(BASE, [0.03, 0.02, 0.04, 0.03, 0.025])]
    r = paired_difference(BASE, adapted, "macro_f1")
    assert r["verdict"] == "worse"
    assert r["ci95_high"] < 0
    assert r["mean"] == pytest.approx(-0.029)


def test_noise_around_zero():
    adapted = [b + d for b, d in zip(BASE, [0.01, -0.012, 0.005, -0.008, 0.002])]
    r = paired_difference(BASE, adapted, "accuracy")
    assert r["verdict"] == "no significant difference"
    assert r["ci95_low"] < 0 < r["ci95_high"]
    assert r["mean"] == pytest.approx(-0.0006)


def test_three_seeds_ci_is_the_range():
    """What the report warns about: with 3 seeds the percentile CI is [min, max] of the differences."""
    r = paired_difference([0.5, 0.5, 0.5], [0.51, 0.53, 0.56], "accuracy")
    assert r["ci95_low"] == pytest.approx(0.01) and r["ci95_high"] == pytest.approx(0.06)


@pytest.mark.parametrize("metric", ["loss", "dev/loss", "perplexity"])
def test_lower_is_better_metrics(metric):
    base = [2.0, 2.1, 1.9, 2.05]
    lower = paired_difference(base, [b - 0.2 for b in base[:3]] + [base[3] - 0.25], metric)
    higher = paired_difference(base, [b + 0.2 for b in base[:3]] + [base[3] + 0.25], metric)
    assert lower["verdict"] == "better" and lower["mean"] < 0
    assert higher["verdict"] == "worse" and higher["mean"] > 0
    assert lower_is_better(metric)


@pytest.mark.parametrize("metric", ["accuracy", "macro_f1", "top10_accuracy"])
def test_higher_is_better_metrics(metric):
    assert not lower_is_better(metric)


def test_verdict_words():
    assert verdict("accuracy", 0.01, 0.02) == "better"
    assert verdict("accuracy", -0.02, -0.01) == "worse"
    assert verdict("loss", -0.02, -0.01) == "better"
    assert verdict("loss", 0.01, 0.02) == "worse"
    assert verdict("accuracy", -0.01, 0.02) == "no significant difference"
    assert verdict("accuracy", 0.0, 0.02) == "no significant difference"  # touching 0 is not excluding it


def test_no_pairs_is_an_error():
    with pytest.raises(ValueError, match="accuracy: no pairs"):
        paired_difference([], [], "accuracy")


@pytest.mark.parametrize("n", [1, 2])
def test_too_few_pairs(n):
    r = paired_difference([0.5, 0.6][:n], [0.9, 0.95][:n], "accuracy")
    assert r["ci95_low"] is None and r["ci95_high"] is None
    assert r["n"] == n
    assert r["verdict"] == f"too few seeds to tell (n={n}, need {MIN_PAIRS})"
    assert r["mean"] == pytest.approx(np.mean([0.4, 0.35][:n]))


def test_identical_models():
    r = paired_difference(BASE, BASE, "accuracy")
    assert r["verdict"] == "no significant difference"
    assert (r["ci95_low"], r["ci95_high"]) == (0.0, 0.0)
    assert r["mean"] == 0.0


def test_constant_nonzero_difference():
    base = [1.0, 2.0, 3.0]
    r = paired_difference(base, [b + 0.5 for b in base], "accuracy")
    assert r["verdict"] == "better"
    assert (r["ci95_low"], r["ci95_high"]) == (0.5, 0.5)
    assert paired_difference(base, [b + 0.5 for b in base], "loss")["verdict"] == "worse"


def test_deterministic_for_a_seed():
    rng = np.random.default_rng(1)
    base = rng.normal(0.7, 0.02, size=40)
    adapted = base + rng.normal(0, 0.01, size=40)
    a = paired_difference(base, adapted, "accuracy", seed=3, resamples=2000)
    assert a == paired_difference(base, adapted, "accuracy", seed=3, resamples=2000)
    assert a["ci95_low"] != paired_difference(base, adapted, "accuracy", seed=4, resamples=2000)["ci95_low"]


def test_result_is_json_friendly():
    r = paired_difference(BASE, [b + 0.01 for b in BASE[:4]] + [BASE[4] + 0.02], "accuracy")
    assert json.loads(json.dumps(r)) == r
    assert type(r["ci95_low"]) is float and type(r["mean"]) is float


def test_summary():
    s = summary([0.5, 0.7, 0.9])
    assert s["mean"] == pytest.approx(0.7)
    assert s["std"] == pytest.approx(0.2)  # sample std (ddof=1)
    assert s["n"] == 3
    assert summary([0.4]) == {"mean": 0.4, "std": 0.0, "n": 1}
    assert type(summary(np.array([1, 2]))["mean"]) is float


# -- the example-level bootstrap --------------------------------------------------------------------------------

def test_example_bootstrap_of_a_mean_matches_the_textbook_interval():
    rng = np.random.default_rng(0)
    x = rng.normal(0.3, 1.0, 2000)
    r = example_bootstrap(len(x), lambda idx: x[idx].mean(-1), "accuracy", "test-set", resamples=4000)
    half = 1.96 * x.std(ddof=1) / np.sqrt(len(x))
    assert r["mean"] == pytest.approx(x.mean())
    assert r["ci95_low"] == pytest.approx(x.mean() - half, abs=0.01)
    assert r["ci95_high"] == pytest.approx(x.mean() + half, abs=0.01)
    assert r["verdict"] == "better" and r["n"] == 2000 and r["method"] == "test-set"


def test_example_bootstrap_of_a_constant_statistic():
    r = example_bootstrap(10, lambda idx: np.zeros(idx.shape[:-1]), "accuracy", "test-set")
    assert (r["mean"], r["ci95_low"], r["ci95_high"]) == (0.0, 0.0, 0.0)
    assert r["verdict"] == "no significant difference"
    with pytest.raises(ValueError, match="accuracy: no examples"):
        example_bootstrap(0, lambda idx: idx.sum(-1), "accuracy", "test-set")


def test_class_scores_match_the_finetune_stage():
    from pipeline.downstream import ClassificationModule

    rng = np.random.default_rng(2)
    labels = ["a", "b", "c", "d"]
    label = rng.integers(0, 4, 300)
    label[label == 3] = 2  # class d never occurs: macro-F1 is over the classes present
    pred = np.where(rng.random(300) < 0.6, label, rng.integers(0, 4, 300))
    columns = {"pred": pred, "label": label, "loss": rng.random(300)}
    theirs = ClassificationModule.metrics(SimpleNamespace(labels=labels), columns)
    assert float(macro_f1(pred, label, 4)) == pytest.approx(theirs["macro_f1"])
    everything = np.arange(300)[None]
    for metric, value in theirs.items():
        if np.isscalar(value):
            assert has_example_metric(metric, columns, labels), metric
            assert float(example_metric(metric, columns, everything, labels)[0]) == pytest.approx(value), metric
    assert not has_example_metric("f1/zebra", columns, labels)
    assert not has_example_metric("macro_f1", {"loss": [], "correct": []}, [])
    # batched along leading axes: each row is scored on its own
    both = macro_f1(np.stack([pred, label]), np.stack([label, label]), 4)
    assert both.shape == (2,) and both[0] == pytest.approx(theirs["macro_f1"]) and both[1] == 1.0


def triplet_outputs(rng, n, p):
    correct = (rng.random(n) < p).astype(float)
    return {"loss": np.where(correct > 0, 0.1, 0.8) + rng.uniform(0, 0.1, n), "correct": correct}


def test_per_example_difference_better_and_not():
    rng = np.random.default_rng(3)
    base = [triplet_outputs(rng, 400, 0.6)]
    better = per_example_difference(base, [triplet_outputs(rng, 400, 0.8)], "accuracy")
    assert better["verdict"] == "better" and better["ci95_low"] > 0 and better["method"] == "test-set"
    same = per_example_difference(base, [triplet_outputs(rng, 400, 0.6)], "accuracy")
    assert same["verdict"] == "no significant difference" and same["ci95_low"] < 0 < same["ci95_high"]
    lower_loss = per_example_difference(base, [triplet_outputs(rng, 400, 0.8)], "loss")
    assert lower_loss["verdict"] == "better" and lower_loss["ci95_high"] < 0


def test_per_example_difference_pairs_examples():
    """Paired: a model that fixes 10 of 1000 examples and breaks none is significantly better, although an
    unpaired comparison of two accuracies 0.50 vs 0.51 on 1000 examples could never tell."""
    correct = np.zeros(1000)
    correct[:500] = 1
    fixed = correct.copy()
    fixed[500:510] = 1
    r = per_example_difference([{"loss": 1 - correct, "correct": correct}], [{"loss": 1 - fixed, "correct": fixed}],
                               "accuracy")
    assert r["mean"] == pytest.approx(0.01) and r["ci95_low"] > 0 and r["verdict"] == "better"


def test_per_example_difference_averages_seeds():
    rng = np.random.default_rng(4)
    base = [triplet_outputs(rng, 300, 0.6) for _ in range(2)]
    adapted = [triplet_outputs(rng, 300, 0.7) for _ in range(2)]
    r = per_example_difference(base, adapted, "accuracy", resamples=2000)
    expected = np.mean([a["correct"].mean() - b["correct"].mean() for a, b in zip(adapted, base)])
    assert r["mean"] == pytest.approx(expected) and r["n"] == 300


def test_per_example_difference_classification_metrics():
    rng = np.random.default_rng(5)
    label = rng.integers(0, 3, 500)
    columns = [{"loss": rng.random(500), "pred": np.where(rng.random(500) < p, label, (label + 1) % 3),
                "label": label} for p in (0.5, 0.8)]
    for metric in ("accuracy", "macro_f1", "f1/x", "recall/y"):
        r = per_example_difference([columns[0]], [columns[1]], metric, labels=["x", "y", "z"])
        assert r["verdict"] == "better", metric
    with pytest.raises(KeyError, match="recall: no per-example definition"):
        per_example_difference([columns[0]], [columns[1]], "recall", labels=["x", "y", "z"])


def test_mlm_loss_difference_is_token_weighted_and_paired():
    rng = np.random.default_rng(6)
    masked = rng.integers(1, 8, 500)
    base = rng.uniform(3, 6, 500) * masked
    adapted = base - 0.1 * masked + rng.normal(0, 0.2, 500)
    r = mlm_loss_difference(masked, base, adapted)
    assert r["mean"] == pytest.approx(adapted.sum() / masked.sum() - base.sum() / masked.sum())
    assert r["verdict"] == "better" and r["ci95_low"] < r["mean"] < r["ci95_high"] < 0
    assert r["method"] == "lines" and r["n"] == 500
    same = mlm_loss_difference(masked, base, base + rng.normal(0, 0.2, 500))
    assert same["verdict"] == "no significant difference"

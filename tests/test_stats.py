"""pipeline/stats.py: paired differences, bootstrap CIs and verdicts; summaries."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.stats import MIN_PAIRS, lower_is_better, paired_difference, summary

BASE = [0.70, 0.72, 0.69, 0.71, 0.73]


def test_clearly_better_accuracy():
    adapted = [b + d for b, d in zip(BASE, [0.030, 0.025, 0.035, 0.028, 0.032])]
    r = paired_difference(BASE, adapted, "accuracy")
    assert r["verdict"] == "better"
    assert r["n"] == 5
    assert r["mean"] == pytest.approx(0.03)
    low, high = r["ci95"]
    assert 0 < low <= r["mean"] <= high
    assert low >= 0.025 and high <= 0.035  # the bootstrap CI of the mean lies within the range of the diffs


def test_clearly_worse_accuracy():
    adapted = [b - d for b, d in zip(BASE, [0.03, 0.02, 0.04, 0.03, 0.025])]
    r = paired_difference(BASE, adapted, "macro_f1")
    assert r["verdict"] == "worse"
    assert r["ci95"][1] < 0
    assert r["mean"] == pytest.approx(-0.029)


def test_noise_around_zero():
    adapted = [b + d for b, d in zip(BASE, [0.01, -0.012, 0.005, -0.008, 0.002])]
    r = paired_difference(BASE, adapted, "accuracy")
    assert r["verdict"] == "no significant difference"
    low, high = r["ci95"]
    assert low < 0 < high
    assert r["mean"] == pytest.approx(-0.0006)


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


def test_no_pairs_is_an_error():
    with pytest.raises(ValueError, match="accuracy: no pairs"):
        paired_difference([], [], "accuracy")


@pytest.mark.parametrize("n", [1, 2])
def test_too_few_pairs(n):
    r = paired_difference([0.5, 0.6][:n], [0.9, 0.95][:n], "accuracy")
    assert r["ci95"] is None
    assert r["n"] == n
    assert r["verdict"] == f"too few pairs to tell (n={n}, need {MIN_PAIRS})"
    if n:
        assert r["mean"] == pytest.approx(np.mean([0.4, 0.35][:n]))


def test_identical_models():
    r = paired_difference(BASE, BASE, "accuracy")
    assert r["verdict"] == "identical"
    assert r["ci95"] == [0.0, 0.0]
    assert r["mean"] == 0.0


def test_constant_nonzero_difference():
    base = [1.0, 2.0, 3.0]
    r = paired_difference(base, [b + 0.5 for b in base], "accuracy")
    assert r["verdict"] == "better"
    assert r["ci95"] == [0.5, 0.5]
    r = paired_difference(base, [b + 0.5 for b in base], "loss")
    assert r["verdict"] == "worse"


def test_deterministic_for_a_seed():
    rng = np.random.default_rng(1)
    base = rng.normal(0.7, 0.02, size=40)
    adapted = base + rng.normal(0, 0.01, size=40)
    a = paired_difference(base, adapted, "accuracy", seed=3, resamples=2000)
    assert a == paired_difference(base, adapted, "accuracy", seed=3, resamples=2000)
    assert a["ci95"] != paired_difference(base, adapted, "accuracy", seed=4, resamples=2000)["ci95"]


def test_many_pairs_per_line_losses():
    rng = np.random.default_rng(0)
    base = rng.normal(3.0, 0.5, size=500)
    adapted = base - 0.05 + rng.normal(0, 0.1, size=500)  # small but consistent gain
    r = paired_difference(base, adapted, "loss", resamples=2000)
    assert r["verdict"] == "better"
    assert r["ci95"][0] < -0.05 < r["ci95"][1] < 0


def test_result_is_json_friendly():
    import json

    r = paired_difference(BASE, [b + 0.01 for b in BASE[:4]] + [BASE[4] + 0.02], "accuracy")
    assert json.loads(json.dumps(r)) == r
    assert all(type(x) is float for x in r["ci95"])


def test_summary():
    s = summary([0.5, 0.7, 0.9])
    assert s["mean"] == pytest.approx(0.7)
    assert s["std"] == pytest.approx(0.2)  # sample std (ddof=1)
    assert s["n"] == 3
    assert summary([0.4]) == {"mean": 0.4, "std": 0.0, "n": 1}
    assert type(summary(np.array([1, 2]))["mean"]) is float

"""Base vs adapted, honestly: per-model mean and spread, paired differences with 95% bootstrap CIs, verdicts.

Two kinds of pairing, two bootstraps (both `scipy.stats.bootstrap`, percentile method, seeded):
- over seeds: base and adapted fine-tuned with the same seed form a pair; the CI of the mean difference
  covers the seed-to-seed variation of fine-tuning, usually the largest source of noise. Needs >= MIN_PAIRS.
- over examples (held-out lines, test examples): the same example scored by both models forms a pair; the CI
  covers the noise of having drawn this particular test set, not the variation between fine-tuning seeds.
  It serves the MLM comparison always and the downstream one when there are too few seeds.

A verdict is 'better' / 'worse' when the CI excludes 0, else 'no significant difference'.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

LOWER_IS_BETTER = ("loss", "perplexity")
MIN_PAIRS = 3
RESAMPLES = 10_000
BETTER, WORSE, UNSURE = "better", "worse", "no significant difference"


def lower_is_better(metric: str) -> bool:
    return any(word in metric for word in LOWER_IS_BETTER)


def summary(values) -> dict:
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": int(len(v))}


def verdict(metric: str, low: float, high: float) -> str:
    """'better' / 'worse' when the CI of (adapted - base) excludes 0, in the metric's good direction."""
    if low > 0 or high < 0:
        return BETTER if (high < 0) == lower_is_better(metric) else WORSE
    return UNSURE


def _result(metric: str, mean: float, n: int, method: str, low: float, high: float) -> dict:
    return {"mean": float(mean), "n": int(n), "method": method, "ci95_low": float(low), "ci95_high": float(high),
            "verdict": verdict(metric, low, high)}


def paired_difference(base, adapted, metric: str, seed: int = 0, resamples: int = RESAMPLES) -> dict:
    """adapted - base, pair by pair (same seed), with a 95% bootstrap CI of the mean difference.

    With fewer than MIN_PAIRS pairs a bootstrap CI is meaningless (two seeds give back their own range), so
    there is no CI and the verdict says so."""
    diffs = np.asarray(adapted, dtype=float) - np.asarray(base, dtype=float)
    if len(diffs) == 0:
        raise ValueError(f"{metric}: no pairs to compare (no seed common to both models)")
    if len(diffs) < MIN_PAIRS:
        return {"mean": float(diffs.mean()), "n": int(len(diffs)), "method": "seeds", "ci95_low": None,
                "ci95_high": None, "verdict": f"too few seeds to tell (n={len(diffs)}, need {MIN_PAIRS})"}
    if np.ptp(diffs) == 0:  # every pair differs by the same amount: the bootstrap has nothing to resample
        return _result(metric, diffs[0], len(diffs), "seeds", diffs[0], diffs[0])
    ci = stats.bootstrap((diffs,), np.mean, confidence_level=0.95, n_resamples=resamples, method="percentile",
                         rng=np.random.default_rng(seed)).confidence_interval
    return _result(metric, diffs.mean(), len(diffs), "seeds", ci.low, ci.high)


def example_bootstrap(n: int, statistic, metric: str, method: str, seed: int = 0, resamples: int = RESAMPLES) -> dict:
    """A 95% CI of statistic(idx) -- a paired difference computed on the examples `idx` -- by resampling the
    n examples with replacement. `statistic` maps an int array (..., n) of example indices to (...) values,
    so one call scores a whole batch of resamples."""
    if n == 0:
        raise ValueError(f"{metric}: no examples to compare")
    observed = float(statistic(np.arange(n)[None])[0])
    ci = stats.bootstrap((np.arange(n),), lambda idx, axis=-1: statistic(idx.astype(np.int64)), vectorized=True,
                         confidence_level=0.95, n_resamples=resamples, batch=max(1, 2_000_000 // n),
                         method="percentile", rng=np.random.default_rng(seed)).confidence_interval
    low, high = float(ci.low), float(ci.high)
    if not (np.isfinite(low) and np.isfinite(high)):  # nan when every resample scores the same: the CI is that
        low = high = observed
    return _result(metric, observed, n, method, low, high)


# -- per-example metrics: the downstream metrics recomputed on a resample of the test set ---------------------

def class_scores(pred: np.ndarray, label: np.ndarray, num_labels: int) -> dict[str, np.ndarray]:
    """Per-class precision, recall and F1 along the last axis (shape (..., num_labels)) and macro-F1 over the
    classes present in `label` (shape (...)), as pipeline/downstream.py defines them for one test set."""
    pred, label = np.asarray(pred, dtype=np.int64), np.asarray(label, dtype=np.int64)
    flat_pred, flat_label = pred.reshape(-1, pred.shape[-1]), label.reshape(-1, label.shape[-1])
    k = num_labels
    rows = np.arange(len(flat_pred))[:, None] * k * k  # one confusion matrix per row: offset its cell codes
    confusion = np.bincount((rows + flat_label * k + flat_pred).ravel(), minlength=len(flat_pred) * k * k)
    confusion = confusion.reshape(-1, k, k)  # [row, label, pred]
    tp = np.diagonal(confusion, axis1=1, axis2=2).astype(float)
    precision = tp / np.maximum(confusion.sum(1), 1)
    recall = tp / np.maximum(confusion.sum(2), 1)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    present = confusion.sum(2) > 0
    macro = (f1 * present).sum(1) / np.maximum(present.sum(1), 1)
    shape = pred.shape[:-1]
    return {"precision": precision.reshape(*shape, k), "recall": recall.reshape(*shape, k),
            "f1": f1.reshape(*shape, k), "macro_f1": macro.reshape(shape)}


def macro_f1(pred: np.ndarray, label: np.ndarray, num_labels: int) -> np.ndarray:
    return class_scores(pred, label, num_labels)["macro_f1"]


def has_example_metric(metric: str, columns: dict, labels: list[str]) -> bool:
    """Whether `metric` can be recomputed from these per-example columns (see example_metric)."""
    if metric in ("loss", "accuracy"):
        return "loss" in columns and ("correct" in columns or "pred" in columns)
    kind, _, name = metric.partition("/")
    return "pred" in columns and (metric == "macro_f1" or kind in ("precision", "recall", "f1") and name in labels)


def example_metric(metric: str, columns: dict[str, np.ndarray], idx: np.ndarray, labels: list[str]) -> np.ndarray:
    """The test metric `metric` of one fine-tuned model on the examples idx (..., n). `columns` are its
    per-example outputs: triplet {"loss", "correct"}, classification {"loss", "pred", "label"}; classification
    also gives macro_f1 and precision/<label>, recall/<label>, f1/<label>."""
    if metric == "loss":
        return columns["loss"][idx].mean(-1)
    if metric == "accuracy":
        correct = columns["correct"] if "correct" in columns else columns["pred"] == columns["label"]
        return correct[idx].mean(-1)
    if not has_example_metric(metric, columns, labels):
        raise KeyError(f"{metric}: no per-example definition (known: loss, accuracy, macro_f1, "
                       "precision/<label>, recall/<label>, f1/<label>)")
    scores = class_scores(columns["pred"][idx], columns["label"][idx], len(labels))
    if metric == "macro_f1":
        return scores["macro_f1"]
    kind, _, name = metric.partition("/")
    return scores[kind][..., labels.index(name)]


def per_example_difference(base: list[dict], adapted: list[dict], metric: str, labels: list[str] = (),
                           seed: int = 0, resamples: int = RESAMPLES) -> dict:
    """adapted - base of a test metric averaged over the seeds, with a 95% CI from resampling test examples
    (the same resample for every seed and both models: a paired bootstrap). base[i] / adapted[i] are the
    per-example columns of seed i. Covers test-set noise only, not seed-to-seed variation."""
    n, labels = len(base[0]["loss"]), list(labels)

    def difference(idx):
        return np.mean([example_metric(metric, a, idx, labels) - example_metric(metric, b, idx, labels)
                        for b, a in zip(base, adapted)], axis=0)

    return example_bootstrap(n, difference, metric, "test-set", seed, resamples)


def mlm_loss_difference(masked, base_loss_sum, adapted_loss_sum, seed: int = 0, resamples: int = RESAMPLES) -> dict:
    """adapted - base held-out MLM loss (mean over masked tokens, as the evaluate stage reports it), paired by
    line on identical masks, with a 95% CI from resampling lines."""
    masked, b, a = (np.asarray(x, dtype=float) for x in (masked, base_loss_sum, adapted_loss_sum))
    return example_bootstrap(len(masked), lambda idx: (a[idx] - b[idx]).sum(-1) / masked[idx].sum(-1), "loss",
                             "lines", seed, resamples)

"""Base vs adapted, honestly: per-model mean and spread, the paired difference with a bootstrap CI, a verdict."""

from __future__ import annotations

import numpy as np
from scipy import stats

LOWER_IS_BETTER = ("loss", "perplexity")
MIN_PAIRS = 3


def lower_is_better(metric: str) -> bool:
    return any(word in metric for word in LOWER_IS_BETTER)


def summary(values) -> dict:
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": int(len(v))}


def paired_difference(base, adapted, metric: str, seed: int = 0, resamples: int = 10_000) -> dict:
    """adapted - base, pair by pair (same seed, or same held-out line), with a 95% percentile-bootstrap CI
    of the mean difference and a verdict: 'better' / 'worse' when the CI excludes 0, else 'no significant
    difference'. With fewer than MIN_PAIRS pairs a bootstrap CI is meaningless (two seeds give back their own
    range), so there is no CI and the verdict says so."""
    diffs = np.asarray(adapted, dtype=float) - np.asarray(base, dtype=float)
    if len(diffs) == 0:
        raise ValueError(f"{metric}: no pairs to compare (no seed or held-out line common to both models)")
    out = {"mean": float(diffs.mean()), "n": int(len(diffs)), "ci95": None}
    if len(diffs) < MIN_PAIRS:
        out["verdict"] = f"too few pairs to tell (n={len(diffs)}, need {MIN_PAIRS})"
        return out
    if np.ptp(diffs) == 0:  # every pair differs by the same amount: the bootstrap has nothing to resample
        out["ci95"] = [float(diffs[0])] * 2
        out["verdict"] = "identical" if diffs[0] == 0 else _direction(diffs[0], metric)
        return out
    ci = stats.bootstrap((diffs,), np.mean, confidence_level=0.95, n_resamples=resamples, method="percentile",
                         rng=np.random.default_rng(seed)).confidence_interval
    out["ci95"] = [float(ci.low), float(ci.high)]
    out["verdict"] = _direction(out["mean"], metric) if ci.low > 0 or ci.high < 0 else "no significant difference"
    return out


def _direction(diff: float, metric: str) -> str:
    return "better" if (diff < 0) == lower_is_better(metric) else "worse"

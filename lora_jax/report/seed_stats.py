"""Seed statistics: how much of a difference between cells is seed noise.

A cell with at least `MIN_SEEDS` seeds gets its mean, sample standard deviation and a 95%
bootstrap confidence interval of the mean (`scipy.stats.bootstrap`, percentile method, fixed
resampling seed so a report is reproducible). Two cells compare with a t-test over seeds:
paired on the seeds they share (same seed: same data order and head initialisation, so the
pairing removes that part of the noise), else Welch's unpaired test. The verdict is worded
for a reader: "within seed noise" when p >= 0.05.

Example:
    >>> a = Stats((0, 1, 2), (0.70, 0.71, 0.72))
    >>> b = Stats((0, 1, 2), (0.75, 0.77, 0.76))
    >>> round(summarize(a).mean, 3), compare(a, b).significant
    (0.71, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.stats

from lora_jax.report.cells import Stats

MIN_SEEDS = 3
CONFIDENCE = 0.95
SIGNIFICANCE = 0.05
BOOTSTRAP_RESAMPLES = 9999
# Metrics where lower is better; every other main metric is higher-better.
LOWER_IS_BETTER = frozenset({"loss", "perplexity", "mse"})


@dataclass(frozen=True)
class SeedSummary:
    """Mean, sample standard deviation (ddof=1) and bootstrap CI of the mean over n seeds."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class Comparison:
    """b against a over seeds: mean difference (b - a), the test's p-value and its kind."""

    diff: float
    p: float
    n: int
    paired: bool

    @property
    def significant(self) -> bool:
        return self.p < SIGNIFICANCE

    @property
    def test(self) -> str:
        kind = "paired t-test" if self.paired else "Welch t-test"
        return f"{kind} over {self.n} seeds" if self.paired else f"{kind}, n = {self.n}"


def summarize(stats: Stats) -> SeedSummary | None:
    """The seed summary of `stats`, or None below MIN_SEEDS seeds."""
    values = np.asarray(stats.values, dtype=np.float64)
    if values.size < MIN_SEEDS:
        return None
    mean, std = float(values.mean()), float(values.std(ddof=1))
    if std == 0.0:  # every resample has the same mean (bootstrap would warn and give nan)
        return SeedSummary(values.size, mean, 0.0, mean, mean)
    ci = scipy.stats.bootstrap(
        (values,),
        np.mean,
        confidence_level=CONFIDENCE,
        n_resamples=BOOTSTRAP_RESAMPLES,
        method="percentile",
        rng=np.random.default_rng(0),
    ).confidence_interval
    return SeedSummary(values.size, mean, std, float(ci.low), float(ci.high))


def _p_from_t(t: float, df: float) -> float:
    return float(2 * scipy.stats.t.sf(abs(t), df))


def compare(a: Stats, b: Stats) -> Comparison | None:
    """b against a: paired over >= MIN_SEEDS shared seeds, else Welch's test when both have
    >= MIN_SEEDS seeds, else None (too few seeds to say anything)."""
    va, vb = dict(zip(a.seeds, a.values, strict=True)), dict(zip(b.seeds, b.values, strict=True))
    shared = sorted(set(va) & set(vb))
    if len(shared) >= MIN_SEEDS:
        d = np.array([vb[s] - va[s] for s in shared], dtype=np.float64)
        diff, sd = float(d.mean()), float(d.std(ddof=1))
        if sd == 0.0:  # the same difference on every seed: no noise to compare against
            return Comparison(diff, 1.0 if diff == 0.0 else 0.0, len(shared), True)
        return Comparison(diff, _p_from_t(diff / (sd / np.sqrt(d.size)), d.size - 1), d.size, True)
    xa, xb = np.asarray(a.values, np.float64), np.asarray(b.values, np.float64)
    if min(xa.size, xb.size) < MIN_SEEDS:
        return None
    diff = float(xb.mean() - xa.mean())
    res = scipy.stats.ttest_ind(xb, xa, equal_var=False)
    p = float(res.pvalue) if np.isfinite(res.pvalue) else (1.0 if diff == 0.0 else 0.0)
    return Comparison(diff, p, min(xa.size, xb.size), False)


def verdict(label_a: str, label_b: str, c: Comparison, scale: float, unit: str) -> str:
    """One line a reader can act on, e.g. "r=1 vs r=8: within seed noise (...)"."""
    how = f"{c.test}, p = {c.p:.2g}"
    if not c.significant:
        return f"{label_a} vs {label_b}: within seed noise ({how})"
    word = "higher" if c.diff > 0 else "lower"
    by = f"{abs(c.diff) * scale:.2f} {unit}".rstrip()
    return f"{label_b} is {word} than {label_a} by {by} ({how})"


def best_cell_index(summaries: list[SeedSummary], metric: str) -> int:
    """Index of the best mean (lowest for loss-like metrics)."""
    means = [s.mean for s in summaries]
    return int(np.argmin(means) if metric in LOWER_IS_BETTER else np.argmax(means))

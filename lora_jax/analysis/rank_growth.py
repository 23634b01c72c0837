"""How the rank a LoRA uses grows with the rank it is given: measure ∝ r^β.

A report on 1-3B decoders (SSRN 6580122) finds the stable rank of dW = B·A growing as r^β with
β ≈ 0.23-0.30: doubling r adds far less than double the directions used. For one seed, β is the
least-squares slope of log(measure) against log(r) over the ranks that seed ran; over seeds,
the mean slope with a Student-t interval (each seed one independent fit). The measure is any
per-run number that grows with use: the stable rank or k@90 (the rank holding 90% of dW's
energy), each the median over a run's matrices of one type.

    >>> fit = growth_exponent({0: {1: 1.0, 4: 2.0, 16: 4.0}, 1: {1: 1.0, 4: 2.0, 16: 4.0}})
    >>> round(fit["beta"], 6), fit["seeds"]
    (0.5, 2)
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
PUBLISHED_BETA = (0.23, 0.30)  # SSRN 6580122, stable rank on 1-3B decoders


def fit_line(by_rank: Mapping[int, float]) -> tuple[float, float] | None:
    """(slope, R²) of the least-squares line of log(value) on log(rank); None with under two
    usable ranks (a value must be positive and finite to have a logarithm). R² says how well one
    power law describes the ranks: a measure that peaks and falls again fits badly."""
    points = [(r, v) for r, v in by_rank.items() if r > 0 and v > 0 and math.isfinite(v)]
    if len({r for r, _ in points}) < 2:
        return None
    x, y = np.log([r for r, _ in points]), np.log([v for _, v in points])
    b, a = np.polyfit(x, y, 1)
    total = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum((y - (a + b * x)) ** 2)) / total if total > 0 else 1.0
    return float(b), r2


def growth_exponent(
    values: Mapping[int, Mapping[int, float]], confidence: float = CONFIDENCE
) -> dict | None:
    """β over seeds from `values` = {seed: {rank: measure}}: {"beta" (the mean slope), "ci"
    (a t interval over seeds; None with one seed), "sd", "per_seed", "r_squared" (the median
    over seeds of each fit's R²), "seeds", "ranks"}.
    None when no seed has two usable ranks."""
    lines = {s: line for s, by_rank in values.items() if (line := fit_line(by_rank)) is not None}
    if not lines:
        return None
    per_seed = {s: b for s, (b, _) in lines.items()}
    slopes = np.array(list(per_seed.values()))
    n, beta = len(slopes), float(slopes.mean())
    sd = float(slopes.std(ddof=1)) if n > 1 else None
    ci = None
    if n > 1:
        half = stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
        ci = [beta - half, beta + half]
    ranks = sorted({r for s in per_seed for r in values[s]})
    r2 = float(np.median([r2 for _, r2 in lines.values()]))
    return {
        **{"beta": beta, "ci": ci, "sd": sd, "per_seed": per_seed, "r_squared": r2},
        **{"seeds": n, "ranks": ranks},
    }

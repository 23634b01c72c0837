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


def slope(by_rank: Mapping[int, float]) -> float | None:
    """The least-squares slope of log(value) on log(rank); None with under two usable ranks
    (a value must be positive and finite to have a logarithm)."""
    points = [(r, v) for r, v in by_rank.items() if r > 0 and v > 0 and math.isfinite(v)]
    if len({r for r, _ in points}) < 2:
        return None
    x, y = np.log([r for r, _ in points]), np.log([v for _, v in points])
    return float(np.polyfit(x, y, 1)[0])


def growth_exponent(
    values: Mapping[int, Mapping[int, float]], confidence: float = CONFIDENCE
) -> dict | None:
    """β over seeds from `values` = {seed: {rank: measure}}: {"beta" (the mean slope), "ci"
    (a t interval over seeds; None with one seed), "sd", "per_seed", "seeds", "ranks"}.
    None when no seed has two usable ranks."""
    per_seed = {s: b for s, by_rank in values.items() if (b := slope(by_rank)) is not None}
    if not per_seed:
        return None
    slopes = np.array(list(per_seed.values()))
    n, beta = len(slopes), float(slopes.mean())
    sd = float(slopes.std(ddof=1)) if n > 1 else None
    ci = None
    if n > 1:
        half = stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
        ci = [beta - half, beta + half]
    ranks = sorted({r for s in per_seed for r in values[s]})
    return {"beta": beta, "ci": ci, "sd": sd, "per_seed": per_seed, "seeds": n, "ranks": ranks}

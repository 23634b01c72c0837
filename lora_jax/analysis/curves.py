"""Curves of the rank measurements over training, as the report, the figure and W&B show
them: one curve per target averaged over layers, and a short label per run."""

from __future__ import annotations

import warnings

import numpy as np


def target_means(per_matrix: dict[str, list]) -> dict[str, np.ndarray]:
    """{target: curve} averaged over layers (`layer_<i>/<target>` keys); undefined points
    (null: amplification where dW has fewer than r directions) are left out of the mean."""
    by_target: dict[str, list] = {}
    for name, curve in per_matrix.items():
        values = [np.nan if v is None else float(v) for v in curve]
        by_target.setdefault(name.split("/")[1], []).append(values)
    with warnings.catch_warnings():  # a step undefined in every layer stays NaN, silently
        warnings.simplefilter("ignore", RuntimeWarning)
        return {t: np.nanmean(np.array(c, float), axis=0) for t, c in sorted(by_target.items())}


def run_labels(runs: dict[str, dict]) -> dict[str, str]:
    """A short label per run: `r=<rank>, seed=<seed>`, or its name where those repeat."""
    short = {name: f"r={e['rank']}, seed={e['seed']}" for name, e in runs.items()}
    if len(set(short.values())) < len(short):
        return {name: name for name in runs}
    return short

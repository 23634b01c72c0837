"""How numbers are written in a report: our cells as "median [min–max] (n=…)" in the
paper's units (fractions such as accuracy become percentages, as in the paper)."""

from __future__ import annotations

from lora_jax.report.cells import Stats

# Metrics stored as fractions in metrics.json that the paper writes in percent.
PERCENT_METRICS = frozenset({"accuracy", "matthews", "pearson", "spearman", "f1", "token_accuracy"})
MISSING = "-"


def scale(metric: str) -> float:
    """The factor from metrics.json units to the paper's (100 for fractions)."""
    return 100.0 if metric in PERCENT_METRICS else 1.0


def unit(metric: str) -> str:
    """`metric` with its unit for headers, e.g. "accuracy (%)"."""
    return f"{metric} (%)" if metric in PERCENT_METRICS else metric


def diff_unit(metric: str) -> str:
    """The unit of a difference of `metric` in the paper's units ("points" for percentages)."""
    return "points" if metric in PERCENT_METRICS else metric


def num(x: float | None, metric: str = "") -> str:
    """One of our values, already scaled, to a precision that fits the metric."""
    if x is None:
        return MISSING
    if metric in PERCENT_METRICS or metric in ("bleu", "rouge_l"):
        return f"{x:.2f}"
    if metric in ("loss", "perplexity", "phi"):
        return f"{x:.3f}"
    return f"{x:.3g}"


def paper_num(x: float | None, decimals: int = 1) -> str:
    """A paper value with the paper's number of decimals."""
    return MISSING if x is None else f"{x:.{decimals}f}"


def fmt_stats(stats: Stats | None, metric: str) -> str:
    """ "median [min–max] (n=k)" in the paper's units; "-" when nothing was measured."""
    if stats is None or stats.n == 0:
        return MISSING
    s = scale(metric)
    med = num(stats.median * s, metric)
    if stats.n == 1:
        return f"{med} (n=1)"
    return f"{med} [{num(stats.min * s, metric)}–{num(stats.max * s, metric)}] (n={stats.n})"


def fmt_values(values: list[float], metric: str = "") -> str:
    """Several raw values (e.g. over layers) as "median [min–max] (n=k)", unscaled."""
    if not values:
        return MISSING
    return fmt_stats(Stats(tuple(range(len(values))), tuple(values)), metric)

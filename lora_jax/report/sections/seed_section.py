"""The report's "Seed statistics" section: each cell's mean, spread and confidence interval
over seeds, and which differences between cells a reader may believe.

Comparisons are drawn along one axis at a time (rank, target set, or any other that varies):
cells that agree on every other axis form a group, and each cell of the group is compared
with the group's best (`seed_stats.compare`). Under a parameter budget (`lora.budget_rank`)
target sets are compared at equal parameters, each at the rank it bought.
"""

from __future__ import annotations

from lora_jax.report.cells import Cell, cell_label, comparable_groups, varying_axes
from lora_jax.report.render.document import Block, Table
from lora_jax.report.render.format import diff_unit, fmt_stats, num, scale, unit
from lora_jax.report.sections.our_setup import value_point
from lora_jax.report.seed_stats import (
    CONFIDENCE,
    MIN_SEEDS,
    SIGNIFICANCE,
    SeedSummary,
    best_cell_index,
    compare,
    summarize,
    verdict,
)


def comparisons(cells: list[Cell], at: str, summaries: dict[int, SeedSummary]) -> list[list[str]]:
    """Rows (axis, the other axes' values, verdict): each cell against the best cell of its
    group, along each varying axis. `summaries`: id(cell) -> its summary, for the cells with
    MIN_SEEDS seeds (each bootstrap made once per report)."""
    rows = []
    axes = varying_axes(cells)
    for axis in axes:
        for group, moving in comparable_groups(cells, axis):
            group = [c for c in group if id(c) in summaries]
            if len(group) < 2:
                continue
            shown, others = [axis, *moving], [k for k in axes if k != axis and k not in moving]
            metric = group[0].main_metric
            best = group[best_cell_index([summaries[id(c)] for c in group], metric)]
            for c in group:
                result = None if c is best else compare(best.stats(at), c.stats(at))
                if result is None:
                    continue
                text = verdict(
                    f"{cell_label(best, shown)} (best)",
                    cell_label(c, shown),
                    result,
                    scale(metric),
                    diff_unit(metric),
                )
                along = f"{axis} (at equal parameters)" if moving else axis
                rows.append([along, cell_label(best, others) or "-", text])
    return rows


def seed_section(cells: list[Cell]) -> list[Block]:
    """The blocks of the section; one plain sentence when no cell has MIN_SEEDS seeds."""
    at = value_point(cells)
    counted = [(c, summarize(c.stats(at))) for c in cells]
    counted = [(c, s) for c, s in counted if s is not None]
    if not counted:
        return [
            f"No cell has {MIN_SEEDS} or more seeds, so no difference between cells can be told "
            "apart from seed noise here: run the sweep with `seed=0,1,2` (each seed is one run)."
        ]
    axes = varying_axes(cells) or ["model"]
    pct = int(CONFIDENCE * 100)
    rows = []
    for c, s in counted:
        m, k = c.main_metric, scale(c.main_metric)
        rows.append(
            [
                cell_label(c, axes) or "-",
                unit(m),
                str(s.n),
                f"{num(s.mean * k, m)} ± {num(s.std * k, m)}",
                f"[{num(s.ci_low * k, m)}, {num(s.ci_high * k, m)}]",
                fmt_stats(c.stats(at), m),
            ]
        )
    point = "best evaluation step" if at == "best" else "end of training"
    blocks: list[Block] = [
        f"The main metric at the {point}, over the seeds of each cell with at least {MIN_SEEDS} "
        f"seeds: mean ± sample standard deviation, and the {pct}% bootstrap confidence interval "
        "of the mean (percentile method, 9,999 resamples). With 3 seeds the interval is wide "
        "and a t-test has little power: read a verdict of 'within seed noise' as 'not shown', "
        "not as 'equal'.",
        Table(["cell", "metric", "seeds", "mean ± sd", f"{pct}% CI", "median [min–max] (n)"], rows),
    ]
    rows = comparisons(cells, at, {id(c): s for c, s in counted})
    if rows:
        caption = (
            "Each cell against the best of the cells that differ from it in one axis only "
            f"(t-test over seeds, paired on shared seeds; a difference when p < {SIGNIFICANCE})"
        )
        blocks.append(Table(["compared along", "other axes", "verdict"], rows, caption))
    return blocks

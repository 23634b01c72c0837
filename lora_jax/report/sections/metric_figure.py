"""The report's own figure: the main metric against the LoRA rank (matplotlib, Agg).

One line per target set (and per any other axis that varies), the median over seeds with
the seed range as error bars; rank 0 (head only) and full fine-tuning as horizontal lines.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot

import matplotlib.pyplot as plt
import numpy as np

from lora_jax.report.cells import Cell, Stats
from lora_jax.report.paper import weight_label
from lora_jax.report.render.format import scale, unit
from lora_jax.report.sections.our_setup import lora_cells, value_point, variant_label
from lora_jax.report.seed_stats import CONFIDENCE, MIN_SEEDS, summarize

ERROR_BARS = (
    f"mean and {int(CONFIDENCE * 100)}% bootstrap CI over seeds where every point of a line has "
    f"{MIN_SEEDS}+ seeds, else median and min-max"
)


def _points(stats: list[Stats]) -> tuple[np.ndarray, np.ndarray]:
    """Centers and (2, n) error bars of one line: mean and CI when every point has MIN_SEEDS
    seeds (the seed statistics of the report), else median and the seed range."""
    summaries = [summarize(st) for st in stats]
    if all(summaries):
        center = np.array([s.mean for s in summaries])
        low, high = [s.ci_low for s in summaries], [s.ci_high for s in summaries]
    else:
        center = np.array([st.median for st in stats])
        low, high = [st.min for st in stats], [st.max for st in stats]
    return center, np.array([center - np.array(low), np.array(high) - center])


def _draw(ax, cells: list[Cell], at: str, title: str) -> None:
    lora = lora_cells(cells)
    other = variant_label(lora, ("rank", "targets"))
    lines: dict[str, list[Cell]] = {}
    for c in lora:  # one line per target set (and per any other axis that varies)
        name = ", ".join(x for x in (weight_label(c.targets), other(c)) if x)
        lines.setdefault(name, []).append(c)
    for name, group in lines.items():
        group = sorted((c for c in group if c.stats(at).n), key=lambda c: c.rank)
        if not group:
            continue
        center, err = _points([c.stats(at) for c in group])
        s = scale(group[0].main_metric)
        ax.errorbar(
            [c.rank for c in group], center * s, yerr=err * s, marker="o", capsize=3, label=name
        )
    for c in cells:
        if (c.rank == 0 or c.full_finetune) and c.stats(at).n:
            style = ":" if c.full_finetune else "--"
            name = "full fine-tuning" if c.full_finetune else "head only (r=0)"
            ax.axhline(
                c.stats(at).median * scale(c.main_metric), color="grey", ls=style, label=name
            )
    ranks = sorted({c.rank for c in lora})
    if ranks:
        ax.set_xscale("log", base=2)
        ax.set_xticks(ranks, [str(r) for r in ranks])
    ax.set_xlabel("LoRA rank r")
    metrics = dict.fromkeys(c.main_metric for c in cells)
    ax.set_ylabel(", ".join(unit(m) for m in metrics))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def metric_vs_rank(cells: list[Cell], path: str | Path) -> Path:
    """Save the metric-vs-rank figure to `path` (PNG): at the best step and at the end.

    For a metric measured only at the end (BLEU) one panel, since best = final for it.
    """
    at = value_point(cells)
    points = ["best", "final"] if at == "best" else ["final"]
    fig, axes = plt.subplots(1, len(points), figsize=(5.5 * len(points), 4), squeeze=False)
    for ax, point in zip(axes[0], points, strict=True):
        _draw(ax, cells, point, "best evaluation step" if point == "best" else "end of training")
    fig.suptitle(ERROR_BARS[0].upper() + ERROR_BARS[1:], fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

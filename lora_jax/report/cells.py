"""Group runs into cells (every axis but the seed) and summarise each over its seeds.

A cell is one point of the experiment grid: model, task, rank, targets, alpha, scaling,
full fine-tuning and every other config value that is not the seed or bookkeeping (paths,
logging, progress bars, checkpoint cadence). The paper reports the median over seeds at the
best epoch; a cell gives the median, min and max (and the per-seed values) of the main
metric at the best step and at the final step.

Example:
    >>> cells = group_cells(read_runs("outputs/sweeps/default"))  # doctest: +SKIP
    >>> cells[0].stats("best").median  # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from lora_jax.runs.record import RunRecord, shared_axes


@dataclass(frozen=True)
class Stats:
    """Summary of one value over the seeds of a cell (None values, not measured, are left out)."""

    seeds: tuple[int, ...]
    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def median(self) -> float | None:
        return float(np.median(self.values)) if self.values else None

    @property
    def min(self) -> float | None:
        return float(np.min(self.values)) if self.values else None

    @property
    def max(self) -> float | None:
        return float(np.max(self.values)) if self.values else None


@dataclass(frozen=True)
class Cell:
    """The runs that share every axis but the seed.

    Attributes:
        axes: the shared axis values (`RunRecord.axes`).
        runs: the runs, sorted by seed.
    """

    axes: dict[str, Any]
    runs: tuple[RunRecord, ...]

    @property
    def rank(self) -> int:
        return self.axes["rank"]

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(t for t in self.axes["targets"].split(",") if t)

    @property
    def full_finetune(self) -> bool:
        return self.axes["full_finetune"]

    @property
    def task(self) -> str:
        return self.axes["task"]

    @property
    def model(self) -> str:
        return self.axes["model"]

    @property
    def main_metric(self) -> str:
        return self.runs[0].main_metric

    @property
    def end_only(self) -> bool:
        """The main metric was measured only at the end in some run (best = final for it)."""
        return any(r.end_only for r in self.runs)

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(r.seed for r in self.runs)

    def stats(self, at: str = "best", metric: str | None = None) -> Stats:
        """`metric` (default: the main one) over the seeds, at the best or the final step."""
        pairs = [(r.seed, r.value(at, metric)) for r in self.runs]
        pairs = [(s, v) for s, v in pairs if v is not None and np.isfinite(v)]
        return Stats(tuple(s for s, _ in pairs), tuple(v for _, v in pairs))


def _sort_key(cell: Cell) -> tuple:
    a = cell.axes
    return (a["model"], a["task"], a["full_finetune"], a["targets"], a["rank"], str(sorted(a)))


def group_cells(runs: list[RunRecord]) -> list[Cell]:
    """The cells of `runs` (every axis but the seed), sorted by model, task, targets, rank."""
    groups: dict[str, tuple[dict[str, Any], list[RunRecord]]] = {}
    for run, axes in zip(runs, shared_axes(runs), strict=True):
        key = json.dumps(axes, sort_keys=True, default=str)
        groups.setdefault(key, (axes, []))[1].append(run)
    cells = [
        Cell(axes, tuple(sorted(rs, key=lambda r: (r.seed, r.name))))
        for axes, rs in groups.values()
    ]
    return sorted(cells, key=_sort_key)


def varying_axes(cells: list[Cell]) -> list[str]:
    """The axes whose value differs between cells, in the order they first appear."""
    keys = list(dict.fromkeys(k for c in cells for k in c.axes))
    return [k for k in keys if len({json.dumps(c.axes.get(k), default=str) for c in cells}) > 1]


def groups_along(cells: list[Cell], axis: str, moving: tuple[str, ...] = ()) -> list[list[Cell]]:
    """Cells that agree on every axis but `axis` and the `moving` ones (groups of two or more),
    in report order."""
    groups: dict[str, list[Cell]] = {}
    for c in cells:
        kept = {k: v for k, v in c.axes.items() if k != axis and k not in moving}
        groups.setdefault(json.dumps(kept, sort_keys=True, default=str), []).append(c)
    return [g for g in groups.values() if len(g) > 1]


def comparable_groups(cells: list[Cell], axis: str) -> list[tuple[list[Cell], tuple[str, ...]]]:
    """The groups to compare along `axis`, each with the axes that move with it. Under a
    parameter budget (`lora.budget_rank`) the rank is what the targets buy: target sets are
    compared at equal parameters, whatever rank each got ("LoRA Without Regret")."""
    budgeted = [c for c in cells if c.axes.get("lora.budget_rank") is not None]
    if axis != "targets" or not budgeted:
        return [(g, ()) for g in groups_along(cells, axis)]
    free = [c for c in cells if c.axes.get("lora.budget_rank") is None]
    return [(g, ()) for g in groups_along(free, axis)] + [
        (g, ("rank",)) for g in groups_along(budgeted, axis, moving=("rank",))
    ]


def cell_label(cell: Cell, axes: list[str]) -> str:
    """`k=v` for the given axes (e.g. the varying ones), targets in the paper's notation."""
    from lora_jax.report.paper import weight_label

    parts = []
    for k in axes:
        v = cell.axes.get(k)
        if k == "targets":
            parts.append(weight_label(cell.targets) or "no LoRA")
        elif k == "full_finetune":
            if v:
                parts.append("full fine-tuning")
        else:
            parts.append(f"{k}={v}")
    return ", ".join(parts)

"""The report's "The rank a LoRA uses" section: how the stable rank and k@90 of dW grow with r,
as r^β fitted per seed (`lora_jax.analysis.rank_growth`), per matrix type and over all
matrices, beside the published β ≈ 0.23-0.30 (stable rank, 1-3B decoders)."""

from __future__ import annotations

from typing import Any

import numpy as np

from lora_jax.analysis.rank_growth import CONFIDENCE, PUBLISHED_BETA, growth_exponent
from lora_jax.report.cells import Cell, cell_label, groups_along, varying_axes
from lora_jax.report.render.document import Block, Table
from lora_jax.report.sections.rank_analysis import updates

MEASURES = {"stable_rank": "stable rank", "energy_rank_90": "k@90"}
ALL = "all"


def _by_matrix(entry: dict[str, Any], measure: str) -> dict[str, float]:
    """{matrix type: the median of `measure` over its layers, and ALL: over every matrix}."""
    values: dict[str, list[float]] = {}
    for name, m in entry["adapters"].items():
        values.setdefault(name.split("/")[-1], []).append(float(m[measure]))
    medians = {t: float(np.median(v)) for t, v in values.items()}
    return {**medians, ALL: float(np.median([x for v in values.values() for x in v]))}


def rank_growth_fits(cells: list[Cell], analysis: dict[str, Any]) -> list[dict]:
    """One fit per (group of LoRA cells differing only in rank, measure, matrix type): each a
    `growth_exponent` result with "group", "measure" and "matrix" added."""
    entries = updates(analysis)
    lora = [c for c in cells if not c.full_finetune and c.rank > 0]
    others = [k for k in varying_axes(lora) if k != "rank"]  # what tells the groups apart
    fits = []
    for group in groups_along(lora, "rank"):
        label = cell_label(group[0], others) or "all runs"
        for measure in MEASURES:
            values: dict[str, dict[int, dict[int, float]]] = {}  # matrix -> seed -> rank -> v
            for cell in group:
                for run in cell.runs:
                    if run.name not in entries:
                        continue
                    for matrix, v in _by_matrix(entries[run.name], measure).items():
                        values.setdefault(matrix, {}).setdefault(run.seed, {})[cell.rank] = v
            for matrix, by_seed in values.items():
                fit = growth_exponent(by_seed)
                if fit is not None:
                    fits.append({**fit, "group": label, "measure": measure, "matrix": matrix})
    return fits


def rank_growth_section(cells: list[Cell], analysis: dict[str, Any]) -> list[Block]:
    fits = rank_growth_fits(cells, analysis)
    if not fits:
        return []
    rows = [
        [
            f["group"],
            f["matrix"],
            MEASURES[f["measure"]],
            f"{f['beta']:.3f}",
            "n/a (1 seed)" if f["ci"] is None else f"[{f['ci'][0]:.3f}, {f['ci'][1]:.3f}]",
            f"{f['r_squared']:.2f}",
            str(f["seeds"]),
            ",".join(map(str, f["ranks"])),
        ]
        for f in fits
    ]
    lo, hi = PUBLISHED_BETA
    caption = (
        "How the rank dW uses grows with r: measure ∝ r^β, β the least-squares slope of "
        "log(measure) on log(r) for each seed (the median over a matrix type's layers, or over "
        f"every matrix), its mean over seeds with a {CONFIDENCE:.0%} t interval; R², the median "
        "over seeds, says how well one power law fits (low: the measure peaks and falls, or "
        "jumps). β = 1: every added rank is used; β = 0: none is. Published (SSRN 6580122, "
        f"stable rank on 1-3B decoders): β ≈ {lo:.2f}-{hi:.2f}."
    )
    columns = ["runs", "matrix", "measure", "β", f"{CONFIDENCE:.0%} CI", "R²", "seeds", "ranks"]
    return [Table(columns, rows, caption=caption)]

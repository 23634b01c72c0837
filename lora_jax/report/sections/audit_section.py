"""The rank audit as a page a person reads: per adapter a table by matrix type, heatmaps of
utilization and stable rank (layer x matrix), k@90 against r, the phi summary of each pair, and
the rank advice. Every per-matrix number stays in `audit.json` / `audit.csv`, not in the page.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from lora_jax.report.render.document import Figure, Section, Table
from lora_jax.runs.layout import AUDIT_FILE, SweepFolder

_TYPE_ORDER = ("q", "k", "v", "o", "ffn_gate", "ffn_in", "ffn_out")


def ordered(types: Iterable[str]) -> list[str]:
    """Matrix types in a layer's order (q, k, v, o, then the FFN), any others after."""
    found = set(types)
    return [t for t in _TYPE_ORDER if t in found] + sorted(found - set(_TYPE_ORDER))


def _grid(matrices: dict[str, dict], quantity: str) -> tuple[np.ndarray, list[str]]:
    types = ordered(name.split("/")[1] for name in matrices)
    layers = sorted({int(name.split("/")[0].removeprefix("layer_")) for name in matrices})
    grid = np.full((len(layers), len(types)), np.nan)
    for name, m in matrices.items():
        layer, target = name.split("/")
        grid[layers.index(int(layer.removeprefix("layer_"))), types.index(target)] = m[quantity]
    return grid, types


def _figure(name: str, adapter: dict[str, Any], fig_dir: Path) -> Path:
    """Utilization and stable rank as layer x matrix heatmaps, and k@90 against r."""
    # The object API without pyplot: its import is a third of this page's time.
    from matplotlib.figure import Figure as MplFigure

    matrices = adapter["matrices"]
    fig = MplFigure(figsize=(13, 0.18 * len(matrices) / 7 + 3.2))
    axes = fig.subplots(1, 3)
    for ax, (quantity, label) in zip(
        axes[:2], (("utilization", "stable rank / r"), ("stable_rank", "stable rank")), strict=True
    ):
        grid, types = _grid(matrices, quantity)
        image = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_xticks(range(len(types)), types, rotation=45)
        ax.set_ylabel("layer")
        ax.set_title(label)
        fig.colorbar(image, ax=ax)
    k90 = [m["energy_rank_90"] for m in matrices.values()]
    ranks = sorted({m["rank"] for m in matrices.values()})
    axes[2].hist(k90, bins=np.arange(0.5, max(ranks) + 1.5), color="tab:blue")
    for r in ranks:
        axes[2].axvline(r, color="tab:red", linestyle="--", label=f"r = {r}")
    axes[2].set_xlabel("k@90 (smallest rank with 90% of ||dW||_F^2)")
    axes[2].set_ylabel("matrices")
    axes[2].legend()
    fig.suptitle(f"{name}: {len(matrices)} matrices")
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.15, wspace=0.3)
    fig_dir.mkdir(parents=True, exist_ok=True)
    path = fig_dir / f"audit_{name.replace('/', '_')}.png"
    fig.savefig(path, dpi=80)
    return path


def stats_range(stats: dict[str, float] | None, digits: int = 2) -> str:
    """`median [min, max]` of `by_type`'s statistics (n/a where undefined in every layer)."""
    if stats is None:
        return "n/a"
    return f"{stats['median']:.{digits}f} [{stats['min']:.{digits}f}, {stats['max']:.{digits}f}]"


def _type_table(adapter: dict[str, Any]) -> Table:
    by_type = adapter["by_type"]
    rows = [
        [
            t,
            str(by_type[t]["layers"]),
            stats_range(by_type[t]["stable_rank"]),
            stats_range(by_type[t]["utilization"]),
            stats_range(by_type[t]["energy_rank_90"], 0),
            stats_range(by_type[t]["frobenius"], 3),
        ]
        for t in ordered(by_type)
    ]
    return Table(
        ["matrix", "layers", "stable rank", "stable rank / r", "k@90", "||dW||_F"],
        rows,
        caption="Median [min, max] over layers.",
    )


def audit_sections(out: Path, fig_dir: Path | None = None) -> list[Section]:
    """The audit's sections from `audit.json` (and `rank_advice.json` if written) in `out`,
    figures drawn into `fig_dir` (default `out/figures`)."""
    folder = SweepFolder(out)
    result = json.loads(folder.audit_json.read_text())
    advice = json.loads(folder.rank_advice.read_text()) if folder.rank_advice.is_file() else {}
    sections = []
    for name, adapter in result["adapters"].items():
        k90 = [m["energy_rank_90"] for m in adapter["matrices"].values()]
        blocks: list = [
            f"`{adapter['folder']}`: {len(k90)} matrices of rank {adapter['rank']} on "
            f"`{adapter['base']}` ({adapter['family']}). k@90 median {np.median(k90):g}, 90th "
            f"percentile {np.percentile(k90, 90):g} (r = {adapter['rank']}).",
            _type_table(adapter),
            Figure(
                _figure(name, adapter, fig_dir or folder.figures),
                "Left and middle: stable rank / r and stable rank per layer and matrix. Right: "
                "how many matrices need each rank to keep 90% of their update's energy.",
            ),
        ]
        if name in advice:
            blocks.append(_advice_table(advice[name]))
        sections.append(Section(f"Audit: {name}", blocks))
    if result["pairs"]:
        sections.append(Section("Adapters against each other", [_pair_table(result["pairs"])]))
    return sections


def _advice_table(advice: dict[str, Any]) -> Table:
    saved = 1 - advice["params_advised"] / advice["params_now"]
    rows = [
        [t, f"{advice['by_type'][t]['median']:g}", str(advice["by_type"][t]["max"])]
        for t in ordered(advice["by_type"])
    ]
    pattern = ",".join(f"{t}:{r}" for t, r in advice["lora_rank_pattern"].items())
    task = advice.get("task")
    task_text = (
        f" On the task: truncated to rank k in every matrix, the run keeps 90% of its "
        f"{task['metric']} gain from k = {task['rank_for_90']} (its sweep's truncation curve)."
        if task and task["rank_for_90"] is not None
        else ""
    )
    return Table(
        ["matrix", "advised rank (median over layers)", "max"],
        rows,
        caption=(
            f"Advice at {advice['energy']:.0%} of each update's energy: "
            f"{advice['params_advised']:,} LoRA parameters instead of {advice['params_now']:,} "
            f"({saved:.0%} fewer). PEFT: `rank_pattern`/`alpha_pattern` in rank_advice.json; "
            f"ours: `lora.rank_pattern={{{pattern}}}`.{task_text}"
        ),
    )


def _pair_table(pairs: list[dict[str, Any]]) -> Table:
    rows = [
        [
            " vs ".join(p["adapters"]),
            f"{p['summary']['phi_a_top']:.2f}",
            f"{p['summary']['phi_a_mean']:.3f} ({p['summary']['phi_a_random_mean']:.3f})",
            f"{p['summary']['phi_b_top']:.2f}",
            f"{p['summary']['phi_b_mean']:.3f} ({p['summary']['phi_b_random_mean']:.3f})",
        ]
        for p in pairs
    ]
    return Table(
        ["pair", "phi A (1,1)", "phi A mean (random)", "phi B (1,1)", "phi B mean (random)"],
        rows,
        caption=(
            "Medians over matrices of phi (Hu et al. 2021, Eq. 4) between the two adapters' "
            "A (input side) and B (output side): phi(1,1) near 1 means the top direction is "
            "shared; the grid's mean against a random pair's expectation says how much more "
            f"than chance the subspaces overlap. Per-matrix values: {AUDIT_FILE}."
        ),
    )

"""The rank analysis of a sweep (or of `--adapters`) as report blocks, from `analysis.json`.

Every report has this section when the folder holds `analysis.json`: the phi heatmaps across
ranks and seeds (Figs. 3, 4 style), phi of A and B for adapter pairs, planted-rank recovery,
dW against W (Table 7 style) and the spectra of every dW. Nothing is recomputed here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from lora_jax.report.render.document import Block, Figure, Table
from lora_jax.runs.layout import ADAPTER_DIR, ANALYSIS_FILE, SweepFolder


def load_analysis(folder: Path) -> dict[str, Any] | None:
    """The folder's `analysis.json`, each `versus_full` entry with its `model_evals` from
    `evals.json` where they were made; None when the analysis has not run."""
    folder = SweepFolder(folder)
    if not folder.analysis.exists():
        return None
    analysis = json.loads(folder.analysis.read_text())
    evals = json.loads(folder.evals.read_text())["versus_full"] if folder.evals.exists() else {}
    for entry in analysis.get("versus_full") or []:
        if entry["run"] in evals:
            entry["model_evals"] = evals[entry["run"]]
    return analysis


def figure(folder: Path, recorded: str | None, caption: str) -> Figure | None:
    """The PNG `analysis.json` recorded (its path may be relative to another working folder)."""
    if not recorded:
        return None
    for path in (SweepFolder(folder).figures / Path(recorded).name, Path(recorded)):
        if path.exists():
            return Figure(path, caption)
    return None


def updates(analysis: dict[str, Any]) -> dict[str, dict]:
    """{name: entry} of the analysed updates: a sweep's runs or the `--adapters` folders."""
    return analysis.get("runs") or analysis.get("adapters") or {}


def input_dim(analysis: dict[str, Any], target: str) -> int | None:
    """The input dimension n of `target`'s matrices (1/n = phi(1,1) of random subspaces)."""
    for entry in updates(analysis).values():
        for name, m in entry["adapters"].items():
            if name.split("/")[1] == target and "shape" in m:
                return int(m["shape"][0])
    return None


def _top_direction(grids: dict[str, list]) -> str:
    by_target: dict[str, list[tuple[float, str]]] = {}
    for name, g in grids.items():
        layer, target = name.split("/")
        if g[0][0] is not None:
            by_target.setdefault(target, []).append((float(g[0][0]), layer))
    parts = []
    for target, vals in by_target.items():
        best, layer = max(vals)
        mean = float(np.mean([v for v, _ in vals]))
        parts.append(
            f"W{target}: phi(1,1) = {best:.2f} at its best ({layer.replace('_', ' ')}), "
            f"{mean:.2f} on average over layers"
        )
    return "; ".join(parts)


def _random_phi11(analysis: dict[str, Any], grids: dict[str, list]) -> str:
    n = input_dim(analysis, next(iter(grids)).split("/")[1]) if grids else None
    return f"; random subspaces give {1 / n:.3f}" if n else ""


def mean_phi(grid: list) -> float:
    """The mean of a phi grid from analysis.json over its defined (non-null) entries."""
    return float(
        np.nanmean(np.array([[np.nan if v is None else v for v in r] for r in grid], float))
    )


def _pairs(analysis: dict[str, Any], folder: Path) -> list[Block]:
    blocks: list[Block] = []
    for p in analysis.get("rank_pairs", []):
        lo, hi = p["ranks"]
        blocks.append(
            f"**r={lo} vs r={hi}** ({Path(p['runs'][0]).name} vs {Path(p['runs'][1]).name}): "
            f"overlap of the top directions: {_top_direction(p['phi'])}"
            f"{_random_phi11(analysis, p['phi'])}."
        )
        blocks.append(figure(folder, p["figure"], f"phi(A r={lo}, A r={hi}, i, j)"))
    for p in analysis.get("seed_pairs", []):
        a, b = p["seeds"]
        rank = updates(analysis).get(Path(p["runs"][0]).name, {}).get("rank", "?")
        mean = float(np.mean([mean_phi(g) for g in p["phi"].values()]))
        blocks.append(
            f"**seed {a} vs {b} (r={rank})**: mean phi {mean:.2f} vs "
            f"{p['expected_random_mean']:.3f} for random subspaces; {_top_direction(p['phi'])}."
        )
        blocks.append(
            figure(
                folder, p["figure"], f"phi across seeds {a} and {b}, beside a random Gaussian pair"
            )
        )
    return [b for b in blocks if b is not None]


def _planted(rows: list[dict]) -> list[Block]:
    table = Table(
        [
            "run",
            "r",
            "gap closed",
            "val mse",
            "phi input (min(r,k), k)",
            "phi output",
            "effective rank",
            "rank for 90% energy",
        ],
        [
            [
                r["run"],
                str(r["rank"]),
                f"{r['final']['gap_closed']:.4f}",
                f"{r['final']['mse']:.3g}",
                f"{r['mean_phi_input']:.3f}",
                f"{r['mean_phi_output']:.3f}",
                f"{r['mean_effective_rank']:.2f}",
                f"{r['mean_energy_rank_90']:.1f}",
            ]
            for r in rows
        ],
        caption="Planted-rank recovery (ground truth)",
    )
    return [
        f"The teacher has a rank-{rows[0]['k']} update planted; a correct pipeline stops "
        "improving at r >= k, learns a dW of effective rank about k, and finds the planted "
        "directions (phi near 1).",
        table,
    ]


def _num(x: float | None, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def _dw_vs_w(analysis: dict[str, Any]) -> Table:
    rows = []
    for name, entry in updates(analysis).items():
        for adapter, m in entry["adapters"].items():
            t = m["dw_vs_w"]
            rows.append(
                [
                    name,
                    adapter,
                    str(int(t["r"])),
                    _num(t["w_norm"], ".2f"),
                    _num(t["dw_norm"], ".3f"),
                    _num(t["proj_dw"], ".3f"),
                    _num(t["proj_w"], ".2f"),
                    _num(t["proj_random"], ".3f"),
                    _num(t["amplification"], ".1f"),
                ]
            )
    columns = [
        "update",
        "matrix",
        "r",
        "||W||_F",
        "||dW||_F",
        "||U^T W V|| (dW dirs)",
        "(W dirs)",
        "(random)",
        "amplification",
    ]
    return Table(columns, rows, caption="dW vs W (Table 7 style)")


def _spectra(analysis: dict[str, Any], folder: Path) -> list[Block]:
    rows, figures = [], []
    for name, entry in updates(analysis).items():
        rows += [
            [
                name,
                adapter,
                str(m["rank"]),
                f"{m['stable_rank']:.2f}",
                f"{m['effective_rank']:.2f}",
                str(int(m["energy_rank_90"])),
                str(int(m["energy_rank_99"])),
            ]
            for adapter, m in entry["adapters"].items()
        ]
        figures.append(figure(folder, entry.get("spectrum_figure"), f"dW spectra, {name}"))
    columns = [
        "update",
        "matrix",
        "r",
        "stable rank",
        "effective rank",
        "rank for 90% energy",
        "99%",
    ]
    table = Table(columns, rows, caption="Spectra and effective rank of dW")
    return [table, *(f for f in figures if f is not None)]


def rank_analysis(folder: Path) -> list[Block]:
    """The blocks of the "Rank analysis" section (a pointer to the command when not run)."""
    analysis = load_analysis(folder)
    if analysis is None:
        return [
            f"No `{ANALYSIS_FILE}` in this folder: run `python -m experiments.analyze {folder}` "
            f"(it reads the runs' `{ADAPTER_DIR}/` folders)."
        ]
    if not updates(analysis):
        return ["No runs with adapters to analyse (rank 0 or full fine-tuning only)."]
    blocks: list[Block] = _pairs(analysis, folder)
    if analysis.get("planted"):
        blocks += _planted(analysis["planted"])
    return [*blocks, _dw_vs_w(analysis), *_spectra(analysis, folder)]

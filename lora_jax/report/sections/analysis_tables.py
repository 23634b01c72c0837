"""The paper's Table 7 and Figures 3 and 4 beside the numbers of our rank analysis.

They read `analysis.json` (written by `lora_jax.analysis.updates.analyze_runs` at the end of
every sweep) and reuse the heatmaps it drew under `figures/`; nothing is recomputed here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import lora_jax.report.paper as paper
from lora_jax.report.cells import Cell
from lora_jax.report.render.document import Block, Table
from lora_jax.report.render.format import MISSING, fmt_values, paper_num
from lora_jax.report.sections.our_setup import lora_cells, setup_lines, variant_label
from lora_jax.report.sections.rank_analysis import figure, input_dim, load_analysis, mean_phi
from lora_jax.runs.layout import ADAPTER_DIR, ANALYSIS_FILE, SweepFolder

W = paper.weight_label
_TABLE7_ROWS = (
    ("proj_dw", "||U^T W V^T||_F, U, V: top-r directions of dW"),
    ("proj_w", "||U^T W V^T||_F, U, V: top-r directions of W"),
    ("proj_random", "||U^T W V^T||_F, U, V: random"),
    ("w_norm", "||W||_F"),
    ("dw_norm", "||dW||_F"),
    ("amplification", "amplification ||dW||_F / ||U^T W V^T||_F (dW directions)"),
)


def _missing(sweep_dir: Path) -> list[Block]:
    return [
        f"No `{ANALYSIS_FILE}` in this sweep folder: run `python -m experiments.analyze {sweep_dir}` "
        f"first (it needs the runs' `{ADAPTER_DIR}/` folders)."
    ]


def _cell_of(cells: list[Cell], run_dir: str) -> Cell | None:
    name = Path(run_dir).name
    return next((c for c in cells if any(r.name == name for r in c.runs)), None)


def table7(cells: list[Cell], sweep_dir: Path) -> list[Block]:
    """Rows: the paper's Table 7 quantities; columns: the paper at r=4, 64, ours per target, rank."""
    analysis = load_analysis(sweep_dir)
    if analysis is None:
        return [*setup_lines("table7", cells), *_missing(sweep_dir)]
    label = variant_label(lora_cells(cells), ("rank", "targets"))
    groups: dict[tuple[str, str, int], list[dict[str, float]]] = {}
    for run in analysis["runs"].values():
        cell = _cell_of(cells, run["run_dir"])
        for adapter, m in run["adapters"].items():
            target = adapter.split("/")[1]
            groups.setdefault((label(cell) if cell else "", target, int(run["rank"])), []).append(
                m["dw_vs_w"]
            )
    # The paper's Table 7 is about Wq: put Wq first, then the other targets.
    keys = sorted(groups, key=lambda k: (k[0], k[1] != "q", k[1], k[2]))
    columns = ["quantity", "paper r=4", "paper r=64"] + [
        f"ours {W((t,))} r={r} {name}".strip() for name, t, r in keys
    ]
    rows = []
    for q, text in _TABLE7_ROWS:
        row = [text]
        for r in (4, 64):
            v = paper.TABLE7[r][q]
            approx = (r, q) in paper.TABLE7_APPROX
            row.append(f"≈{v:g}" if approx else paper_num(v, 2))
        for k in keys:
            vals = [d[q] for d in groups[k] if d.get(q) is not None and np.isfinite(d[q])]
            row.append(fmt_values(vals))
        rows.append(row)
    return [
        *setup_lines("table7", cells),
        "Ours: median [min–max] over the layers (and seeds) of each adapted matrix; the paper's "
        "numbers are one matrix (layer 48 Wq of 96).",
        Table(columns, rows, caption="dW vs W"),
    ]


def _phi11(grids: dict[str, list], target: str) -> list[float]:
    vals = [g[0][0] for name, g in grids.items() if name.split("/")[1] == target]
    return [float(v) for v in vals if v is not None]


def _mean_phi(grids: dict[str, list], target: str) -> list[float]:
    return [mean_phi(g) for name, g in grids.items() if name.split("/")[1] == target]


def _targets(grids: dict[str, list]) -> list[str]:
    names = dict.fromkeys(name.split("/")[1] for name in grids)
    return sorted(names, key=lambda t: (t != "q", t != "v", t))


def _seed_of(sweep_dir: Path, run_dir: str) -> int:
    return json.loads(SweepFolder(sweep_dir).run(Path(run_dir).name).metrics.read_text())["seed"]


def fig3(cells: list[Cell], sweep_dir: Path) -> list[Block]:
    """phi(1,1) between A of two ranks per target, against the paper's > 0.5 (r=8 vs r=64)."""
    analysis = load_analysis(sweep_dir)
    if analysis is None:
        return [*setup_lines("fig3", cells), *_missing(sweep_dir)]
    pairs = analysis.get("rank_pairs", [])
    if not pairs:
        return [
            *setup_lines("fig3", cells),
            "No pair of runs that differ only in rank: sweep `rank=` over two values or more.",
        ]
    label = variant_label(lora_cells(cells), ("rank",))
    threshold = paper.FIG3_TOP_PHI_MIN
    rows, figures = [], []
    top = max(p["ranks"][1] for p in pairs)
    seeds = [_seed_of(sweep_dir, p["runs"][0]) for p in pairs]
    for p, seed in zip(pairs, seeds, strict=True):
        lo, hi = p["ranks"]
        cell = _cell_of(cells, p["runs"][0])
        name = f"r={lo} vs r={hi}" + (f" ({label(cell)})" if cell and label(cell) else "")
        name += f", seed {seed}" if len(set(seeds)) > 1 else ""
        for t in _targets(p["phi"]):
            vals = _phi11(p["phi"], t)
            above = sum(v > threshold for v in vals)
            n = input_dim(analysis, t)
            random = f"{1 / n:.4f}" if n else MISSING
            rows.append([name, W((t,)), fmt_values(vals, "phi"), f"{above} of {len(vals)}", random])
        if hi == top:
            fig = figure(sweep_dir, p["figure"], f"phi(A r={lo}, A r={hi}, i, j), {name}")
            if fig:
                figures.append(fig)
    columns = [
        "ranks",
        "weights",
        "phi(1,1): median [min–max] over layers",
        f"layers with phi(1,1) > {threshold}",
        "random subspaces: 1/n",
    ]
    return [
        *setup_lines("fig3", cells),
        f"**Paper** (r={paper.FIG3_RANKS[0]} vs r={paper.FIG3_RANKS[1]}): {paper.FIG3_CLAIM}.",
        Table(columns, rows, caption="Top direction shared across ranks (Fig. 3)"),
        *figures,
    ]


def fig4(cells: list[Cell], sweep_dir: Path) -> list[Block]:
    """Mean phi between two seeds per target, beside a random Gaussian pair (Fig. 4)."""
    analysis = load_analysis(sweep_dir)
    if analysis is None:
        return [*setup_lines("fig4", cells), *_missing(sweep_dir)]
    pairs = analysis.get("seed_pairs", [])
    if not pairs:
        return [
            *setup_lines("fig4", cells),
            "No pair of runs that differ only in seed: sweep `seed=0,1`.",
        ]
    label = variant_label(lora_cells(cells), ("rank",))
    rows, figures = [], []
    verdicts: dict[object, list[str]] = {}  # per rank, one line per seed pair
    q_minus_v: dict[object, list[float]] = {}  # per rank, one difference per seed pair
    for p in pairs:
        cell = _cell_of(cells, p["runs"][0])
        name = f"seeds {p['seeds'][0]} vs {p['seeds'][1]}" + (
            f" ({label(cell)})" if cell and label(cell) else ""
        )
        rank = cell.rank if cell else MISSING
        means = {}
        for t in _targets(p["phi"]):
            means[t] = _mean_phi(p["phi"], t)
            rows.append(
                [
                    name,
                    str(rank),
                    W((t,)),
                    fmt_values(means[t], "phi"),
                    fmt_values(_phi11(p["phi"], t), "phi"),
                    f"{p['expected_random_mean']:.4f}",
                ]
            )
        if "q" in means and "v" in means:
            q, v = float(np.median(means["q"])), float(np.median(means["v"]))
            agrees = "as in the paper" if q > v else "unlike the paper"
            verdicts.setdefault(rank, []).append(
                f"{name}: median mean phi {q:.3f} for Wq vs {v:.3f} for Wv ({agrees})."
            )
            q_minus_v.setdefault(rank, []).append(q - v)
        fig = figure(sweep_dir, p["figure"], f"phi across {name}, with a random Gaussian pair")
        if fig:
            figures.append(fig)
    single = [v for lines in verdicts.values() if len(lines) == 1 for v in lines]
    columns = [
        "pair",
        "r",
        "weights",
        "mean phi over the grid: median [min–max] over layers",
        "phi(1,1) over layers",
        "random: expected mean phi",
    ]
    return [
        *setup_lines("fig4", cells),
        f"**Paper** (r={paper.FIG4_RANK}): {paper.FIG4_CLAIM}.",
        Table(columns, rows, caption="Directions shared across seeds (Fig. 4)"),
        _seed_spread(pairs, cells),
        # One seed pair at a rank: its own line; several: counted over the pairs.
        *(["**Ours, Wq vs Wv:** " + " ".join(single)] if single else []),
        *[_wq_wv_over_pairs(rank, d) for rank, d in q_minus_v.items() if len(d) > 1],
        *figures,
    ]


def _wq_wv_over_pairs(rank: object, diffs: list[float]) -> str:
    """Fig. 4's Wq-above-Wv claim over every seed pair at one rank. The pairs share seeds (4
    seeds make 6 pairs), so they are not independent samples: a count and the range, no p-value."""
    n, above = len(diffs), sum(d > 0 for d in diffs)
    if above == n:
        word = "in every pair, as in the paper"
    elif above == 0:
        word = "in no pair, unlike the paper"
    else:
        word = "mixed: the sign depends on the seeds"
    return (
        f"**Over {n} seed pairs at r={rank}:** Wq above Wv in {above} of {n} ({word}); "
        f"Wq − Wv in median mean phi {np.mean(diffs):+.3f} on average, "
        f"[{min(diffs):+.3f}, {max(diffs):+.3f}] over the pairs (pairs share seeds, so no test)."
    )


def _mean_sd(values: list[float]) -> str:
    if not values:
        return MISSING
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{np.mean(values):.4f} ± {sd:.4f} (n={len(values)})"


def _seed_spread(pairs: list[dict], cells: list[Cell]) -> Table:
    """Mean phi over every seed pair and layer, per rank and weight, beside the spread of the
    same number for independent random Gaussian pairs (`random_mean_draws`)."""
    ours: dict[tuple, list[float]] = {}
    random: dict[tuple, list[float]] = {}
    for p in pairs:
        cell = _cell_of(cells, p["runs"][0])
        rank = cell.rank if cell else MISSING
        for t in _targets(p["phi"]):
            ours.setdefault((rank, t), []).extend(_mean_phi(p["phi"], t))
            random.setdefault((rank, t), p.get("random_mean_draws", []))
    rows = []
    for (rank, t), values in ours.items():
        base = random[(rank, t)]
        ratio = f"{np.mean(values) / np.mean(base):.1f}x" if base else MISSING
        rows.append([str(rank), W((t,)), _mean_sd(values), _mean_sd(base), ratio])
    columns = [
        "r",
        "weights",
        "mean phi: mean ± sd over seed pairs x layers",
        "random Gaussian pairs: mean ± sd over draws",
        "ours / random",
    ]
    return Table(columns, rows, caption="Spread across seeds and of the random baseline")


BUILDERS = {"table7": table7, "fig3": fig3, "fig4": fig4}

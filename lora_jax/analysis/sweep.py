"""The rank analysis of a whole sweep, from the adapters its runs exported.

For the runs of a sweep folder (see `lora_jax.sweep.read_runs`) this computes

- per run: the spectrum of every dW and its summaries, and the Table 7 numbers (dW vs W);
- per pair of runs that differ only in rank: phi(A_low, A_high, i, j) per layer and target
  (Fig. 3), and per pair that differs only in seed: the same next to a random Gaussian
  baseline of matching shape (Fig. 4);

and writes `analysis.json` (every number, with the run folders it came from), PNG figures
under `figures/`, and returns the Markdown section of `report.md` that states the findings.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from lora_jax.adapter_io import load_adapter
from lora_jax.analysis.adapters import find_leaves
from lora_jax.analysis.projection import dw_vs_w
from lora_jax.analysis.similarity import (
    expected_random_phi,
    phi_grid_a,
    random_baseline,
    subspace_similarity,
)
from lora_jax.analysis.spectrum import dw_svd, spectrum, summarize_spectrum
from lora_jax.lora import LoRAConfig, lora_scale
from lora_jax.planted import load_factors

Key = tuple[int, str]  # (layer, target)


def _name(key: Key) -> str:
    return f"layer_{key[0]}/{key[1]}"


def _slug(run_name: str) -> str:
    """A file-name-safe, bounded form of a run folder name (Hydra's override string)."""
    if len(run_name) <= 48:
        return run_name
    return f"{run_name[:32]}_{hashlib.sha1(run_name.encode()).hexdigest()[:8]}"


def _json_grid(grid: Any) -> list:
    return [
        [None if not math.isfinite(x) else round(float(x), 6) for x in row]
        for row in np.asarray(grid)
    ]


def base_kernels(model: str, seed: int, keys: Iterable[Key] | None = None) -> dict[Key, np.ndarray]:
    """The frozen pretrained kernels W (in, out) that the adapters at `keys` (default: every
    layer's) were added to (encoder or decoder)."""
    from lora_jax import models
    from lora_jax.train import model_rng

    pre = models.load_model(
        model, LoRAConfig(rank=0), num_labels=2, rng=model_rng(seed), tokenizer=False
    )
    kernels = {k: v["kernel"] for k, v in find_leaves(pre.params, "kernel").items()}
    return {k: np.asarray(kernels[k]) for k in (keys if keys is not None else kernels)}


def run_measurements(
    adapters: dict[Key, tuple], kernels: dict[Key, np.ndarray], alpha: float, scaling: str
) -> dict:
    """Spectra, their summaries and Table 7 numbers for every adapter of one run."""
    out = {}
    for i, (key, (a, b)) in enumerate(adapters.items()):
        scale = lora_scale(a.shape[1], alpha, scaling)
        s = spectrum(a, b, scale)
        out[_name(key)] = {
            "rank": int(a.shape[1]),
            "singular_values": [float(x) for x in s],
            **{k: float(v) for k, v in summarize_spectrum(s, (a.shape[0], b.shape[1])).items()},
            "dw_vs_w": dw_vs_w(kernels[key], a, b, scale, jax.random.key(i)),
        }
    return out


def _differ_only_in(entries: list[dict], axis: str) -> list[tuple[dict, dict]]:
    """Pairs of runs whose overrides are equal except for `axis` (e.g. rank or seed)."""

    def rest(e: dict) -> tuple:
        return tuple(sorted(o for o in e["overrides"] if not o.startswith(f"{axis}=")))

    pairs = []
    for a, b in itertools.combinations(entries, 2):
        if rest(a) == rest(b) and a["metrics"][axis] != b["metrics"][axis]:
            pairs.append((a, b) if a["metrics"][axis] <= b["metrics"][axis] else (b, a))
    return pairs


def _phi_pair(lo: dict, hi: dict) -> dict[str, np.ndarray]:
    """phi grids of the shared adapters, ordered target by target (a figure row each)."""
    shared = sorted((k for k in lo["adapters"] if k in hi["adapters"]), key=lambda k: (k[1], k[0]))
    return {
        _name(k): np.asarray(phi_grid_a(lo["adapters"][k][0], hi["adapters"][k][0])) for k in shared
    }


def _layers_per_row(grids: dict) -> int:
    return len({name.split("/")[0] for name in grids})


def _top_direction_sentence(grids: dict[str, np.ndarray]) -> str:
    by_target: dict[str, list[tuple[float, str]]] = {}
    for name, g in grids.items():
        by_target.setdefault(name.split("/")[1], []).append((float(g[0, 0]), name.split("/")[0]))
    parts = []
    for target, vals in by_target.items():
        best, layer = max(vals)
        mean = float(np.nanmean([v for v, _ in vals]))
        parts.append(
            f"W{target}: phi(1,1) = {best:.2f} at its best ({layer.replace('_', ' ')}), {mean:.2f} on average over layers"
        )
    return "; ".join(parts)


def analyze_sweep(sweep_dir: str | Path, entries: list[dict[str, Any]]) -> str:
    """Analyse the runs of `sweep_dir`; write analysis.json and figures; return report Markdown."""
    from lora_jax.analysis import plots

    sweep_dir = Path(sweep_dir)
    fig_dir = sweep_dir / "figures"
    runs, kernel_cache = {}, {}
    for e in entries:
        m = e["metrics"]
        if (
            m["rank"] == 0
            or m.get("full_finetune")
            or not (Path(e["run_dir"]) / "adapter").is_dir()
        ):
            continue
        adapters, config = load_adapter(Path(e["run_dir"]) / "adapter")
        extra = config["lora_jax"]
        cache_key = (m["model"], m["seed"])
        if cache_key not in kernel_cache:  # every kernel: runs may adapt different targets
            kernel_cache[cache_key] = base_kernels(m["model"], m["seed"])
        runs[e["name"]] = {
            **e,
            "adapters": adapters,
            "measurements": run_measurements(
                adapters, kernel_cache[cache_key], extra["alpha"], extra["scaling"]
            ),
        }
    by_name = {e["name"]: e for e in entries if e["name"] in runs}
    report = ["## Rank analysis", ""]
    result: dict[str, Any] = {
        "sweep_dir": str(sweep_dir),
        "runs": {},
        "rank_pairs": [],
        "seed_pairs": [],
    }
    for name, run in runs.items():
        result["runs"][name] = {
            "run_dir": run["run_dir"],
            "rank": run["metrics"]["rank"],
            "adapters": run["measurements"],
        }
    if not runs:
        report.append("No runs with adapters to analyse (rank 0 or full fine-tuning only).")
    for lo_e, hi_e in _differ_only_in(list(by_name.values()), "rank"):
        lo, hi = runs[lo_e["name"]], runs[hi_e["name"]]
        r_lo, r_hi = lo["metrics"]["rank"], hi["metrics"]["rank"]
        grids = _phi_pair(lo, hi)
        png = plots.phi_figure(
            grids,
            fig_dir / f"phi_rank_{_slug(lo['name'])}_vs_r{r_hi}.png",
            xlabel=f"j (r={r_hi})",
            ylabel=f"i (r={r_lo})",
            suptitle=f"phi(A r={r_lo}, A r={r_hi}, i, j)",
            ncols=_layers_per_row(grids),
        )
        result["rank_pairs"].append(
            {
                "runs": [lo["run_dir"], hi["run_dir"]],
                "ranks": [r_lo, r_hi],
                "phi": {k: _json_grid(g) for k, g in grids.items()},
                "figure": png,
            }
        )
        n = next(iter(lo["adapters"].values()))[0].shape[0]
        report.append(
            f"- **r={r_lo} vs r={r_hi}**: overlap of the top directions: {_top_direction_sentence(grids)}; "
            f"random subspaces give {1 / n:.3f} ([figure]({Path(png).relative_to(sweep_dir)}))."
        )
    for a_e, b_e in _differ_only_in(list(by_name.values()), "seed"):
        a, b = runs[a_e["name"]], runs[b_e["name"]]
        grids = _phi_pair(a, b)
        key = next(iter(a["adapters"]))
        n, r1, r2 = (
            a["adapters"][key][0].shape[0],
            a["adapters"][key][0].shape[1],
            b["adapters"][key][0].shape[1],
        )
        baseline = np.asarray(random_baseline(jax.random.key(0), n, r1, r2))
        png = plots.phi_figure(
            {**grids, "random Gaussian": baseline},
            fig_dir / f"phi_seed_{_slug(a['name'])}_vs_s{b['metrics']['seed']}.png",
            suptitle=f"phi across seeds {a['metrics']['seed']} and {b['metrics']['seed']} (r={r1})",
            ncols=_layers_per_row(grids) + 1,
        )
        mean_phi = {k: float(np.nanmean(g)) for k, g in grids.items()}
        result["seed_pairs"].append(
            {
                "runs": [a["run_dir"], b["run_dir"]],
                "seeds": [a["metrics"]["seed"], b["metrics"]["seed"]],
                "phi": {k: _json_grid(g) for k, g in grids.items()},
                "random_baseline": _json_grid(baseline),
                "expected_random_mean": float(expected_random_phi(n, r1, r2).mean()),
                "figure": png,
            }
        )
        report.append(
            f"- **seed {a['metrics']['seed']} vs {b['metrics']['seed']} (r={r1})**: mean phi "
            f"{np.mean(list(mean_phi.values())):.2f} vs {float(expected_random_phi(n, r1, r2).mean()):.3f} "
            f"for random subspaces ([figure]({Path(png).relative_to(sweep_dir)}))."
        )
    planted_rows = _planted_recovery(runs)
    if planted_rows:
        result["planted"] = planted_rows
        report += ["", _planted_section(planted_rows)]
    report += ["", _table7(runs), "", _spectra_section(runs, fig_dir, sweep_dir)]
    # NaN/inf (undefined directions, dW orthogonal to W) become null: strict JSON.
    (sweep_dir / "analysis.json").write_text(
        json.dumps(_finite_or_none(result), indent=1, allow_nan=False)
    )
    return "\n".join(report)


def planted_recovery(
    adapters: dict[Key, tuple], factors: dict[Key, dict], alpha: float, scaling: str
) -> dict:
    """How well each learned dW recovers the planted one (see `lora_jax.planted`).

    For k planted directions and a learned dW of rank r: phi(min(r, k), k) between dW's top
    input (output) singular directions and the planted U (V): 1 = the planted subspace found.
    """
    out = {}
    for key, f in factors.items():
        if key not in adapters:
            continue
        a, b = adapters[key]
        u, s, v = dw_svd(a, b, lora_scale(a.shape[1], alpha, scaling))
        k, i = f["u"].shape[1], min(a.shape[1], f["u"].shape[1])
        summary = summarize_spectrum(s, (a.shape[0], b.shape[1]))
        out[_name(key)] = {
            "k": k,
            "phi_input": float(subspace_similarity(u, f["u"])[i - 1, k - 1]),
            "phi_output": float(subspace_similarity(v, f["v"])[i - 1, k - 1]),
            "effective_rank": float(summary["effective_rank"]),
            "energy_rank_90": int(summary["energy_rank_90"]),
            "energy_rank_99": int(summary["energy_rank_99"]),
        }
    return out


def _planted_recovery(runs: dict) -> list[dict]:
    rows = []
    for name, run in runs.items():
        factors = load_factors(run["run_dir"])
        if factors is None:
            continue
        cfg = json.loads((Path(run["run_dir"]) / "adapter" / "adapter_config.json").read_text())[
            "lora_jax"
        ]
        per = planted_recovery(run["adapters"], factors, cfg["alpha"], cfg["scaling"])
        m = run["metrics"]
        rows.append(
            {
                "run": name,
                "run_dir": run["run_dir"],
                "rank": m["rank"],
                "k": next(iter(per.values()))["k"],
                "final": m["final"],
                "adapters": per,
                **{
                    f"mean_{q}": float(np.mean([x[q] for x in per.values()]))
                    for q in ("phi_input", "phi_output", "effective_rank", "energy_rank_90")
                },
            }
        )
    return sorted(rows, key=lambda r: r["rank"])


def _planted_section(rows: list[dict]) -> str:
    lines = [
        "### Planted-rank recovery (ground truth)",
        "",
        f"The teacher has a rank-{rows[0]['k']} update planted; a correct pipeline stops improving at r >= k, "
        "learns a dW of effective rank about k, and finds the planted directions (phi near 1).",
        "",
        "| run | r | gap closed | val mse | phi input (min(r,k), k) | phi output | effective rank | rank for 90% energy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['run']} | {r['rank']} | {r['final']['gap_closed']:.4f} | {r['final']['mse']:.3g} | "
        f"{r['mean_phi_input']:.3f} | {r['mean_phi_output']:.3f} | {r['mean_effective_rank']:.2f} | "
        f"{r['mean_energy_rank_90']:.1f} |"
        for r in rows
    ]
    return "\n".join(lines)


def _finite_or_none(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _finite_or_none(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite_or_none(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _table7(runs: dict) -> str:
    lines = [
        "### dW vs W (Table 7 style)",
        "",
        "| run | adapter | r | ||W||_F | ||dW||_F | ||U^T W V|| (dW dirs) | (W dirs) | (random) | amplification |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, run in runs.items():
        for adapter, m in run["measurements"].items():
            t = m["dw_vs_w"]
            lines.append(
                f"| {name} | {adapter} | {int(t['r'])} | {t['w_norm']:.2f} | {t['dw_norm']:.3f} | "
                f"{t['proj_dw']:.3f} | {t['proj_w']:.2f} | {t['proj_random']:.3f} | {t['amplification']:.1f} |"
            )
    return "\n".join(lines)


def _spectra_section(runs: dict, fig_dir: Path, sweep_dir: Path) -> str:
    from lora_jax.analysis import plots

    lines = [
        "### Spectra and effective rank of dW",
        "",
        "| run | adapter | r | stable rank | effective rank | rank for 90% energy | 99% |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, run in runs.items():
        spectra = {a: m["singular_values"] for a, m in run["measurements"].items()}
        png = plots.spectrum_plot(
            spectra, path=fig_dir / f"spectrum_{_slug(name)}.png", title=f"dW spectra, {name}"
        )
        lines += [
            f"| {name} | {a} | {m['rank']} | {m['stable_rank']:.2f} | {m['effective_rank']:.2f} | "
            f"{int(m['energy_rank_90'])} | {int(m['energy_rank_99'])} |"
            for a, m in run["measurements"].items()
        ]
        lines.append(f"| {name} | [spectra]({Path(png).relative_to(sweep_dir)}) | | | | | |")
    return "\n".join(lines)

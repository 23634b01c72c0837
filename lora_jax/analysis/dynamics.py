"""The rank measurements over training: phi between runs, dW against W and the effective rank
of dW at every checkpoint a run kept, read from its Orbax files (no model, no training).

A run keeps its newest `trainer.keep_checkpoints` checkpoints, saved every
`trainer.checkpoint_every` steps (with `trainer.epochs`: once per epoch) and at its last step,
whose adapters are the exported ones: the curves end at the numbers of the final analysis.
Per run and matrix, at each kept step: ||dW||_F / ||W||_F, Table 7's ||U^T W V||_F with dW's
top-r directions and the amplification ||dW||_F / ||U^T W V||_F (`dw_vs_w`, with the same
random key per matrix as the final analysis), and the effective and stable rank of dW. Per
pair of runs that differ only in rank or only in seed: phi(1, 1) and the mean of phi's grid
between their A factors at each step both runs kept. Runs on one schedule keep the same steps;
runs that differ in `checkpoint_every` or length are compared at the steps they share only
(`unshared_steps` lists the others), and each run's own curves keep all its steps.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np

from lora_jax.analysis.adapter_spectra import find_adapters
from lora_jax.analysis.bases import BaseKernels
from lora_jax.analysis.curves import run_labels, target_means
from lora_jax.analysis.lora_update import Update
from lora_jax.analysis.projection import dw_vs_w
from lora_jax.analysis.similarity import phi_grid_a
from lora_jax.analysis.spectrum import spectrum, summarize_spectrum
from lora_jax.peft_adapter import matrix_name
from lora_jax.runs.record import pairs_differing_in

Key = tuple[int, str]  # (layer, target)
Factors = dict[Key, tuple[np.ndarray, np.ndarray]]
DYNAMICS_FIGURE = "dynamics.png"
DYNAMICS_STEP = "dynamics/step"  # the x axis of the logged curves: the training step
# Per run and matrix, one value per kept step.
CURVES = ("dw_norm", "dw_over_w", "proj_dw", "amplification", "effective_rank", "stable_rank")


def checkpoint_factors(update: Update) -> dict[int, Factors]:
    """{step: {(layer, target): (lora_a, lora_b)}} of every checkpoint the run kept, for the
    matrices its exported adapter holds. A step that cannot be read is left out with a warning.
    """
    out: dict[int, Factors] = {}
    record = update.record
    for step in record.checkpoint_steps if record is not None else []:
        try:
            found = find_adapters(record.checkpoint_trainable(step))
        except Exception as err:  # a damaged step: the others still make a curve
            warnings.warn(
                f"{record.run_dir}: checkpoint step {step} is unreadable "
                f"({type(err).__name__}: {str(err)[:200]}); the dynamics leave it out.",
                stacklevel=2,
            )
            continue
        out[step] = {k: found[k] for k in update.adapter.factors if k in found}
    return out


def run_curves(update: Update, by_step: dict[int, Factors], bases: BaseKernels) -> dict:
    """One run's curves: `CURVES` per matrix over the kept steps, and ||W||_F."""
    source, kernels = bases.kernels_of(update)
    steps = sorted(by_step)
    adapters = {}
    for i, key in enumerate(update.adapter.factors):  # i: the final analysis's random key
        if any(key not in by_step[step] for step in steps):
            continue  # not in every checkpoint (the adapter's own files name it otherwise)
        w, scale = kernels[key], update.adapter.scales[key]
        w_svd = bases.svd(source, key, w)
        curves: dict[str, list] = {name: [] for name in CURVES}
        w_norm = None
        for step in steps:
            a, b = by_step[step][key]
            t = dw_vs_w(w, a, b, scale, jax.random.key(i), w_svd=w_svd)
            s = summarize_spectrum(spectrum(a, b, scale), (a.shape[0], b.shape[1]))
            w_norm = t["w_norm"]
            curves["dw_norm"].append(t["dw_norm"])
            curves["dw_over_w"].append(t["dw_norm"] / t["w_norm"])
            curves["proj_dw"].append(t["proj_dw"])
            curves["amplification"].append(t["amplification"])
            curves["effective_rank"].append(float(s["effective_rank"]))
            curves["stable_rank"].append(float(s["stable_rank"]))
        adapters[matrix_name(key)] = {"w_norm": w_norm, **curves}
    return {
        "run_dir": str(update.folder),
        "rank": update.rank,
        "seed": update.seed,
        "steps": steps,
        "adapters": adapters,
    }


def pair_curves(lo: Update, hi: Update, by_step: dict[Path, dict[int, Factors]]) -> dict:
    """phi(1, 1) and the mean phi between the A factors of two runs at the steps both kept."""
    lo_steps, hi_steps = by_step[lo.folder], by_step[hi.folder]
    steps = sorted(set(lo_steps) & set(hi_steps))
    shared = sorted(set(lo.adapter.factors) & set(hi.adapter.factors), key=lambda k: (k[1], k[0]))
    shared = [k for k in shared if all(k in lo_steps[s] and k in hi_steps[s] for s in steps)]
    phi11: dict[str, list] = {matrix_name(k): [] for k in shared}
    phi_mean: dict[str, list] = {matrix_name(k): [] for k in shared}
    for step in steps:
        for key in shared:
            grid = np.asarray(phi_grid_a(lo_steps[step][key][0], hi_steps[step][key][0]))
            phi11[matrix_name(key)].append(float(grid[0, 0]))
            defined = grid[np.isfinite(grid)]
            phi_mean[matrix_name(key)].append(float(defined.mean()) if defined.size else None)
    return {
        "runs": [lo.name, hi.name],
        "ranks": [lo.rank, hi.rank],
        "seeds": [lo.seed, hi.seed],
        "steps": steps,
        "unshared_steps": sorted(set(lo_steps) ^ set(hi_steps)),
        "phi11": phi11,
        "phi_mean": phi_mean,
        # E phi(1, 1) = 1/n of independent random directions in R^n (`expected_random_phi`),
        # n the matrix's input dimension.
        "random_phi11": {matrix_name(k): 1.0 / lo.adapter.factors[k][0].shape[0] for k in shared},
    }


def measure_dynamics(updates: list[Update], bases: BaseKernels, fig_dir: Path) -> dict[str, Any]:
    """The `dynamics` block of `analysis.json` and its figure, or {} when no run kept two or
    more checkpoints (a curve needs two points).

    Args:
        updates: the sweep's LoRA runs (`updates.from_runs`).
        bases: W per matrix, shared with the final analysis (`BaseKernels`).
        fig_dir: where `dynamics.png` goes.
    """
    from lora_jax.analysis import figures

    by_step = {u.folder: checkpoint_factors(u) for u in updates}
    kept = [u for u in updates if by_step[u.folder]]
    if not any(len(by_step[u.folder]) >= 2 for u in kept):
        return {}
    records = {u.record.run_dir: u for u in kept}
    pairs = {
        axis: [
            pair_curves(records[a.run_dir], records[b.run_dir], by_step)
            for a, b in pairs_differing_in([u.record for u in kept], axis)
        ]
        for axis in ("rank", "seed")
    }
    result: dict[str, Any] = {
        "runs": {u.name: run_curves(u, by_step[u.folder], bases) for u in kept},
        "rank_pairs": pairs["rank"],
        "seed_pairs": pairs["seed"],
        "without_checkpoints": [u.name for u in updates if not by_step[u.folder]],
    }
    result["figure"] = figures.dynamics_plot(result, fig_dir / DYNAMICS_FIGURE)
    return result


def dynamics_rows(dynamics: dict[str, Any]) -> dict[int, dict[str, float]]:
    """{step: {key: value}}: the curves as logged metrics (W&B), averaged over layers per
    target. Keys: `dynamics/<quantity>/W<target>/<run or pair>`, quantity one of phi11 (pairs),
    amplification, dw_over_w, effective_rank (runs); undefined points are left out."""
    rows: dict[int, dict[str, float]] = {}

    def add(quantity: str, label: str, steps: list[int], per_matrix: dict[str, list]) -> None:
        for target, curve in target_means(per_matrix).items():
            for step, value in zip(steps, curve, strict=True):
                key = f"dynamics/{quantity}/W{target}/{label}"
                if np.isfinite(value):
                    rows.setdefault(step, {})[key] = float(value)

    for p in dynamics["rank_pairs"]:
        add(
            "phi11",
            f"r={p['ranks'][0]} vs {p['ranks'][1]}, seed={p['seeds'][0]}",
            p["steps"],
            p["phi11"],
        )
    for p in dynamics["seed_pairs"]:
        add(
            "phi11",
            f"seed={p['seeds'][0]} vs {p['seeds'][1]}, r={p['ranks'][0]}",
            p["steps"],
            p["phi11"],
        )
    labels = run_labels(dynamics["runs"])
    for name, entry in dynamics["runs"].items():
        for quantity in ("amplification", "dw_over_w", "effective_rank"):
            curves = {m: c[quantity] for m, c in entry["adapters"].items()}
            add(quantity, labels[name], entry["steps"], curves)
    return dict(sorted(rows.items()))

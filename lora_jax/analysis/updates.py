"""The rank analysis over files: LoRA updates from run folders or any PEFT adapter folders.

An `Update` is one adapter (`adapter_io.read_adapter`: factors and per-matrix scales) and, for
our runs, the `RunRecord` it came from. `analyze` measures

- every update: the spectrum of each dW and its summaries, dW against the frozen W (Table 7)
  and the intruders, W read from the base checkpoint by tensor name (`base_kernels`);
- every pair it is given: phi between the A factors (Fig. 3 for pairs that differ in rank,
  Fig. 4 with a random baseline for pairs that differ in seed), and for adapter pairs
  (`--adapters`) also between the B factors;

and writes `analysis.json` (every number, with the folders it came from) and, for a sweep,
the PNG figures under `figures/`. No model is built: where each update's base checkpoint lies
is the caller's knowledge (`base_of`), so this layer imports only the LoRA math and the file
readers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from lora_jax.analysis.bases import BaseKernels
from lora_jax.analysis.dynamics import measure_dynamics
from lora_jax.analysis.intruders import EPSILON as INTRUDER_EPSILON
from lora_jax.analysis.intruders import adapter_intruder_cosines
from lora_jax.analysis.jsonable import finite_or_none, json_grid
from lora_jax.analysis.lora_update import Update
from lora_jax.analysis.projection import dw_vs_w
from lora_jax.analysis.similarity import (
    expected_random_phi,
    phi_grid_a,
    phi_grid_b,
    random_baseline,
    random_mean_phi,
    subspace_similarity,
)
from lora_jax.analysis.spectrum import dw_svd, spectrum, summarize_spectrum
from lora_jax.analysis.svd_cache import SVDCache
from lora_jax.analysis.versus_full import versus_full
from lora_jax.audit.measure import adapter_names, open_adapters
from lora_jax.peft_adapter import matrix_name, read_adapter
from lora_jax.runs.files import write_atomic
from lora_jax.runs.layout import SweepFolder
from lora_jax.runs.record import RunRecord, pairs_differing_in
from lora_jax.weights.base_kernels import read_kernels

Key = tuple[int, str]  # (layer, target)
RANDOM_DRAWS = 32  # random pairs per seed pair: the spread of the random baseline


def from_runs(runs: Iterable[RunRecord]) -> list[Update]:
    """The updates of the runs that exported a LoRA adapter (not rank 0, not full FT)."""
    return [Update(r.name, read_adapter(r.adapter_dir), r) for r in runs if r.adapter_dir]


def from_adapters(folders: Iterable[str | Path]) -> list[Update]:
    """The updates of PEFT LoRA adapter folders (or run folders holding `adapter/`), one or
    more, checked to be comparable: the same base model and the same adapted matrices.

    Raises:
        ValueError, FileNotFoundError: no folder, one given twice, an unreadable or refused
            adapter, or two that differ in base or target set (names both folders); before
            any tensor is read (`audit.measure.open_adapters`).
    """
    folders = list(folders)
    open_adapters(folders)
    adapters = [read_adapter(f) for f in folders]
    return [Update(n, a) for n, a in zip(adapter_names(adapters), adapters, strict=True)]


def _slug(name: str) -> str:
    """A file-name-safe, bounded form of an update's name (Hydra's override string)."""
    if len(name) <= 48:
        return name.replace("/", "_")
    return f"{name[:32].replace('/', '_')}_{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def _matrix(update: Update, i: int, key: Key, w: np.ndarray, w_svd) -> dict:
    """Spectrum, its summaries, the Table 7 numbers and the intruders (PEFT's top 10 and
    epsilon 0.5) of the `i`-th matrix of one update."""
    a, b = update.adapter.factors[key]
    scale = update.adapter.scales[key]
    s = spectrum(a, b, scale)
    cosines = adapter_intruder_cosines(w_svd, w, a, b, scale)
    return {
        "rank": int(a.shape[1]),
        "shape": [int(a.shape[0]), int(b.shape[1])],
        "singular_values": np.asarray(s).tolist(),  # the same floats, without a compile
        **{k: float(v) for k, v in summarize_spectrum(s, (a.shape[0], b.shape[1])).items()},
        "dw_vs_w": dw_vs_w(w, a, b, scale, jax.random.key(i), w_svd=w_svd),
        "intruders": int(np.sum(cosines < INTRUDER_EPSILON)),
        "intruder_cosines": cosines.tolist(),
    }


def measure(update: Update, bases: BaseKernels) -> dict[str, dict]:
    """Spectra, their summaries, the Table 7 numbers and the intruders of every matrix of one
    update."""
    source, kernels = bases.kernels_of(update)
    return {
        matrix_name(key): _matrix(
            update, i, key, kernels[key], bases.svd(source, key, kernels[key])
        )
        for i, key in enumerate(update.adapter.factors)
    }


def measure_streamed(
    updates: list[Update], source: Path, svd_root: Path | None
) -> tuple[dict[str, dict], dict]:
    """`measure` of adapters on one base, matrix by matrix: one W and its SVD in memory at a
    time, decomposed once for every adapter (an LLM's base does not fit beside its SVDs) and
    saved under `svd_root` (`SVDCache`; None: not saved), so the next analysis on this base
    reads it. Returns the measurements and the cache's `stats()`."""
    from tqdm import tqdm

    keys = list(updates[0].adapter.factors)  # `from_adapters`: the same matrices in all
    family = updates[0].adapter.family
    svds = SVDCache(source, family, svd_root)
    out: dict[str, dict] = {u.name: {} for u in updates}
    for i, key in enumerate(tqdm(keys, desc="dW against W", unit="matrix", disable=None)):
        w = read_kernels(source, family, [key])[key]
        w_svd = svds.svd(key, w)
        for u in updates:
            out[u.name][matrix_name(key)] = _matrix(u, i, key, w, w_svd)
    return out, svds.stats()


def phi_grids(lo: Update, hi: Update, side: str = "a") -> dict[str, np.ndarray]:
    """phi grids of the matrices both adapt (A's input side or B's output side), ordered
    target by target (a figure row each)."""
    shared = sorted(set(lo.adapter.factors) & set(hi.adapter.factors), key=lambda k: (k[1], k[0]))
    phi, index = (phi_grid_a, 0) if side == "a" else (phi_grid_b, 1)
    return {
        matrix_name(k): np.asarray(phi(lo.adapter.factors[k][index], hi.adapter.factors[k][index]))
        for k in shared
    }


def _layers_per_row(grids: dict) -> int:
    return len({name.split("/")[0] for name in grids})


def _rank_pair(lo: Update, hi: Update, fig_dir: Path) -> dict:
    from lora_jax.analysis import figures

    grids = phi_grids(lo, hi)
    png = figures.phi_figure(
        grids,
        fig_dir / f"phi_rank_{_slug(lo.name)}_vs_r{hi.rank}.png",
        xlabel=f"j (r={hi.rank})",
        ylabel=f"i (r={lo.rank})",
        suptitle=f"phi(A r={lo.rank}, A r={hi.rank}, i, j)",
        ncols=_layers_per_row(grids),
    )
    return {
        "runs": [str(lo.folder), str(hi.folder)],
        "ranks": [lo.rank, hi.rank],
        "phi": {k: json_grid(g) for k, g in grids.items()},
        "figure": png,
    }


def _seed_pair(a: Update, b: Update, fig_dir: Path) -> dict:
    from lora_jax.analysis import figures

    grids = phi_grids(a, b)
    n, r1 = next(iter(a.adapter.factors.values()))[0].shape
    r2 = next(iter(b.adapter.factors.values()))[0].shape[1]
    baseline = np.asarray(random_baseline(jax.random.key(0), n, r1, r2))
    png = figures.phi_figure(
        {**grids, "random Gaussian": baseline},
        fig_dir / f"phi_seed_{_slug(a.name)}_vs_s{b.seed}.png",
        suptitle=f"phi across seeds {a.seed} and {b.seed} (r={r1})",
        ncols=_layers_per_row(grids) + 1,
    )
    return {
        "runs": [str(a.folder), str(b.folder)],
        "seeds": [a.seed, b.seed],
        "phi": {k: json_grid(g) for k, g in grids.items()},
        "random_baseline": json_grid(baseline),
        "expected_random_mean": float(expected_random_phi(n, r1, r2).mean()),
        # The random baseline's own spread (key 1: draw 0 above stays the figure's).
        "random_mean_draws": [
            float(m) for m in random_mean_phi(jax.random.key(1), n, r1, r2, RANDOM_DRAWS)
        ],
        "figure": png,
    }


def _adapter_pair(a: Update, b: Update) -> dict:
    """Any two adapters: phi of A (input side) and of B (output side), every matrix (the
    audit's report summarises them; no figure: an LLM's would be hundreds of panels)."""
    entry: dict[str, Any] = {"adapters": [str(a.folder), str(b.folder)], "ranks": [a.rank, b.rank]}
    for side, key in (("a", "phi"), ("b", "phi_b")):
        entry[key] = {k: json_grid(g) for k, g in phi_grids(a, b, side).items()}
    return entry


def _spectra_figures(updates: list[Update], measured: dict, fig_dir: Path) -> dict[str, str]:
    from lora_jax.analysis import figures

    return {
        u.name: figures.spectrum_plot(
            {a: m["singular_values"] for a, m in measured[u.name].items()},
            path=fig_dir / f"spectrum_{_slug(u.name)}.png",
            title=f"dW spectra, {u.name}",
        )
        for u in updates
    }


def planted_recovery(
    factors: dict[Key, tuple], scales: dict[Key, float], planted: dict[Key, dict]
) -> dict:
    """How well each learned dW recovers the planted one (see `lora_jax.planted`).

    For k planted directions and a learned dW of rank r: phi(min(r, k), k) between dW's top
    input (output) singular directions and the planted U (V): 1 = the planted subspace found.
    """
    out = {}
    for key, f in planted.items():
        if key not in factors:
            continue
        a, b = factors[key]
        u, s, v = dw_svd(a, b, scales[key])
        k, i = f["u"].shape[1], min(a.shape[1], f["u"].shape[1])
        summary = summarize_spectrum(s, (a.shape[0], b.shape[1]))
        out[matrix_name(key)] = {
            "k": k,
            "phi_input": float(subspace_similarity(u, f["u"])[i - 1, k - 1]),
            "phi_output": float(subspace_similarity(v, f["v"])[i - 1, k - 1]),
            "effective_rank": float(summary["effective_rank"]),
            "energy_rank_90": int(summary["energy_rank_90"]),
            "energy_rank_99": int(summary["energy_rank_99"]),
        }
    return out


def _planted_rows(updates: list[Update]) -> list[dict]:
    rows = []
    for u in updates:
        planted = u.record.planted_factors() if u.record is not None else None
        if planted is None:
            continue
        per = planted_recovery(u.adapter.factors, u.adapter.scales, planted)
        rows.append(
            {
                "run": u.name,
                "run_dir": str(u.folder),
                "rank": u.rank,
                "k": next(iter(per.values()))["k"],
                "final": u.record.metrics["final"],
                "adapters": per,
                **{
                    f"mean_{q}": float(np.mean([x[q] for x in per.values()]))
                    for q in ("phi_input", "phi_output", "effective_rank", "energy_rank_90")
                },
            }
        )
    return sorted(rows, key=lambda r: r["rank"])


def _measure_all(updates: list[Update], bases: BaseKernels) -> dict[str, dict]:
    return {u.name: measure(u, bases) for u in updates}


def _write(out_dir: Path, result: dict[str, Any]) -> dict[str, Any]:
    # NaN/inf (undefined directions, dW orthogonal to W) become null: strict JSON.
    result = finite_or_none(result)
    write_atomic(SweepFolder(out_dir).analysis, json.dumps(result, indent=1, allow_nan=False))
    return result


def analyze_runs(
    sweep_dir: str | Path, runs: list[RunRecord], base_of: Callable[[RunRecord], Path]
) -> dict[str, Any]:
    """Analyse the LoRA runs of a sweep: every run, every pair of runs that differ only in
    rank (Fig. 3) or only in seed (Fig. 4), planted-rank recovery where a run planted one,
    and the same measurements at every checkpoint the runs kept (`dynamics`).

    Writes `<sweep_dir>/analysis.json` and `<sweep_dir>/figures/*.png`; returns the JSON.
    """
    sweep_dir = Path(sweep_dir)
    fig_dir = SweepFolder(sweep_dir).figures
    updates = from_runs(runs)
    by_run = {u.record.run_dir: u for u in updates}
    lora_runs = [u.record for u in updates]
    bases = BaseKernels(lambda u: base_of(u.record))
    measured = _measure_all(updates, bases)
    spectra = _spectra_figures(updates, measured, fig_dir)
    result: dict[str, Any] = {
        "sweep_dir": str(sweep_dir),
        "runs": {
            u.name: {
                "run_dir": str(u.folder),
                "rank": u.rank,
                "adapters": measured[u.name],
                "spectrum_figure": spectra[u.name],
            }
            for u in updates
        },
        "rank_pairs": [
            _rank_pair(by_run[a.run_dir], by_run[b.run_dir], fig_dir)
            for a, b in pairs_differing_in(lora_runs, "rank")
        ],
        "seed_pairs": [
            _seed_pair(by_run[a.run_dir], by_run[b.run_dir], fig_dir)
            for a, b in pairs_differing_in(lora_runs, "seed")
        ],
    }
    planted = _planted_rows(updates)
    if planted:
        result["planted"] = planted
    adapter_of = {u.record.run_dir: u.adapter for u in updates}
    full = versus_full(
        runs, lambda r: (adapter_of[r.run_dir].factors, adapter_of[r.run_dir].scales), base_of
    )
    if full:
        result["versus_full"] = full
    # The same measurements at every checkpoint the runs kept (when one kept two or more).
    dynamics = measure_dynamics(updates, bases, fig_dir)
    if dynamics:
        result["dynamics"] = dynamics
    return _write(sweep_dir, result)


def analyze_adapters(
    folders: Iterable[str | Path],
    out_dir: str | Path,
    base_of: Callable[[Update], Path],
    svd_root: Path | None = None,
) -> dict[str, Any]:
    """Analyse any PEFT LoRA adapters on one base: each adapter against W, and every pair of
    them (phi of A and of B). Writes `<out_dir>/analysis.json`; returns it.
    W's decompositions are saved under `svd_root` (None: not saved) and read back next time.

    Raises:
        ValueError, FileNotFoundError: unreadable adapters, or two that are not comparable
            (different bases or target sets; the message names both folders).
    """
    updates = from_adapters(folders)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = {Path(base_of(u)) for u in updates}  # random-init runs: W saved per run
    if len(sources) == 1:
        measured, svd_cache = measure_streamed(updates, sources.pop(), svd_root)
    else:
        measured, svd_cache = _measure_all(updates, BaseKernels(base_of)), None
    first = updates[0].adapter
    result = {
        "adapters": {
            u.name: {
                "adapter_dir": str(u.adapter.folder),
                "rank": u.rank,
                "adapters": measured[u.name],
            }
            for u in updates
        },
        "base": {
            "name": first.base,
            "family": first.family,
            "checkpoint": str(base_of(updates[0])),
            "svd_cache": svd_cache,
        },
        "adapter_pairs": [
            _adapter_pair(a, b) for i, a in enumerate(updates) for b in updates[i + 1 :]
        ],
    }
    return _write(out_dir, result)

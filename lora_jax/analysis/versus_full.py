"""LoRA against full fine-tuning, from the files their runs left.

A full fine-tuning run writes W_ft - W_0 of every matrix a LoRA could adapt
(`full_update.safetensors`, `runs.layout.FULL_UPDATE_FILE`). For each such run this measures

- the spectrum of each full update: energy ranks (50/90/99%), stable and effective rank,
  beside a Gaussian matrix of the same shape and norm (Biderman et al. 2024: far above a
  low-rank matrix, below a random one);
- intruder dimensions of W_0 + dW against W_0 as a curve over epsilon, for the full update and
  for every LoRA run on the same model, task and seed (Shuttleworth et al. 2024);
- phi between the top subspaces of the full update and of each such LoRA's dW, input and
  output side (does LoRA find the full update's directions?).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from lora_jax.analysis.full_update import random_like, update_phi, update_svd
from lora_jax.analysis.intruders import TOP_K, intruder_curve
from lora_jax.analysis.jsonable import json_grid
from lora_jax.analysis.spectrum import dw_svd, summarize_spectrum
from lora_jax.audit.cores import energy_ranks
from lora_jax.peft_adapter import matrix_name
from lora_jax.runs.record import RunRecord
from lora_jax.weights.base_kernels import load_kernels, read_kernels, saved_family

Key = tuple[int, str]
EPSILONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
PHI_DIRECTIONS = 64  # top directions of the full update compared (rows of the phi grids)


def full_update(run: RunRecord) -> dict[Key, np.ndarray] | None:
    """{(layer, target): W_ft - W_0 (in, out)} of a full fine-tuning run, or None."""
    path = run.folder.full_update
    return load_kernels(path) if run.full_finetune and path.is_file() else None


def _spectrum(dw: np.ndarray, s: np.ndarray, key: jax.Array) -> dict[str, Any]:
    summary = summarize_spectrum(s, dw.shape)
    random_s = update_svd(random_like(key, dw))[1]
    return {
        "singular_values": [float(x) for x in s],
        **energy_ranks(s),
        "stable_rank": float(summary["stable_rank"]),
        "effective_rank": float(summary["effective_rank"]),
        "frobenius": float(summary["frobenius"]),
        "random": {
            "singular_values": [float(x) for x in random_s],
            **energy_ranks(random_s),
            "effective_rank": float(summarize_spectrum(random_s)["effective_rank"]),
        },
    }


def versus_full(
    runs: Iterable[RunRecord],
    lora_factors: Callable[[RunRecord], tuple[dict, dict]],
    base_of: Callable[[RunRecord], Path],
    epsilons: Iterable[float] = EPSILONS,
    top_k: int = TOP_K,
) -> list[dict[str, Any]]:
    """One entry per full fine-tuning run that saved its update (see the module docstring).

    Args:
        runs: the sweep's runs (full fine-tuning and LoRA).
        lora_factors: a LoRA run's ({key: (lora_a, lora_b)}, {key: scale}).
        base_of: a run's base checkpoint (for W_0).
        epsilons: where the intruder curve is evaluated. top_k: singular vectors examined.
    """
    runs, epsilons = list(runs), list(epsilons)
    out = []
    for full_run in runs:
        updates = full_update(full_run)
        if updates is None:
            continue
        family = saved_family(full_run.folder.full_update)
        w0 = read_kernels(base_of(full_run), family, updates)
        peers = [
            r
            for r in runs
            if r.adapter_dir is not None  # a LoRA run that exported its adapter
            and (r.model, r.task, r.seed) == (full_run.model, full_run.task, full_run.seed)
        ]
        entry: dict[str, Any] = {
            "run": full_run.name,
            "run_dir": str(full_run.run_dir),
            "seed": full_run.seed,
            "epsilons": epsilons,
            "top_k": top_k,
            "matrices": {},
            "lora": {},
        }
        svds, base_svds = {}, {}  # each W_0 decomposed once for every update
        for i, (key, dw) in enumerate(updates.items()):
            svds[key], base_svds[key] = update_svd(dw), update_svd(w0[key])
            entry["matrices"][matrix_name(key)] = {
                **_spectrum(dw, np.asarray(svds[key][1]), jax.random.key(i)),
                "intruders": intruder_curve(
                    w0[key], w0[key] + dw, epsilons, top_k, w0_svd=base_svds[key]
                ),
            }
        for peer in peers:
            factors, scales = lora_factors(peer)
            per = {}
            for key, (a, b) in factors.items():
                if key not in updates:
                    continue
                lora_svd = dw_svd(a, b, scales[key])
                u, s, v = svds[key]
                full_top = (u[:, :PHI_DIRECTIONS], s[:PHI_DIRECTIONS], v[:, :PHI_DIRECTIONS])
                dw = (np.asarray(a) * scales[key]) @ np.asarray(b)
                per[matrix_name(key)] = {
                    "phi_input": json_grid(update_phi(full_top, lora_svd, "input")),
                    "phi_output": json_grid(update_phi(full_top, lora_svd, "output")),
                    "intruders": intruder_curve(
                        w0[key], w0[key] + dw, epsilons, top_k, w0_svd=base_svds[key]
                    ),
                }
            entry["lora"][peer.name] = {
                "run_dir": str(peer.run_dir),
                "rank": peer.rank,
                "matrices": per,
            }
        out.append(entry)
    return out


__all__ = ["EPSILONS", "full_update", "versus_full"]

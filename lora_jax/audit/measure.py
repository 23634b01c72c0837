"""The rank audit: what B·A alone says about every matrix of one or more PEFT LoRA adapters,
without their base, read one matrix at a time (numpy only: no JAX, no base model).

    >>> result = audit(["runs/r16/adapter", "runs/r16_seed1/adapter"])  # doctest: +SKIP
    >>> result["adapters"]["r16"]["matrices"]["layer_3/q"]["energy_rank_90"]
    >>> advice = advise(result, energy=0.9)  # PEFT rank_pattern/alpha_pattern per adapter

Per adapter and matrix: `cores.summarize` (||dW||_F, ||dW||_2, stable and effective rank, energy
ranks k50/k90/k99, utilization) and the singular values; per adapter, the median and range of
each by matrix type (q, k, v, o, ffn_*). Per pair of adapters (same base and matrices): phi of A
(input side) and of B (output side) for every matrix, summarised as phi(1, 1) (is the top
direction shared?) and the grid's mean beside the mean a random pair would give.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lora_jax.audit.cores import (
    SUMMARY_KEYS,
    energy_ranks,
    expected_random_phi,
    phi_grid,
    singular_values,
)
from lora_jax.audit.cores import summarize as summarize_core
from lora_jax.peft_adapter import CONFIG_FILE, Adapter, AdapterFile, Key, matrix_name, open_adapter
from lora_jax.runs.files import write_atomic
from lora_jax.runs.layout import ADAPTER_DIR, SweepFolder

# What a matrix type's summary reports (median and range over its layers).
BY_TYPE = ("stable_rank", "utilization", "energy_rank_90", "energy_utilization", "frobenius")


def adapter_names(adapters: Sequence[AdapterFile | Adapter]) -> list[str]:
    """Short, distinct names: the folder's (or its run's, for `<run>/adapter`), else paths."""
    names = [
        a.folder.parent.name if a.folder.name == ADAPTER_DIR else a.folder.name for a in adapters
    ]
    return names if len(set(names)) == len(names) else [str(a.folder) for a in adapters]


def check_comparable(a: AdapterFile | Adapter, b: AdapterFile | Adapter) -> None:
    """Two adapters can be compared matrix by matrix: one base model, the same matrices.

    Raises:
        ValueError: naming both folders, what differs and what is allowed.
    """
    where = f"adapters {a.folder} and {b.folder}"
    if (a.family, a.base) != (b.family, b.base):
        raise ValueError(
            f"{where} are on different bases: {a.base!r} ({a.family}) vs {b.base!r} "
            f"({b.family}); allowed: adapters of one base model. Compare adapters trained on "
            "the same base."
        )
    if set(a.scales) != set(b.scales):
        only_a, only_b = (
            sorted(set(a.scales) - set(b.scales)),
            sorted(set(b.scales) - set(a.scales)),
        )
        raise ValueError(
            f"{where} adapt different matrices: only the first has {_names(only_a)}, only the "
            f"second {_names(only_b)}; allowed: the same targets and layers in both."
        )


def _names(keys: Iterable[Key]) -> str:
    return ", ".join(matrix_name(k) for k in keys) or "none"


def open_adapters(folders: Iterable[str | Path], comparable: bool = True) -> list[AdapterFile]:
    """Check and index every folder (no tensor read); with `comparable`, all on one base with
    the same matrices (what a pair's phi needs).

    Raises:
        ValueError, FileNotFoundError: a folder given twice, an unreadable or refused adapter,
            or (`comparable`) two that are not comparable; before any tensor is read.
    """
    folders = list(folders)
    if not folders:
        raise ValueError("--adapters got no folder; allowed: one or more PEFT adapter folders.")
    adapters = [open_adapter(f) for f in folders]
    seen = [a.folder.resolve() for a in adapters]
    if len(set(seen)) < len(seen):
        twice = sorted({str(f) for f in seen if seen.count(f) > 1})
        raise ValueError(f"--adapters names {twice} twice; allowed: each adapter folder once.")
    for other in adapters[1:] if comparable else ():
        check_comparable(adapters[0], other)
    return adapters


def _pair_summary(a1: np.ndarray, a2: np.ndarray) -> dict[str, float]:
    grid = phi_grid(a1, a2)
    return {
        "top": float(grid[0, 0]),
        "mean": float(grid.mean()),
        "random_mean": float(expected_random_phi(a1.shape[0], *grid.shape).mean()),
    }


def _progress(total: int, what: str):
    from tqdm import tqdm  # a bar on a terminal, nothing in a log file

    return tqdm(total=total, desc=what, unit="matrix", disable=None, leave=False)


def _measure(adapters: list[AdapterFile], names: list[str], bar) -> tuple[list, list]:
    """Every matrix of comparable `adapters` (read together, one matrix at a time), and phi of
    every pair."""
    streams = [a.factors() for a in adapters]
    matrices: list[dict[str, dict]] = [{} for _ in adapters]
    pair_index = [(i, j) for i in range(len(adapters)) for j in range(i + 1, len(adapters))]
    pairs = [{"adapters": [names[i], names[j]], "matrices": {}} for i, j in pair_index]
    for key in adapters[0].scales:
        factors = []
        for n, (adapter, stream) in enumerate(zip(adapters, streams, strict=True)):
            got, a, b = next(stream)
            assert got == key, (got, key)  # all iterate the same sorted keys
            s = singular_values(a, b, adapter.scales[key])
            rank = adapter.ranks[key]
            matrices[n][matrix_name(key)] = {
                "rank": rank,
                "shape": list(adapter.shapes[key]),
                **summarize_core(s, rank, adapter.shapes[key]),
                "singular_values": s.tolist(),
            }
            factors.append((a, b))
            bar.update()
        for pair, (i, j) in zip(pairs, pair_index, strict=True):
            (a1, b1), (a2, b2) = factors[i], factors[j]
            pair["matrices"][matrix_name(key)] = {
                "phi_a": _pair_summary(a1, a2),
                "phi_b": _pair_summary(b1.T, b2.T),
            }
    for pair in pairs:
        pair["summary"] = _pair_medians(pair["matrices"])
    return matrices, pairs


def audit(folders: Iterable[str | Path], pairs: bool = True) -> dict[str, Any]:
    """Audit PEFT LoRA adapters (one or more) without their base; see the module docstring.

    `pairs=False` audits each adapter alone (they may differ in base and matrices: a sweep's
    runs over target sets) and compares none. Memory: one matrix's factors per adapter at a
    time. Returns a JSON-ready dict with `adapters` ({name: {folder, family, base, rank,
    matrices, by_type}}) and `pairs`.
    """
    adapters = open_adapters(folders, comparable=pairs)
    names = adapter_names(adapters)
    with _progress(sum(len(a.scales) for a in adapters), "audit") as bar:
        if pairs:
            matrices, compared = _measure(adapters, names, bar)
        else:
            matrices = [_measure([a], [n], bar)[0][0] for a, n in zip(adapters, names, strict=True)]
            compared = []
    return {
        "adapters": {
            name: {
                "folder": str(adapter.folder),
                "family": adapter.family,
                "base": adapter.base,
                "rank": max(adapter.ranks.values()),
                "matrices": per,
                "by_type": by_type(per),
            }
            for name, adapter, per in zip(names, adapters, matrices, strict=True)
        },
        "pairs": compared,
    }


def _pair_medians(per: dict[str, dict]) -> dict[str, float]:
    return {
        f"{side}_{q}": float(np.median([m[side][q] for m in per.values()]))
        for side in ("phi_a", "phi_b")
        for q in ("top", "mean", "random_mean")
    }


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "median": float(np.median(values)),
        "min": float(min(values)),
        "max": float(max(values)),
    }


def by_type(
    matrices: dict[str, dict], quantities: Sequence[str] = BY_TYPE
) -> dict[str, dict[str, Any]]:
    """{type: {quantity: {median, min, max}, layers}} over the layers of each matrix type;
    undefined values (None) are left out, a quantity undefined in every layer is None."""
    types: dict[str, list[dict]] = {}
    for name, m in matrices.items():
        types.setdefault(name.split("/")[1], []).append(m)
    out: dict[str, dict[str, Any]] = {}
    for t, ms in sorted(types.items()):
        out[t] = {"layers": len(ms)}
        for q in quantities:
            values = [m[q] for m in ms if m[q] is not None]
            out[t][q] = _stats(values) if values else None
    return out


def energy_rank(s: Sequence[float], energy: float) -> int:
    """The smallest k whose top-k singular values keep `energy` of ||dW||_F² (0 for dW = 0)."""
    return next(iter(energy_ranks(s, (energy,)).values()))


def check_energy(energy: float) -> float:
    """`energy`, if a share of ||dW||_F² the advice can keep. Raises ValueError otherwise."""
    if not 0 < energy <= 1:
        raise ValueError(
            f"--energy {energy} is not valid; allowed: a share of ||dW||_F² in (0, 1], e.g. 0.9."
        )
    return energy


def advise(result: dict[str, Any], energy: float = 0.9) -> dict[str, dict[str, Any]]:
    """Rank advice per adapter: each matrix's smallest rank keeping `energy` of its update's
    ||dW||_F² (at least 1), as

    - `rank_pattern` / `alpha_pattern`: PEFT `LoraConfig` keys (full module names), with each
      matrix's alpha set so its scale (alpha/r, or alpha/sqrt(r) under rsLoRA) is the adapter's;
    - `lora_rank_pattern`: our `lora.rank_pattern=` per target type (the largest over layers:
      our pattern is per type), and the per-type median and max;
    - `task`: for our runs truncated by their sweep, the smallest rank keeping 90% of the task
      gain (`task_rank`), else None.

    Raises:
        ValueError: `energy` outside (0, 1].
    """
    check_energy(energy)
    out = {}
    for name, adapter in result["adapters"].items():
        index = open_adapter(adapter["folder"])
        rslora = bool(index.config.get("use_rslora"))
        ranks, alphas, per_type = {}, {}, {}
        for key, module in index.modules.items():
            m = adapter["matrices"][matrix_name(key)]
            k = max(1, energy_rank(m["singular_values"], energy))
            # a fused c_attn holds q, k and v in one module: it needs the largest of the three
            ranks[module.name] = max(k, ranks.get(module.name, 0))
            per_type.setdefault(key[1], []).append(k)
        scales = {m.name: m.scale for m in index.modules.values()}
        for module_name, k in ranks.items():
            alphas[module_name] = scales[module_name] * (math.sqrt(k) if rslora else k)
        r, scale = max(ranks.values()), next(iter(scales.values()))
        out[name] = {
            "energy": energy,
            "task": task_rank(Path(adapter["folder"])),
            "r": r,  # PEFT's default for modules outside the patterns (there are none)
            "lora_alpha": scale * (math.sqrt(r) if rslora else r),
            "rank_pattern": ranks,
            "alpha_pattern": alphas,
            "lora_rank_pattern": {t: max(ks) for t, ks in sorted(per_type.items())},
            "by_type": {
                t: {"median": float(np.median(ks)), "max": max(ks)}
                for t, ks in sorted(per_type.items())
            },
            "params_now": _params(index, {m.name: m.rank for m in index.modules.values()}),
            "params_advised": _params(index, ranks),
        }
    return out


def task_rank(folder: Path) -> dict[str, Any] | None:
    """For one of our runs (`<sweep>/<run>/adapter`) whose sweep evaluated it truncated to each
    rank k (beside full fine-tuning: `lora_jax.evals.model_evals`): the smallest k keeping 90% of
    the run's task gain over k = 0, with the curve. None for any other adapter."""
    evals = SweepFolder(folder.parent.parent).evals
    if folder.name != ADAPTER_DIR or not evals.is_file():
        return None
    for entry in json.loads(evals.read_text())["versus_full"].values():
        record = (entry.get("runs") or {}).get(folder.parent.name)
        curve = (record or {}).get("truncation")
        if curve:
            keys = ("rank_for_90", "ks", "values")
            return {"metric": record["metric"], **{k: curve[k] for k in keys}}
    return None


def _params(index: AdapterFile, ranks: dict[str, int]) -> int:
    """LoRA parameters at these module ranks: r (in + out) per module."""
    total, counted = 0, set()
    for key, module in index.modules.items():
        if module.name not in counted:
            counted.add(module.name)
            fan_in = index.shapes[key][0]
            fan_out = index.shapes[key][1] * len(module.targets)
            total += ranks[module.name] * (fan_in + fan_out)
    return total


CSV_COLUMNS = ("rank", *SUMMARY_KEYS)  # after adapter and matrix


def write_audit(
    folders: Iterable[str | Path],
    out: str | Path,
    energy: float | None = None,
    pairs: bool = True,
) -> dict[str, Any]:
    """Audit `folders` into `out`: audit.json (every number), audit.csv (a row per adapter and
    matrix) and, with `energy`, rank_advice.json and advice/<adapter>/adapter_config.json (the
    adapter's own config with the advised rank_pattern/alpha_pattern). `pairs`: see `audit`.
    Returns the audit."""
    if energy is not None:
        check_energy(energy)  # before any work
    result = audit(folders, pairs)  # a refused adapter stops here, before anything is written
    out = SweepFolder(out)
    out.path.mkdir(parents=True, exist_ok=True)
    write_atomic(out.audit_json, json.dumps(result, indent=1))
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["adapter", "matrix", *CSV_COLUMNS])
    for name, adapter in result["adapters"].items():
        for matrix, m in adapter["matrices"].items():
            writer.writerow([name, matrix, *(m[c] for c in CSV_COLUMNS)])
    write_atomic(out.audit_csv, rows.getvalue())
    if energy is not None:
        advice = advise(result, energy)
        write_atomic(out.rank_advice, json.dumps(advice, indent=1))
        for name, a in advice.items():
            config = dict(open_adapter(result["adapters"][name]["folder"]).config)
            config.pop("lora_jax", None)
            keys = ("r", "lora_alpha", "rank_pattern", "alpha_pattern")
            config |= {k: a[k] for k in keys}
            # advice/<adapter>/adapter_config.json: `LoraConfig.from_pretrained` reads it
            folder = out.advice / name.replace("/", "_")
            folder.mkdir(parents=True, exist_ok=True)
            write_atomic(folder / CONFIG_FILE, json.dumps(config, indent=2))
    return result

"""LoRA against full fine-tuning over seeds: the head of the report's "LoRA vs full
fine-tuning" section when at least `MIN_SEEDS` full fine-tuning runs were evaluated.

Per method (full fine-tuning, LoRA at each rank), over the seeds: the task metric, the
forgetting, the smallest truncation rank keeping 90% of the gain (full fine-tuning and the
highest LoRA rank) and the intruder dimensions (median over matrices) as mean ± standard
deviation, and each LoRA update's norm against the full update's of the same seed; then each
LoRA rank against full fine-tuning on the task metric and the forgetting, paired over seeds
(`seed_stats.compare`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lora_jax.report.cells import Stats
from lora_jax.report.render.document import Block, Table
from lora_jax.report.render.format import diff_unit, num, scale, unit
from lora_jax.report.sections.full_finetuning import intruder_column
from lora_jax.report.seed_stats import MIN_SEEDS, compare, verdict

FULL = "full FT"


def _intruders(entry: dict[str, Any], matrices: dict[str, Any]) -> float:
    at = intruder_column(entry["epsilons"])
    return float(np.median([m["intruders"][at] for m in matrices.values()]))


def norm_ratio(analysis: dict[str, Any], entry: dict[str, Any], name: str) -> float | None:
    """||B·A||_F / ||dW_full||_F of LoRA run `name` against the entry's full update, the median
    over the matrices both adapt (tinker-feedback#67 asks it beside the best-rate ratio); None
    when the LoRA run's spectra are not in the analysis."""
    adapters = (analysis.get("runs") or {}).get(name, {}).get("adapters", {})
    ratios = [
        adapters[key]["frobenius"] / m["frobenius"]
        for key, m in entry["matrices"].items()
        if key in adapters and m.get("frobenius")
    ]
    return float(np.median(ratios)) if ratios else None


def per_method(analysis: dict[str, Any]) -> dict[str, dict[str, dict[int, float]]]:
    """{method: {quantity: {seed: value}}} over the `versus_full` entries with model
    evaluations; methods in order: full FT, then LoRA by rank."""
    out: dict[str, dict[str, dict[int, float]]] = {}
    for entry in analysis.get("versus_full", []):
        evals = (entry.get("model_evals") or {}).get("runs")
        if entry.get("seed") is None or not evals:
            continue
        seed = int(entry["seed"])
        for name, e in evals.items():
            full = e["full_finetune"]
            method = FULL if full else f"LoRA r={e['rank']}"
            matrices = entry["matrices"] if full else entry["lora"][name]["matrices"]
            values = {
                "value": e["value"],
                "forgetting": e["forgetting"],
                "intruders": _intruders(entry, matrices),
            }
            if e.get("truncation"):
                values["rank_for_90"] = e["truncation"]["rank_for_90"]
            if not full:
                values["norm_ratio"] = norm_ratio(analysis, entry, name)
            for quantity, x in values.items():
                if x is not None:
                    out.setdefault(method, {}).setdefault(quantity, {})[seed] = float(x)
    ranks = sorted(int(m.split("=")[1]) for m in out if m != FULL)
    order = ([FULL] if FULL in out else []) + [f"LoRA r={r}" for r in ranks]
    return {m: out[m] for m in order}


def _stats(by_seed: dict[int, float]) -> Stats:
    seeds = tuple(sorted(by_seed))
    return Stats(seeds, tuple(by_seed[s] for s in seeds))


def _mean_sd(by_seed: dict[int, float] | None, k: float = 1.0, metric: str = "") -> str:
    if not by_seed:
        return "-"
    x = np.asarray(list(by_seed.values())) * k
    sd = f" ± {num(float(x.std(ddof=1)), metric)}" if x.size > 1 else ""
    return f"{num(float(x.mean()), metric)}{sd}"


def versus_full_over_seeds(analysis: dict[str, Any]) -> list[Block]:
    """The table and verdicts ([] below MIN_SEEDS evaluated full fine-tuning runs)."""
    methods = per_method(analysis)
    if len((methods.get(FULL) or {}).get("value", {})) < MIN_SEEDS:
        return []
    entry = next(e for e in analysis["versus_full"] if (e.get("model_evals") or {}).get("runs"))
    first = next(iter(entry["model_evals"]["runs"].values()))
    metric, k = first["metric"], scale(first["metric"])
    measure = entry["model_evals"].get("forgetting_measure", "forgetting")
    epsilon = entry["epsilons"][intruder_column(entry["epsilons"])]
    rows = [
        [
            method,
            str(len(q["value"])),
            _mean_sd(q["value"], k, metric),
            _mean_sd(q["forgetting"]),
            _mean_sd(q.get("rank_for_90")),
            _mean_sd(q["intruders"]),
            _mean_sd(q.get("norm_ratio")),
        ]
        for method, q in methods.items()
    ]
    table = Table(
        [
            "method",
            "seeds",
            f"{unit(metric)}, mean ± sd",
            "forgetting",
            "truncation rank for 90% of the gain",
            f"intruders at epsilon {epsilon} (median over matrices)",
            "||B·A||_F / ||dW_full||_F (median over matrices)",
        ],
        rows,
        caption=f"Over seeds (mean ± sample sd). Forgetting: {measure}, higher = more lost.",
    )
    verdicts = []
    full = methods[FULL]
    for method, q in methods.items():
        if method == FULL:
            continue
        for quantity, k_, what in (
            ("value", k, diff_unit(metric)),
            ("forgetting", 1.0, ""),
        ):
            c = compare(_stats(full[quantity]), _stats(q[quantity]))
            if c is not None:
                label = metric if quantity == "value" else "forgetting"
                verdicts.append([label, verdict(FULL, method, c, k_, what)])
    blocks: list[Block] = [table]
    if verdicts:
        blocks.append(
            Table(["quantity", "verdict"], verdicts, "Each LoRA rank against full fine-tuning")
        )
    return blocks


__all__ = ["norm_ratio", "per_method", "versus_full_over_seeds"]

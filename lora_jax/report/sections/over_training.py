"""The "Rank measurements over training" section: the `dynamics` block of `analysis.json`.

For every run that kept two or more checkpoints: how phi(1, 1) between runs (across ranks and
seeds), the amplification of Table 7, ||dW|| / ||W|| and the effective rank of dW moved from
the first kept step to the last, averaged over layers per target, and the figure of the whole
curves. Nothing is recomputed here (`lora_jax.analysis.dynamics` measured it).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lora_jax.analysis.curves import run_labels, target_means
from lora_jax.report.render.document import Block, Table
from lora_jax.report.sections.rank_analysis import figure


def _moved(curve, fmt: str) -> str:
    """`first → last` of a curve (— where undefined)."""
    ends = [curve[0], curve[-1]] if len(curve) else []
    return " → ".join("—" if not math.isfinite(v) else format(v, fmt) for v in ends) or "—"


def _pairs_table(dynamics: dict[str, Any]) -> Table:
    rows = []
    for kind, pairs in (("ranks", dynamics["rank_pairs"]), ("seeds", dynamics["seed_pairs"])):
        for p in pairs:
            label = (
                f"r={p['ranks'][0]} vs r={p['ranks'][1]} (seed {p['seeds'][0]})"
                if kind == "ranks"
                else f"seed {p['seeds'][0]} vs {p['seeds'][1]} (r={p['ranks'][0]})"
            )
            steps = f"{p['steps'][0]} → {p['steps'][-1]}" if p["steps"] else "none shared"
            random = {m.split("/")[1]: v for m, v in p["random_phi11"].items()}  # 1/n
            for target, curve in target_means(p["phi11"]).items():
                rows.append(
                    [
                        label,
                        f"W{target}",
                        steps,
                        _moved(curve, ".3f"),
                        _moved(target_means(p["phi_mean"])[target], ".3f"),
                        f"{random[target]:.3f}",
                    ]
                )
    columns = ["pair", "matrix", "steps", "phi(1,1)", "mean phi", "random phi(1,1)"]
    return Table(columns, rows, caption="phi between runs, first → last shared step")


def _runs_table(dynamics: dict[str, Any]) -> Table:
    labels = run_labels(dynamics["runs"])
    rows = []
    for name, entry in dynamics["runs"].items():
        curves = {
            k: target_means({m: c[k] for m, c in entry["adapters"].items()})
            for k in ("dw_over_w", "amplification", "effective_rank")
        }
        for target in curves["dw_over_w"]:
            rows.append(
                [
                    labels[name],
                    f"W{target}",
                    ", ".join(str(s) for s in entry["steps"]),
                    _moved(curves["dw_over_w"][target], ".4f"),
                    _moved(curves["amplification"][target], ".2f"),
                    _moved(curves["effective_rank"][target], ".2f"),
                ]
            )
    columns = ["run", "matrix", "kept steps", "||dW||/||W||", "amplification", "effective rank"]
    return Table(columns, rows, caption="Per run, first → last kept step (mean over layers)")


def dynamics_section(analysis: dict[str, Any], folder: Path) -> list[Block]:
    """The blocks of the section; [] when the analysis has no `dynamics` (no run kept two
    checkpoints)."""
    dynamics = analysis.get("dynamics")
    if not dynamics:
        return []
    unshared = [p for p in dynamics["rank_pairs"] + dynamics["seed_pairs"] if p["unshared_steps"]]
    blocks: list[Block] = [
        "The rank measurements at every checkpoint the runs kept (`trainer.keep_checkpoints` "
        "newest, every `trainer.checkpoint_every` steps or once per epoch with "
        "`trainer.epochs`), read from the checkpoint files: phi(1,1) between the A factors "
        "of runs that differ only in rank or only in seed, Table 7's amplification "
        "||dW|| / ||U^T W V||, ||dW|| / ||W|| and the effective rank of dW, each averaged over "
        "layers per target. The last kept step is the end of training: its numbers are the "
        "rank analysis's above."
    ]
    if unshared:
        blocks.append(
            f"{len(unshared)} pair(s) of runs kept different steps (another schedule or "
            "checkpoint cadence): phi is compared at the steps both kept only."
        )
    if dynamics.get("without_checkpoints"):
        blocks.append(
            "Runs without checkpoints (left out): "
            + ", ".join(f"`{n}`" for n in dynamics["without_checkpoints"])
            + "."
        )
    if dynamics["rank_pairs"] or dynamics["seed_pairs"]:
        blocks.append(_pairs_table(dynamics))
    blocks.append(_runs_table(dynamics))
    fig = figure(folder, dynamics.get("figure"), "Rank measurements against the training step")
    return [*blocks, *([fig] if fig else [])]

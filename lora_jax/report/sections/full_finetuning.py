"""LoRA against full fine-tuning, as report blocks and figures, from `analysis.json`.

Reads the `versus_full` entries that `lora_jax.analysis.versus_full` wrote: per target type
(medians over layers), the energy ranks of the full update beside a random matrix of the
same shape and norm, the intruder counts of each LoRA rank beside full fine-tuning's, and
phi between their top directions; where the models were evaluated (`model_evals`), the
truncation curves, the forgetting measure (an encoder's lost similarity order, a decoder's LM
loss increase on held-out text) and the intruder intervention. Figures: cumulative
energy against k (full, random, each LoRA rank), intruders against epsilon (each LoRA rank,
full as the reference), the task metric against the truncation rank k, and the task metric
against forgetting.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot

import matplotlib.pyplot as plt
import numpy as np

from lora_jax.analysis.intruders import EPSILON
from lora_jax.report.paper import weight_label
from lora_jax.report.render.document import Block, Figure, Table


def intruder_column(epsilons: list[float]) -> int:
    """Where the report reads an intruder curve: at PEFT's epsilon
    (`analysis.intruders.EPSILON`) when the curve has it, else at its middle epsilon."""
    return epsilons.index(EPSILON) if EPSILON in epsilons else len(epsilons) // 2


def _by_target(matrices: dict[str, Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = defaultdict(list)
    for name, m in matrices.items():
        out[name.split("/")[1]].append(m)
    return dict(sorted(out.items(), key=lambda kv: (kv[0] not in "qkvo", kv[0])))


def _median(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    return f"{np.median(values):.3g}" if values else "—"


def _cumulative(s: list[float]) -> np.ndarray:
    e = np.square(np.asarray(s, float))
    return np.cumsum(e) / e.sum() if e.sum() > 0 else np.zeros_like(e)


def _lora_energy(entry: dict[str, Any], analysis: dict[str, Any]) -> dict[int, dict[str, list]]:
    """{rank: {target: [singular values per layer]}} of the LoRA peers, from the runs' spectra."""
    runs = analysis.get("runs", {})
    out: dict[int, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for name, peer in entry["lora"].items():
        for matrix, m in runs.get(name, {}).get("adapters", {}).items():
            out[peer["rank"]][matrix.split("/")[1]].append(m["singular_values"])
    return out


def _legend(fig, axes) -> None:
    """One legend for the figure: every line any panel drew (not every panel has each rank)."""
    handles = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, h)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=len(handles), fontsize=7)
    fig.tight_layout(rect=(0, 0.08, 1, 1))


def _save(fig, out: Path, kind: str, entry: dict[str, Any]) -> Path:
    """Write `fig` as `out/versus_full_<kind>_<run>.png` and free it; returns the path."""
    path = out / f"versus_full_{kind}_{entry['run'][:40]}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _figures(entry: dict[str, Any], analysis: dict[str, Any], out: Path) -> list[Figure]:
    targets = _by_target(entry["matrices"])
    lora = _lora_energy(entry, analysis)
    ranks = sorted(lora)
    fig, axes = plt.subplots(1, len(targets), figsize=(3.2 * len(targets), 3.2), squeeze=False)
    for ax, (target, ms) in zip(axes[0], targets.items(), strict=True):
        full = np.median([_cumulative(m["singular_values"]) for m in ms], axis=0)
        ks = np.arange(1, len(full) + 1)
        ax.plot(ks, full, color="black", label="full FT")
        rand = np.median([_cumulative(m["random"]["singular_values"]) for m in ms], axis=0)
        ax.plot(ks, rand, color="grey", ls="--", label="random, same shape and norm")
        for r in ranks:
            curves = [_cumulative(s) for s in lora[r].get(target, [])]
            if curves:
                c = np.median(curves, axis=0)
                ax.plot(np.arange(1, len(c) + 1), c, marker="o", ms=3, label=f"LoRA r={r}")
        ax.axhline(0.9, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_title(weight_label((target,)) or target, fontsize=9)
        ax.set_xlabel("k (top singular values)")
    axes[0][0].set_ylabel("share of ||dW||_F^2")
    _legend(fig, axes[0])
    energy = _save(fig, out, "energy", entry)

    eps = entry["epsilons"]
    fig, axes = plt.subplots(1, len(targets), figsize=(3.2 * len(targets), 3.2), squeeze=False)
    for ax, (target, ms) in zip(axes[0], targets.items(), strict=True):
        ax.plot(eps, np.mean([m["intruders"] for m in ms], axis=0), color="black", label="full FT")
        for peer in sorted(entry["lora"].values(), key=lambda p: p["rank"]):
            curves = [
                m["intruders"] for k, m in peer["matrices"].items() if k.endswith(f"/{target}")
            ]
            if curves:
                ax.plot(
                    eps, np.mean(curves, axis=0), marker="o", ms=3, label=f"LoRA r={peer['rank']}"
                )
        ax.set_title(weight_label((target,)) or target, fontsize=9)
        ax.set_xlabel("epsilon")
    axes[0][0].set_ylabel(f"intruders of the top {entry['top_k']}")
    _legend(fig, axes[0])
    intruders = _save(fig, out, "intruders", entry)
    return [
        Figure(
            energy, "Cumulative energy of dW against k: full fine-tuning, LoRA (median over layers)"
        ),
        Figure(
            intruders,
            "Intruder dimensions against epsilon: LoRA ranks, full fine-tuning as reference",
        ),
    ]


def _label(e: dict[str, Any]) -> str:
    return "full FT" if e["full_finetune"] else f"LoRA r={e['rank']}"


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.3g}"


def _forgetting(e: dict[str, Any], key: str = "forgetting") -> Any:
    """`e[key]`; an analysis.json written before decoders were measured has only the
    encoder's `similarity_kept`, whose forgetting is 1 - it."""
    if key in e:
        return e[key]
    kept = e.get("similarity_kept")
    return None if kept is None else [1 - x for x in kept] if isinstance(kept, list) else 1 - kept


def _measure(evals: dict[str, Any]) -> tuple[str, str, str]:
    """(the measure's own column key, its header, the forgetting table's caption)."""
    text = evals["forget_text"]
    if any("held_out_loss" in e for e in evals["runs"].values()):
        pre = next(iter(evals["runs"].values()))["pretrained_held_out_loss"]
        return (
            "held_out_loss",
            "held-out LM loss",
            f"Forgetting: the increase of the LM loss (mean next-token cross-entropy, nats per "
            f"token) on {text} sentences over the pretrained model's {pre:.4g} (0 = nothing "
            "lost); and the intruder intervention",
        )
    return (
        "similarity_kept",
        "similarity kept (Spearman)",
        f"Forgetting: 1 - the Spearman correlation of the pairwise cosine similarities of {text} "
        "sentences' mean-pooled embeddings, fine-tuned against pretrained (0 = nothing lost); "
        "and the intruder intervention",
    )


def _eval_tables(evals: dict[str, Any]) -> list[Block]:
    runs = sorted(evals["runs"].values(), key=lambda e: (e["full_finetune"], e["rank"]))
    metric = runs[0]["metric"]
    curves = [e for e in runs if e.get("truncation")]
    ks = sorted({k for e in curves for k in e["truncation"]["ks"]})
    truncation = Table(
        ["update", *(f"k={k}" for k in ks), "k for 90% of the gain"],
        [
            [
                _label(e),
                *(
                    _num(
                        dict(
                            zip(e["truncation"]["ks"], e["truncation"]["values"], strict=True)
                        ).get(k)
                    )
                    for k in ks
                ),
                _num(e["truncation"]["rank_for_90"]),
            ]
            for e in curves
        ],
        caption=f"Truncation curve: {metric} with W_0 + SVD_k(dW) in every adapted matrix "
        "(k = 0: the run's model with every matrix at W_0)"
        + (
            f"; {metric} is the eval split's LM loss (lower is better; no decoding)"
            if runs[0].get("lower_is_better")
            else ""
        ),
    )
    lambdas = runs[0]["intervention"]["lambdas"]
    own, header, caption = _measure(evals)
    rows = []
    for e in runs:
        iv = e["intervention"]
        scaled = [
            f"{_num(v)} / {_num(lost)}"
            for v, lost in zip(iv["values"] or [], _forgetting(iv) or [], strict=True)
        ] or ["no intruder"] * len(lambdas)
        rows.append(
            [
                _label(e),
                _num(e["value"]),
                _num(e[own]),
                _num(_forgetting(e)),
                str(iv["intruders"]),
                *scaled,
            ]
        )
    forgetting = Table(
        [
            "update",
            metric,
            header,
            "forgetting",
            f"intruders (top {runs[0]['intervention']['top_k']}, eps {runs[0]['intervention']['epsilon']})",
            *(f"intruders x {lam}: {metric} / forgetting" for lam in lambdas),
        ],
        rows,
        caption=caption,
    )
    return [truncation, forgetting]


def _eval_figures(entry: dict[str, Any], out: Path) -> list[Figure]:
    runs = sorted(
        entry["model_evals"]["runs"].values(), key=lambda e: (e["full_finetune"], e["rank"])
    )
    metric = runs[0]["metric"]
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    for e in runs:
        curve = e.get("truncation")
        if curve:
            (line,) = ax.plot(curve["ks"], curve["values"], marker="o", ms=3, label=_label(e))
            if curve["rank_for_90"] is not None:
                ax.axvline(curve["rank_for_90"], color=line.get_color(), ls=":", lw=0.8)
    ax.set_xscale("symlog", base=2, linthresh=1)
    ks = sorted({k for e in runs if e.get("truncation") for k in e["truncation"]["ks"]})
    ax.set_xticks(ks, [str(k) for k in ks], fontsize=7)
    ax.set_xlim(-0.1, max(ks) * 1.2)
    ax.set_xlabel("k (rank kept in every matrix; dotted: 90% of the gain)")
    ax.set_ylabel(metric)
    ax.legend(fontsize=7)
    fig.tight_layout()
    trunc = _save(fig, out, "truncation", entry)

    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    for e in runs:
        (dot,) = ax.plot(_forgetting(e), e["value"], "o", label=_label(e))
        curve = e.get("truncation")
        if curve:
            ax.plot(_forgetting(curve), curve["values"], color=dot.get_color(), lw=0.8, alpha=0.5)
        iv = e["intervention"]
        if iv["values"]:
            ax.plot(_forgetting(iv), iv["values"], "x", color=dot.get_color())
    decoder = any("held_out_loss" in e for e in runs)
    ax.set_xlabel(
        "forgetting: held-out LM loss - pretrained's"
        if decoder
        else "forgetting: 1 - Spearman of pairwise similarities"
    )
    ax.set_ylabel(metric)
    ax.legend(fontsize=7)
    fig.tight_layout()
    forget = _save(fig, out, "forgetting", entry)
    return [
        Figure(trunc, f"{metric} against the rank k kept in every matrix (W_0 + SVD_k(dW))"),
        Figure(
            forget,
            f"{metric} against forgetting: each run (dot), along its truncation curve (line), "
            "with its intruders scaled down (x)",
        ),
    ]


def _model_evals(entry: dict[str, Any], figures: Path) -> list[Block]:
    evals = entry.get("model_evals")
    if not evals:
        return []
    if "skipped" in evals:
        return [f"Model evaluations skipped: {evals['skipped']}"]
    return [*_eval_tables(evals), *_eval_figures(entry, figures)]


def versus_full(analysis: dict[str, Any], figures: Path) -> list[Block]:
    """The blocks of the "LoRA vs full fine-tuning" section ([] when no full FT run)."""
    blocks: list[Block] = []
    for entry in analysis.get("versus_full", []):
        targets = _by_target(entry["matrices"])
        energy = Table(
            [
                "matrix",
                "full: rank for 50% / 90% / 99% energy",
                "random: 50 / 90 / 99%",
                "full: effective rank",
                "random: effective rank",
                "min(in, out)",
            ],
            [
                [
                    weight_label((t,)) or t,
                    " / ".join(_median([m[f"energy_rank_{q}"] for m in ms]) for q in (50, 90, 99)),
                    " / ".join(
                        _median([m["random"][f"energy_rank_{q}"] for m in ms]) for q in (50, 90, 99)
                    ),
                    _median([m["effective_rank"] for m in ms]),
                    _median([m["random"]["effective_rank"] for m in ms]),
                    str(len(ms[0]["singular_values"])),
                ]
                for t, ms in targets.items()
            ],
            caption="Rank of the full fine-tuning update (median over layers)",
        )
        eps = entry["epsilons"]
        at = intruder_column(eps)
        rows = [
            [
                "full FT",
                *(_median([m["intruders"][at] for m in ms]) for ms in targets.values()),
                "—",
            ]
        ]
        for _, peer in sorted(entry["lora"].items(), key=lambda kv: kv[1]["rank"]):
            per = _by_target(peer["matrices"])
            cells = [_median([m["intruders"][at] for m in per.get(t, [])]) for t in targets]
            phi = [m["phi_input"][0][0] for ms in per.values() for m in ms]
            rows.append([f"LoRA r={peer['rank']}", *cells, _median(phi)])
        intruders = Table(
            [
                "update",
                *(weight_label((t,)) or t for t in targets),
                "phi(1,1) with full FT's top input direction",
            ],
            rows,
            caption=f"Intruder dimensions at epsilon = {eps[at]} among the top {entry['top_k']} (median over layers)",
        )
        blocks += [
            f"Full fine-tuning run `{entry['run']}` against the LoRA runs of the same model, task and seed.",
            energy,
            intruders,
            *_figures(entry, analysis, figures),
            *_model_evals(entry, figures),
        ]
    return blocks

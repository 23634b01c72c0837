"""Sections on how runs trained, for the questions that came after the paper:

- **learning rate against rank** ("LoRA Without Regret", 2025: the best LoRA rate is about 10x
  full fine-tuning's and nearly independent of rank), when `optim.lr` varies in the sweep;
- **rsLoRA** (Kalajdzievski 2023: with alpha/r the update, and the adapter's gradient, shrink
  as r grows; alpha/sqrt(r) keeps them), when `scaling` varies.

Both read each run's `history.jsonl` (train loss and gradient norms) and its metrics.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot

import matplotlib.pyplot as plt
import numpy as np

from lora_jax.report.cells import Cell
from lora_jax.report.render.document import Block, Figure, Table
from lora_jax.report.render.format import MISSING, diff_unit, num, scale, unit
from lora_jax.report.sections.our_setup import value_point
from lora_jax.report.seed_stats import LOWER_IS_BETTER, compare, verdict
from lora_jax.runs.files import read_jsonl

LR = "optim.lr"
# Adapter-only gradient norm when the run logged it, else the norm of every trainable leaf.
GRAD_KEYS = ("train/grad_norm_lora", "train/grad_norm")
EARLY_STEPS = 3  # logged steps averaged for "the gradient at the first steps"
# One batch's loss is noisy (a 200-step run logs one batch every 10 steps): the tables give the
# mean over the last quarter of the logged steps, the figures a trailing mean.
TAIL = 0.25
SMOOTH = 0.1  # the trailing mean's window, as a fraction of the logged steps


def curve(cell: Cell, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, mean over the cell's seeds) of a logged scalar; steps every seed logged."""
    per_seed = []
    for run in cell.runs:
        path = run.folder.history
        rows = read_jsonl(path, contains=key) if path.exists() else []
        per_seed.append({r["step"]: r[key] for r in rows if r.get(key) is not None})
    steps = sorted(set.intersection(*(set(p) for p in per_seed))) if per_seed else []
    values = np.array([[p[s] for s in steps] for p in per_seed], float)
    return np.array(steps), values.mean(axis=0) if steps else np.array([])


def tail_mean(values: np.ndarray) -> float | None:
    """Mean of the last `TAIL` of `values` (at least one)."""
    n = len(values)
    return float(np.mean(values[-max(1, int(np.ceil(n * TAIL))) :])) if n else None


def smoothed(values: np.ndarray) -> tuple[np.ndarray, int]:
    """The trailing mean of `values` over a window of `SMOOTH` of them (shorter at the start),
    and the window."""
    window = max(1, int(len(values) * SMOOTH))
    sums = np.cumsum(np.insert(np.asarray(values, float), 0, 0.0))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(0, ends - window)
    return (sums[ends] - sums[starts]) / (ends - starts), window


def _loss_text(loss: np.ndarray) -> str:
    """A curve's train loss for a table: its mean over the last `TAIL` of the logged steps."""
    tail = tail_mean(loss)
    return f"{tail:.4f}" if tail is not None else MISSING


def _mean(cell: Cell, at: str) -> float | None:
    values = cell.stats(at).values
    return float(np.mean(values)) if values else None


def _by_seed(cell: Cell, at: str) -> dict[int, float]:
    st = cell.stats(at)
    return dict(zip(st.seeds, st.values, strict=True))


def _mean_on(values: dict[int, float], seeds: set[int]) -> float:
    """The mean of a rate's `values` (seed -> metric) over `seeds`; over all of them if empty."""
    return float(np.mean([values[s] for s in (seeds or values)]))


def best_rate(values: dict[float, dict[int, float]], pick=max) -> float:
    """The rate that is at least as good as every other on the seeds the two share (a seed moves
    every rate alike, so rates run on different seeds compare on their common ones); the best
    mean over all seeds when no rate is."""

    def at_least_as_good(lr: float, other: float) -> bool:
        shared = set(values[lr]) & set(values[other])
        a, b = _mean_on(values[lr], shared), _mean_on(values[other], shared)
        return pick(a, b) == a

    for lr in sorted(values):
        if all(at_least_as_good(lr, other) for other in values if other != lr):
            return lr
    return pick(values, key=lambda lr: _mean_on(values[lr], set()))


def _method(cell: Cell) -> str:
    return "full fine-tuning" if cell.full_finetune else f"r={cell.rank}"


def _method_key(cell: Cell) -> tuple:
    return (cell.full_finetune, cell.rank)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def varies_within_a_method(cells: list[Cell], axis: str) -> bool:
    """Whether some method (a rank, or full fine-tuning) was trained at several `axis` values."""
    seen: dict[tuple, set] = {}
    for c in cells:
        seen.setdefault(_method_key(c), set()).add(str(c.axes.get(axis)))
    return any(len(v) > 1 for v in seen.values())


def fitted_optimum(means: dict[float, float], pick=max) -> float | None:
    """The rate at the vertex of the parabola, in log10(lr), through the best grid point and its
    two neighbours: a finer estimate of the optimum than a half-decade grid. None when the best
    point is at the grid's edge (the optimum may lie beyond it)."""
    lrs = sorted(means)
    i = lrs.index(pick(means, key=means.get))
    if i in (0, len(lrs) - 1):
        return None
    a, b, _ = np.polyfit(np.log10(lrs[i - 1 : i + 2]), [means[lr] for lr in lrs[i - 1 : i + 2]], 2)
    bends = a < 0 if pick is max else a > 0
    return float(10 ** (-b / (2 * a))) if bends else None


def _around(values: dict[float, dict[int, float]], best: float) -> dict[float, float] | None:
    """The best rate and its two neighbours, each the mean over the seeds all three share (over
    all its seeds if they share none); None at the grid's edge."""
    lrs = sorted(values)
    i = lrs.index(best)
    if i in (0, len(lrs) - 1):
        return None
    trio = lrs[i - 1 : i + 2]
    shared = set.intersection(*(set(values[lr]) for lr in trio))
    return {lr: _mean_on(values[lr], shared) for lr in trio}


def learning_rate_section(cells: list[Cell], fig_dir: Path) -> list[Block]:
    """The metric over the learning-rate grid per rank (and full fine-tuning), each method's
    best rate, and the loss curves at the best rates."""
    at = value_point(cells)
    metric = cells[0].main_metric
    k = scale(metric)
    lrs = sorted({c.axes[LR] for c in cells})
    methods: dict[tuple, dict[float, Cell]] = {}
    for c in cells:
        methods.setdefault(_method_key(c), {})[c.axes[LR]] = c
    pick = min if metric in LOWER_IS_BETTER else max
    rows, means_of, best, fitted, best_loss = [], {}, {}, {}, {}
    for key in sorted(methods):
        by_lr = methods[key]
        values = {lr: v for lr, c in by_lr.items() if (v := _by_seed(c, at))}
        means = {lr: _mean(by_lr[lr], at) for lr in values}
        means_of[key] = means
        label = _method(next(iter(by_lr.values())))
        uneven = len({len(v) for v in values.values()}) > 1  # then each mean says its seeds
        cells_text = [
            num(means[lr] * k, metric) + (f" (n={len(values[lr])})" if uneven else "")
            if lr in means
            else MISSING
            for lr in lrs
        ]
        at_best = [MISSING] * 3
        if means:
            best[key] = best_rate(values, pick)
            trio = _around(values, best[key])
            fitted[key] = fitted_optimum(trio, pick) if trio else None
            best_loss[key] = curve(by_lr[best[key]], "train/loss")  # (steps, loss)
            fit = f"{fitted[key]:.2g}" if fitted[key] else MISSING
            at_best = [f"{best[key]:g}", fit, _loss_text(best_loss[key][1])]
        rows.append([label, *cells_text, *at_best])
    blocks: list[Block] = [
        f"{unit(metric)} at the {'best evaluation step' if at == 'best' else 'end'}, mean over "
        "seeds (n: how many, where a method's rates had different seeds), for each learning "
        "rate; then each method's best rate (at least as good as every other rate on the seeds "
        "the two share), the optimum of a parabola in log(lr) through it and its two neighbours "
        "(means over the seeds all three share; none at the grid's edge), and the train loss at "
        f"the best rate (mean over the last {TAIL:.0%} of the logged steps and seeds).",
        Table(
            ["method", *(f"lr={lr:g}" for lr in lrs), "best lr", "fitted", "train loss at best"],
            rows,
        ),
    ]
    full = [key for key in best if key[0]]
    lora = [key for key in best if not key[0] and key[1] > 0]
    if full and lora:
        ratios = ", ".join(f"{best[key] / best[full[0]]:.2g}x" for key in lora)
        text = f"Best LoRA rate over best full fine-tuning rate, by rank: {ratios}"
        if fitted[full[0]] and all(fitted[key] for key in lora):
            fits = ", ".join(f"{fitted[key] / fitted[full[0]]:.2g}x" for key in lora)
            text += f" (fitted optima: {fits})"
        blocks.append(f"{text}. The 2025 finding: about 10x, nearly the same for every rank.")
        blocks += _at_best_rates(methods, best, full[0], lora, at)
    fig, (ax_lr, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    window = 1
    for key in sorted(methods):
        means = means_of[key]
        xs = sorted(means)
        style = ":" if key[0] else "-"
        label = _method(next(iter(methods[key].values())))
        ax_lr.plot(xs, [means[x] * k for x in xs], style, marker="o", label=label)
        if key in best:
            steps, loss = best_loss[key]
            loss, window = smoothed(loss)
            ax_loss.plot(steps, loss, style, label=f"{label}, lr={best[key]:g}")
    ax_lr.set_xscale("log")
    ax_lr.set(xlabel="learning rate", ylabel=unit(metric), title="metric vs learning rate")
    ax_loss.set(xlabel="step", ylabel=_loss_label(window), title="at each best rate")
    for ax in (ax_lr, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    path = _save(fig, fig_dir / "learning_rate_vs_rank.png")
    blocks.append(Figure(path, "Metric against learning rate per rank; loss at each best rate"))
    return blocks


def _at_best_rates(
    methods: dict[tuple, dict[float, Cell]], best: dict, full: tuple, lora: list[tuple], at: str
) -> list[Block]:
    """Each rank at its best rate against full fine-tuning at its own, over the seeds both have
    (`seed_stats.compare`); nothing when no pair has enough seeds."""
    ref = methods[full][best[full]]
    metric, ref_text = ref.main_metric, f"full FT at lr={best[full]:g}"
    lines = []
    for key in lora:
        cell = methods[key][best[key]]
        c = compare(ref.stats(at), cell.stats(at))
        if c is not None:
            what = f"{_method(cell)} at lr={best[key]:g}"
            lines.append(verdict(ref_text, what, c, scale(metric), diff_unit(metric)) + ".")
    if not lines:
        return []
    return [
        "**At each method's best rate** (the best rate was picked on these seeds, which favours "
        "every method alike): " + " ".join(lines)
    ]


def scaling_section(cells: list[Cell], fig_dir: Path) -> list[Block]:
    """alpha/r against alpha/sqrt(r) over ranks: the metric, the final train loss and the
    gradient norm at the first logged steps, and the learning curves."""
    at = value_point(cells)
    lora = sorted((c for c in cells if c.rank > 0 and not c.full_finetune), key=_method_key)
    metric = cells[0].main_metric
    grad_key = next((g for g in GRAD_KEYS if any(len(curve(c, g)[0]) for c in lora)), GRAD_KEYS[-1])
    rows: list[list[str]] = []
    early: dict[int, float | None] = {}  # id(cell) -> the early gradient norm, read once
    fig, (ax_loss, ax_grad) = plt.subplots(1, 2, figsize=(11, 4))
    scalings = sorted({c.axes["scaling"] for c in lora})
    window = 1
    for c in lora:
        steps, loss = curve(c, "train/loss")
        early[id(c)], mean = _first(c, grad_key), _mean(c, at)
        rows.append(
            [
                str(c.rank),
                c.axes["scaling"],
                num(mean * scale(metric), metric) if mean is not None else MISSING,
                _loss_text(loss),
                f"{early[id(c)]:.3g}" if early[id(c)] is not None else MISSING,
            ]
        )
        style = "-" if c.axes["scaling"] == scalings[0] else "--"
        loss, window = smoothed(loss)
        ax_loss.plot(steps, loss, style, label=f"r={c.rank}, {c.axes['scaling']}")
    for s in scalings:
        pts = [(c.rank, early[id(c)]) for c in lora if c.axes["scaling"] == s]
        pts = [(r, g) for r, g in pts if g is not None]
        if pts:
            ax_grad.plot(*zip(*pts, strict=True), marker="o", label=s)
    ax_loss.set(xlabel="step", ylabel=_loss_label(window), title="learning curves")
    ax_grad.set_xscale("log", base=2)
    ax_grad.set_yscale("log")
    ax_grad.set(
        xlabel="LoRA rank r", ylabel=grad_key, title=f"gradient norm, first {EARLY_STEPS} logs"
    )
    for ax in (ax_loss, ax_grad):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    path = _save(fig, fig_dir / "scaling_vs_rank.png")
    columns = [
        "r",
        "scaling",
        unit(metric),
        f"train loss, last {TAIL:.0%} of steps",
        f"{grad_key}, first {EARLY_STEPS} logged steps",
    ]
    return [
        "rsLoRA's claim: with alpha/r the adapter's gradient shrinks as r grows, so higher "
        "ranks learn no more; alpha/sqrt(r) keeps the learning rate's effect independent of r.",
        Table(columns, rows),
        Figure(path, "Learning curves per rank and scaling; early gradient norm against rank"),
    ]


def _loss_label(window: int) -> str:
    return "train loss (mean over seeds" + (
        f", trailing mean of {window} logs)" if window > 1 else ")"
    )


def _first(cell: Cell, key: str) -> float | None:
    _, values = curve(cell, key)
    return float(np.mean(values[:EARLY_STEPS])) if len(values) else None

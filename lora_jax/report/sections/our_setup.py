"""What every comparison with the paper states first: our setup against the paper's.

Also the shared choices: which cells have LoRA, where the main metric is read (best step, or
the end for metrics measured once), and how cells that differ in other axes are named.
"""

from __future__ import annotations

from collections.abc import Callable

import lora_jax.report.paper as paper
from lora_jax.report.cells import Cell, cell_label, varying_axes
from lora_jax.report.render.format import unit


def lora_cells(cells: list[Cell]) -> list[Cell]:
    """The cells with LoRA adapters (not rank 0, not full fine-tuning)."""
    return [c for c in cells if c.rank > 0 and not c.full_finetune]


def value_point(cells: list[Cell]) -> str:
    """Where our main metric is read: the best evaluation step, or the end for BLEU-like metrics."""
    if any(c.end_only for c in cells):
        return "final"
    return "best"


def variant_label(cells: list[Cell], exclude: tuple[str, ...]) -> Callable[[Cell], str]:
    """A function naming what else differs between `cells` (beyond the `exclude` axes)."""
    keys = [k for k in varying_axes(cells) if k not in exclude]
    return lambda c: cell_label(c, keys)


def _models(runs: list) -> str:
    """Model names with their size (the smallest total, i.e. the base model with its head)."""
    sizes: dict[str, int] = {}
    for r in runs:
        name = r.metrics["model"]
        sizes[name] = min(sizes.get(name, r.metrics["total_params"]), r.metrics["total_params"])
    return ", ".join(f"`{name}` ({n / 1e6:.1f}M params)" for name, n in sizes.items())


def _where(cells: list[Cell]) -> str:
    runs = [r for c in cells for r in c.runs]
    split = ", ".join(
        dict.fromkeys((r.config.get("data") or {}).get("eval_split", "validation") for r in runs)
    )
    if value_point(cells) == "best":
        return f"{split} split, at the best evaluation step (the paper's best epoch)"
    return f"{split} split, at the end of training (evaluated once, so best = final)"


def ours_setup(cells: list[Cell]) -> str:
    """One line: our models (size), tasks, metric, where it is read, steps and seeds."""
    runs = [r for c in cells for r in c.runs]
    tasks = ", ".join(dict.fromkeys(f"`{r.metrics['task']}`" for r in runs))
    metrics = ", ".join(dict.fromkeys(unit(r.main_metric) for r in runs))
    steps = ", ".join(dict.fromkeys(str(r.metrics["steps"]) for r in runs))
    seeds = ", ".join(map(str, sorted({r.seed for r in runs})))
    return (
        f"Ours: {_models(runs)} on {tasks}; {metrics} on the {_where(cells)}; {steps} training "
        f"steps; seeds {seeds}; each cell is the median [min–max] over its seeds (n = runs)."
    )


def setup_lines(key: str, cells: list[Cell]) -> list[str]:
    """The paper's setup against ours, and whether values or only trends compare."""
    item = paper.ITEMS[key]
    runs = [r for c in cells for r in c.runs]
    tasks = ", ".join(dict.fromkeys(f"`{r.metrics['task']}`" for r in runs))
    same_model = all(r.metrics["model"] in item.same_models for r in runs)
    same_data = all(r.metrics["task"] in item.same_tasks for r in runs)
    if same_model and same_data:
        verdict = "Same model and data as the paper: values compare, up to the training budget."
    elif same_data:
        verdict = (
            "Same data, different model: compare trends (across ranks, weight types), not values."
        )
    else:
        verdict = (
            "Different model and data: compare trends (across ranks, weight types, seeds), "
            "not values."
        )
    return [
        f"**Paper:** {item.model}, {item.data}; {item.metric} (numbers: {item.provenance}). "
        f"**Ours:** {_models(runs)} on {tasks}. {verdict}"
    ]

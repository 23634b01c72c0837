"""Our cells beside the paper's tables 2, 3, 5, 6 and 18, laid out as in the paper.

Each builder returns report blocks: a line on the two setups (the paper's model and data
against ours, so a reader knows whether values or only trends compare), the table, and a
line on baselines. A cell we did not run reads "-"; ours read "median [min–max] (n=seeds)".
"""

from __future__ import annotations

from collections.abc import Callable

import lora_jax.report.paper as paper
from lora_jax.report.cells import Cell
from lora_jax.report.render.document import Block, Table
from lora_jax.report.render.format import MISSING, fmt_stats, num, paper_num, scale, unit
from lora_jax.report.sections.our_setup import lora_cells, setup_lines, value_point, variant_label

W = paper.weight_label


def _baselines(cells: list[Cell], at: str) -> list[str]:
    base = [c for c in cells if c.rank == 0 or c.full_finetune]
    if not base:
        return []
    parts = [
        f"{'full fine-tuning' if c.full_finetune else 'head only (r=0)'}: "
        f"{fmt_stats(c.stats(at), c.main_metric)}"
        for c in base
    ]
    return [f"Our baselines without LoRA: {'; '.join(parts)}."]


def _ranks(paper_ranks: tuple[int, ...], cells: list[Cell]) -> list[int]:
    return sorted(set(paper_ranks) | {c.rank for c in cells})


def _sets(paper_sets: tuple[paper.Targets, ...], cells: list[Cell]) -> list[paper.Targets]:
    return list(dict.fromkeys([*paper_sets, *(c.targets for c in cells)]))


def _by(cells: list[Cell], label: Callable[[Cell], str]) -> dict[str, list[Cell]]:
    groups: dict[str, list[Cell]] = {}
    for c in cells:
        groups.setdefault(label(c), []).append(c)
    return groups


def table6(cells: list[Cell]) -> list[Block]:
    """Rows: target sets (ours, then the paper's WikiSQL and MultiNLI); columns: ranks."""
    lora, at = lora_cells(cells), value_point(cells)
    ranks = _ranks(paper.TABLE6_RANKS, lora)
    label = variant_label(lora, ("rank", "targets"))
    rows = []
    for targets in _sets(paper.TABLE6_SETS, lora):
        mine = [c for c in lora if c.targets == targets]
        for name, group in (_by(mine, label) or {"": []}).items():
            by_rank = {c.rank: c for c in group}
            rows.append(
                [W(targets), f"ours {name}".strip()]
                + [
                    fmt_stats(by_rank[r].stats(at), by_rank[r].main_metric)
                    if r in by_rank
                    else MISSING
                    for r in ranks
                ]
            )
        for data, table in paper.TABLE6.items():
            rows.append(
                [W(targets), f"paper {data}"]
                + [paper_num(table.get(targets, {}).get(r)) for r in ranks]
            )
    metric = ", ".join(dict.fromkeys(unit(c.main_metric) for c in lora)) or "-"
    table = Table(
        ["weight type", "source", *(f"r={r}" for r in ranks)],
        rows,
        caption=f"Validation {metric} vs rank (paper: accuracy %)",
    )
    return [*setup_lines("table6", cells), table, *_baselines(cells, at)]


def _stats_row(label: str, by_set: dict, sets: list, at: str) -> list[str]:
    """One "ours" row of Table 5: the cell of each target set (or MISSING), with its unit."""
    main = next(iter(by_set.values())).main_metric
    return [label.strip(), unit(main)] + [
        fmt_stats(by_set[t].stats(at), by_set[t].main_metric) if t in by_set else MISSING
        for t in sets
    ]


def table5(cells: list[Cell]) -> list[Block]:
    """Columns: weight-type sets; rows: the paper's budget rank, its numbers, ours per rank."""
    lora, at = lora_cells(cells), value_point(cells)
    sets = _sets(paper.WEIGHT_SETS, lora)
    label = variant_label(lora, ("rank", "targets"))
    rows = [
        ["rank r (paper: 18M parameters)", ""]
        + [str(paper.TABLE5_RANK[t]) if t in paper.TABLE5_RANK else MISSING for t in sets]
    ]
    rows += [
        [f"paper {data}", "accuracy (%)"] + [paper_num(table.get(t)) for t in sets]
        for data, table in paper.TABLE5.items()
    ]
    for name, group in _by(lora, label).items():
        by_targets = _by(group, lambda c: W(c.targets))
        if all(len(g) == 1 for g in by_targets.values()):  # one rank per set, e.g. a fixed budget
            by_set = {c.targets: c for c in group}
            rows.append(
                [f"ours r {name}".strip(), ""]
                + [str(by_set[t].rank) if t in by_set else MISSING for t in sets]
            )
            rows.append(_stats_row(f"ours {name}", by_set, sets, at))
            continue
        for r in sorted({c.rank for c in group}):
            rows.append(
                _stats_row(
                    f"ours r={r} {name}", {c.targets: c for c in group if c.rank == r}, sets, at
                )
            )
    table = Table(["", "metric", *(W(t) for t in sets)], rows, caption="Which weights to adapt")
    return [*setup_lines("table5", cells), table, *_baselines(cells, at)]


def table18(cells: list[Cell]) -> list[Block]:
    """Columns: ranks 1..1024; rows: the paper's BLEU and validation loss, ours beside each."""
    lora, at = lora_cells(cells), value_point(cells)
    ranks = _ranks(paper.TABLE18_RANKS, lora)
    other = variant_label(lora, ("rank", "targets"))
    groups = _by(lora, lambda c: ", ".join(x for x in (W(c.targets), other(c)) if x))

    def ours(metric: str | None, where: str) -> list[list[str]]:
        out = []
        for name, group in groups.items():
            m = metric or group[0].main_metric
            by_rank = {c.rank: c.stats(where, m) for c in group}
            if all(s.n == 0 for s in by_rank.values()):
                continue
            out.append(
                [f"ours {name}".strip(), unit(m) + ("" if metric is None else f" ({where} step)")]
                + [fmt_stats(by_rank.get(r), m) for r in ranks]
            )
        return out

    rows = [
        ["paper (GPT-2 M, E2E test)", "BLEU"]
        + [paper_num(paper.TABLE18_BLEU.get(r), 2) for r in ranks]
    ]
    rows += ours(None, at)
    rows.append(
        ["paper (GPT-2 M, E2E)", "val loss"]
        + [paper_num(paper.TABLE18_VAL_LOSS.get(r), 2) for r in ranks]
    )
    rows += ours("loss", "best")
    table = Table(["", "metric", *(f"r={r}" for r in ranks)], rows, caption="Quality vs rank")
    return [*setup_lines("table18", cells), table, *_baselines(cells, at)]


def table3(cells: list[Cell]) -> list[Block]:
    """The paper's one E2E number (GPT-2 M, r=4 on Wq,Wv) beside each of our cells."""
    lora, at = lora_cells(cells), value_point(cells)
    p = paper.TABLE3
    rows = [
        [
            "paper",
            p["model"],
            "E2E NLG (test)",
            W(p["targets"]),
            str(p["rank"]),
            "BLEU",
            paper_num(p["bleu"]),
        ]
    ]
    for c in lora:
        split = c.runs[0].config.get("data", {}).get("eval_split", "validation")
        rows.append(
            [
                "ours",
                c.model,
                f"{c.task} ({split})",
                W(c.targets),
                str(c.rank),
                unit(c.main_metric),
                fmt_stats(c.stats(at), c.main_metric),
            ]
        )
    table = Table(["", "model", "data", "weights", "r", "metric", "value"], rows, caption="E2E NLG")
    return [*setup_lines("table3", cells), table]


def table2(cells: list[Cell]) -> list[Block]:
    """Rows: GLUE tasks (and ours that are not GLUE); columns: the paper's two models, ours."""
    at = value_point(cells)
    label = variant_label(cells, ("task",))

    def ours(task: str) -> str:
        mine = [c for c in cells if c.task == task]
        parts = [
            (f"{label(c)}: " if len(mine) > 1 else "") + fmt_stats(c.stats(at), c.main_metric)
            for c in mine
        ]
        return "; ".join(parts) or MISSING

    base, large = paper.TABLE2["RoBERTa-base"], paper.TABLE2["RoBERTa-large"]
    rows, medians = [], []
    for t in paper.GLUE_TASKS:
        metric = paper.GLUE_METRICS[t]
        rows.append(
            [
                paper.GLUE_NAMES[t],
                unit(metric),
                paper_num(base[t]),
                paper_num(large[t]),
                ours(f"glue_{t}"),
            ]
        )
        mine = [c for c in cells if c.task == f"glue_{t}"]
        if len(mine) == 1 and mine[0].stats(at).n:
            medians.append(mine[0].stats(at).median * scale(mine[0].main_metric))
        if t == "sst2" and any(c.task == "mr" for c in cells):
            rows.append(
                [
                    "MR (SST-2's sentences come from it)",
                    "accuracy (%)",
                    MISSING,
                    MISSING,
                    ours("mr"),
                ]
            )
    for task in dict.fromkeys(c.task for c in cells):
        if task != "mr" and task.removeprefix("glue_") not in paper.GLUE_TASKS:
            metric = next(c.main_metric for c in cells if c.task == task)
            rows.append([task, unit(metric), MISSING, MISSING, ours(task)])
    avg = (
        num(sum(medians) / len(medians), "accuracy")
        if len(medians) == len(paper.GLUE_TASKS)
        else MISSING
    )
    rows.append(["Avg.", "", paper_num(base["avg"]), paper_num(large["avg"]), avg])
    table = Table(
        ["task", "metric", "paper RoBERTa-base", "paper RoBERTa-large", "ours"],
        rows,
        caption="GLUE with LoRA (paper: r=8 on Wq,Wv)",
    )
    return [*setup_lines("table2", cells), table]


BUILDERS: dict[str, Callable[[list[Cell]], list[Block]]] = {
    "table2": table2,
    "table3": table3,
    "table5": table5,
    "table6": table6,
    "table18": table18,
}

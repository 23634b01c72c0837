"""Assemble a sweep's report (cells, metric vs rank, the rank analysis, the paper's tables).

`make_report` is the one report pipeline: the sweep's end and `experiments.report` both call
it. It checks its input first (folder, finished runs, paper item names), then writes
`report.md` and a self-contained `report.html` in the sweep folder (or `out`), and builds the
W&B Report (saved only when W&B is online). `make_adapters_report` does the same for the
analysis of `--adapters` folders (no runs: the rank analysis only).
"""

from __future__ import annotations

from pathlib import Path

import lora_jax.report.paper as paper
from lora_jax.report.cells import Cell, group_cells, varying_axes
from lora_jax.report.items import check_paper_items, paper_items
from lora_jax.report.render.document import (
    Document,
    Figure,
    ReportResult,
    Section,
    Table,
    write_document,
)
from lora_jax.report.render.format import fmt_stats, num, scale, unit
from lora_jax.report.sections import analysis_tables, compare, our_setup
from lora_jax.report.sections.audit_section import audit_sections
from lora_jax.report.sections.full_finetuning import versus_full
from lora_jax.report.sections.metric_figure import ERROR_BARS, metric_vs_rank
from lora_jax.report.sections.over_training import dynamics_section
from lora_jax.report.sections.rank_analysis import load_analysis, rank_analysis
from lora_jax.report.sections.rank_used import rank_growth_section
from lora_jax.report.sections.seed_section import seed_section
from lora_jax.report.sections.training_curves import (
    LR,
    learning_rate_section,
    scaling_section,
    varies_within_a_method,
)
from lora_jax.report.sections.versus_full_seeds import versus_full_over_seeds
from lora_jax.runs.layout import SweepFolder
from lora_jax.runs.record import RunRecord, read_runs

BUILDERS = {**compare.BUILDERS, **analysis_tables.BUILDERS}
# Settings worth a line in the setup paragraph when every run shares them.
_SETUP_KEYS = (
    "model",
    "task",
    "alpha",
    "scaling",
    "trainer.steps",
    "optim.lr",
    "data.batch_size",
    "data.max_len",
)


def _axis_value(cell: Cell, key: str) -> str:
    v = cell.axes.get(key)
    if key == "targets":
        return paper.weight_label(cell.targets) or "-"
    if key == "full_finetune":
        return "yes" if v else "no"
    return "-" if v is None else str(v)


def cells_table(cells: list[Cell]) -> Table:
    """Every cell: its varying axes, seeds, the main metric at the best and final steps."""
    axes = varying_axes(cells) or ["model"]
    rows = []
    for c in cells:
        m, s, best = c.main_metric, scale(c.main_metric), c.stats("best")
        per_seed = ", ".join(
            f"s{seed}: {num(v * s, m)}" for seed, v in zip(best.seeds, best.values, strict=True)
        )
        rows.append(
            [
                *(_axis_value(c, k) for k in axes),
                unit(m),
                fmt_stats(best, m),
                fmt_stats(c.stats("final"), m),
                per_seed,
            ]
        )
    columns = [*axes, "metric", "best step: median [min–max] (n)", "final step", "per seed (best)"]
    return Table(columns, rows)


def _setup(cells: list[Cell], runs: list[RunRecord], items: list[str], source: str) -> list[str]:
    shared = {k: cells[0].axes.get(k) for k in _SETUP_KEYS if k not in varying_axes(cells)}
    common = ", ".join(f"{k}={v}" for k, v in shared.items() if v is not None)
    varying = ", ".join(varying_axes(cells)) or "none"
    lines = [
        f"{len(runs)} finished runs in {len(cells)} cells (runs that differ only in `seed` share a "
        f"cell). Varying: {varying}. Shared: {common}.",
    ]
    lines.append(our_setup.ours_setup(cells))
    if any(c.end_only for c in cells):
        lines.append(
            "The main metric was evaluated only once, at the end of training (BLEU of decoded "
            "text is always), so its 'best step' value is the final one."
        )
    if items:
        lines.append(f"Paper items ({source}): {', '.join(items)}.")
    else:
        lines.append(
            "No paper table named (no `paper:` in the runs' config): pass `--paper table6` "
            f"(allowed: {', '.join(paper.ITEMS)}) to put the paper's numbers beside ours."
        )
    return lines


def build_document(
    sweep_dir: Path,
    runs: list[RunRecord],
    cells: list[Cell],
    items: list[str],
    out: Path,
    source: str,
) -> Document:
    """The report's content; draws the metric-vs-rank PNG into `out`."""
    figures = SweepFolder(out).figures
    plot = metric_vs_rank(cells, figures / "metric_vs_rank.png")
    sections = [
        Section("Setup", _setup(cells, runs, items, source)),
        Section(
            "Results by cell",
            [
                cells_table(cells),
                Figure(plot, f"Main metric vs LoRA rank: {ERROR_BARS}"),
            ],
        ),
        Section("Seed statistics", seed_section(cells)),
    ]
    if varies_within_a_method(cells, LR):
        blocks = learning_rate_section(cells, figures)
        sections.append(Section("Learning rate against rank", blocks))
    if varies_within_a_method(cells, "scaling"):
        blocks = scaling_section(cells, figures)
        sections.append(Section("Scaling: alpha/r against alpha/sqrt(r) (rsLoRA)", blocks))
    sections.append(Section("Rank analysis", rank_analysis(sweep_dir)))
    if SweepFolder(sweep_dir).audit_json.is_file():  # sweeps analysed before the audit: none
        sections.extend(audit_sections(sweep_dir, figures))
    analysis = load_analysis(sweep_dir) or {}
    if blocks := rank_growth_section(cells, analysis):
        sections.append(Section("The rank a LoRA uses", blocks))
    if analysis.get("dynamics"):
        blocks = dynamics_section(analysis, sweep_dir)
        sections.append(Section("Rank measurements over training", blocks))
    if analysis.get("versus_full"):
        blocks = versus_full_over_seeds(analysis) + versus_full(analysis, figures)
        sections.append(Section("LoRA vs full fine-tuning", blocks))
    for key in items:
        builder = BUILDERS[key]
        blocks = builder(cells, sweep_dir) if key in analysis_tables.BUILDERS else builder(cells)
        sections.append(Section(f"Beside the paper: {paper.ITEMS[key].title}", blocks))
    return Document(f"lora_jax report: sweep `{sweep_dir.name}`", sections)


def make_report(
    sweep_dir: str | Path,
    paper_override: list[str] | None = None,
    out: str | Path | None = None,
    use_wandb: bool = True,
    runs: list[RunRecord] | None = None,
) -> ReportResult:
    """Write `report.md` and `report.html` for a sweep folder and build its W&B Report.

    Args:
        sweep_dir: a folder made by `python -m experiments.sweep`.
        paper_override: paper items to compare with (e.g. ["table6"]); default: the runs'
            `paper` config.
        out: the output folder; default: the sweep folder (`report.md`, `report.html`).
        use_wandb: build (and, online, save) the W&B Report.
        runs: the folder's runs when the caller has read them (`read_runs`); default: read here.

    Raises:
        RunFolderError: missing folder or no finished run.
        ReportInputError: an unknown paper item.
    """
    sweep_dir = Path(sweep_dir)
    if paper_override:  # bad names fail before anything is read
        check_paper_items(
            [n for a in paper_override for n in a.split(",") if n.strip()], "from --paper"
        )
    runs = read_runs(sweep_dir) if runs is None else runs
    items = paper_items(runs, paper_override)
    source = "from --paper" if paper_override else "from the runs' `paper` config"
    out = Path(out) if out else sweep_dir
    SweepFolder(out).figures.mkdir(parents=True, exist_ok=True)
    cells = group_cells(runs)
    doc = build_document(sweep_dir, runs, cells, items, out, source)
    result = ReportResult(*write_document(doc, out), items)
    if use_wandb:
        from lora_jax.report.render import wandb_report as wb

        target = wb.wandb_target(runs, sweep_dir)
        metric_key = f"{our_setup.value_point(cells)}/{cells[0].main_metric}"
        media, spectra = wb.media_keys(sweep_dir), wb.spectrum_keys(runs)
        dynamics = wb.dynamics_keys(load_analysis(sweep_dir) or {})
        result.wandb_report, result.wandb_message = wb.publish_wandb_report(
            target,
            lambda entity: wb.build_wandb_report(
                doc, target, metric_key, media, spectra, entity, dynamics
            ),
            sweep_dir,
        )
    else:
        result.wandb_message = "W&B report skipped (--no-wandb)."
    return result

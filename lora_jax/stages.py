"""The stages after training, run in order by `finish_sweep`, each writing its own files once
and never rewriting another's:

    runs (run folders) -> summary  sweep_summary.json
                       -> analysis analysis.json, figures/     (lora_jax.analysis, pure)
                       -> evals    evals.json                  (lora_jax.evals, beside full FT)
                       -> audit    audit.json/.csv, rank_advice.json, advice/ (lora_jax.audit)
                       -> report   report.md, report.html, W&B (lora_jax.report)

The file names are `lora_jax.runs.layout`'s. The sweep's end (`lora_jax.sweep.finish`'s Hydra
callback) and `python -m experiments.analyze <sweep>` both run this one function.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from lora_jax.runs.files import write_atomic
from lora_jax.runs.layout import BASE_KERNELS_FILE, RunFolder, SweepFolder
from lora_jax.runs.record import RunRecord, read_runs

if TYPE_CHECKING:
    from lora_jax.analysis.lora_update import Update


def _saved_or_checkpoint(folder: Path, name: str, fix: str, use_saved: bool = True) -> Path:
    """W_0's file for an update in `folder`: the kernels a random-init run saved beside it, else
    the checkpoint of model `name` (registry name, hub id or path: `models.checkpoint_path`)."""
    from lora_jax import models

    saved = RunFolder(folder).base_kernels
    if use_saved and saved.is_file():
        return saved
    path = models.checkpoint_path(name)
    if path is None:
        raise FileNotFoundError(
            f"{folder}: base {name!r} is a random-init model and no {BASE_KERNELS_FILE} lies "
            f"there (runs made before it existed have none); {fix}."
        )
    return path


def run_base(run: RunRecord) -> Path:
    """`base_of` for the runs of a sweep: the checkpoint holding their W_0."""
    return _saved_or_checkpoint(run.run_dir, run.model, "rerun that run")


def adapter_base(base: str | None = None) -> Callable[[Update], Path]:
    """`base_of` for adapter folders: the checkpoint of `base` if given, else of the base the
    adapter names (ours: the model it was trained from; a random-init one's saved kernels)."""

    def base_of(update: Update) -> Path:
        adapter = update.adapter
        name = base or adapter.model or adapter.base
        fix = "pass --base <checkpoint>"
        return _saved_or_checkpoint(adapter.folder.parent, name, fix, use_saved=base is None)

    return base_of


def finish_sweep(
    sweep_dir: str | Path,
    analyze: bool = True,
    use_wandb: bool = True,
    model_evals: bool = True,
    eval_limit: int | None = None,
) -> Path:
    """Summarise, analyse and report a sweep folder; return the path of `report.html`.

    Writes `sweep_summary.json` first, so a failing analysis loses nothing, then
    `analysis.json` + `figures/` (`lora_jax.analysis.updates.analyze_runs`), then, where a full
    fine-tuning run is beside LoRA runs, `evals.json`, the model evaluations
    (`evals.model_evals`: truncation curves, forgetting, intruder intervention;
    `model_evals=False` computes none and keeps those of unchanged runs, `eval_limit` caps
    their eval examples), each run's audit and rank advice (`audit.json`, `rank_advice.json`,
    `advice/`), then the one report (`report.md`, `report.html`, the W&B report when online)
    through `make_report`. Each stage writes its own files once.
    """
    from lora_jax.report import make_report

    sweep_dir = Path(sweep_dir)
    runs = read_runs(sweep_dir)
    summary = json.dumps([r.summary() for r in runs], indent=2)
    write_atomic(SweepFolder(sweep_dir).summary, summary)
    if analyze:
        from lora_jax.analysis.updates import analyze_runs
        from lora_jax.evals.model_evals import write_model_evals
        from lora_jax.report.render.wandb_run import log_analysis_run
        from lora_jax.report.sections.rank_analysis import load_analysis

        analysis = analyze_runs(sweep_dir, runs, run_base)
        if analysis.get("versus_full"):
            write_model_evals(sweep_dir, analysis, runs, eval_limit, evaluate=model_evals)
            analysis = load_analysis(sweep_dir)  # with the evaluations, as the report reads it
        adapters = [r.adapter_dir for r in runs if r.adapter_dir]
        if adapters:  # each run's audit and rank advice (the task's truncation curve: above)
            from lora_jax.audit.measure import write_audit

            write_audit(adapters, sweep_dir, energy=0.9, pairs=False)
        log_analysis_run(sweep_dir, runs, analysis)
    result = make_report(sweep_dir, use_wandb=use_wandb, runs=runs)  # each folder read once
    split = time_split_line([r.metrics for r in runs])
    if split:
        print(split)
    print(result.wandb_message)
    print(result.markdown.absolute())
    return result.html


def time_split_line(metrics: list[dict]) -> str | None:
    """Where a run's wall time went, each phase's median over the runs' `metrics.json`
    (`time_split_s`, `lora_jax.train.time_split`; a fused run counts its share of its group's,
    `fused_members` runs sharing one clock), what lies beyond the steps as a fraction of the
    step time, and the largest peak resident memory (`peak_rss_mb`); None when no run has a
    split (runs from before it existed)."""
    splits = [
        {p: s / m.get("fused_members", 1) for p, s in m["time_split_s"].items()}
        for m in metrics
        if m.get("time_split_s")
    ]
    if not splits:
        return None
    phases = sorted({phase for split in splits for phase in split})
    median = {p: statistics.median(split.get(p, 0.0) for split in splits) for p in phases}
    parts = ", ".join(f"{p} {s:.1f} s" for p, s in median.items())
    line = f"[lora_jax] time per run (median of {len(splits)}): {parts}"
    if median.get("steps"):
        beyond = sum(s for p, s in median.items() if p != "steps") / median["steps"]
        line += f"; beyond the steps: {beyond:.0%} of the step time"
    peaks = [m["peak_rss_mb"] for m in metrics if m.get("peak_rss_mb")]
    if peaks:
        line += f"; peak resident memory {max(peaks):,.0f} MB"
    return line

"""The sweep's report as a W&B Report (`wandb-workspaces`), built offline, saved only online.

`build_wandb_report` is a pure function: it needs no network and no W&B login. Two details of
wandb-workspaces make that so: `Report(entity=...)` calls the W&B API for a default entity
when none is given, so the entity is always passed (the logger's, or "" offline and resolved
with the API only just before saving); and a `Runset` with an entity looks its project up over
the network when it is serialised, so runsets keep the logger's entity (usually none: the
report's own project is used). `publish_wandb_report` saves only when W&B is online
(`lora_jax.tracking.wandb_mode`: `logger.mode`, else `$WANDB_MODE`, else offline).

The report shows, for the sweep's W&B group: the main metric of every training run against
its rank (scatter, median bars with the seed range, run comparer), the tables of the local
report as Markdown, the phi heatmaps and spectra the sweep's `analysis` run (`wandb_run`)
logged (media browsers), its curves of the rank measurements at each kept checkpoint (line plots
against the training step) and the dW spectrum summaries logged during training (line plots).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import wandb_workspaces.reports.v2 as wr
from wandb_workspaces import expr

from lora_jax.analysis.dynamics import DYNAMICS_STEP, dynamics_rows
from lora_jax.report.render.document import Document, Figure, table_markdown
from lora_jax.report.render.document import Table as DocTable
from lora_jax.runs.files import read_jsonl
from lora_jax.runs.layout import ANALYSIS_RUN_DIR, WANDB_DIR, SweepFolder
from lora_jax.runs.record import RunRecord
from lora_jax.train.tracking import wandb_mode

SPECTRUM_SUMMARIES = ("effective_rank", "stable_rank", "energy_rank_90")


@dataclass(frozen=True)
class WandbTarget:
    """Where the sweep's runs went in W&B (from the runs' `logger` config)."""

    project: str
    entity: str | None
    group: str
    mode: str | None
    backend: str


def wandb_target(runs: list[RunRecord], sweep_dir: Path) -> WandbTarget:
    """The logger settings of the sweep's runs; group = `logger.group` or the folder name."""
    logger = runs[0].config.get("logger") or {}
    return WandbTarget(
        project=logger.get("project") or "lora_jax",
        entity=logger.get("entity") or None,
        group=logger.get("group") or Path(sweep_dir).name,
        mode=logger.get("mode"),
        backend=logger.get("backend", "wandb"),
    )


def media_keys(sweep_dir: Path) -> dict[str, list[str]]:
    """The image keys the sweep's `analysis` run logged (one per PNG in `figures/`, by stem)."""
    stems = sorted(p.stem for p in SweepFolder(sweep_dir).figures.glob("*.png"))
    return {
        "phi": [s for s in stems if s.startswith("phi_")],
        "spectrum": [s for s in stems if s.startswith("spectrum_")],
    }


def spectrum_keys(runs: list[RunRecord]) -> dict[tuple[str, str], list[str]]:
    """{(target, summary): [spectrum/layer_<i>/<target>/<summary>, ...]} from the runs' histories."""
    keys: set[str] = set()
    for run in runs:
        history = run.folder.history
        if run.rank == 0 or not history.exists():
            continue
        # Each spectrum row of a run has all its adapters; a cut last line is skipped.
        row = next(read_jsonl(history, contains='"spectrum/'), {})
        keys |= {k for k in row if k.startswith("spectrum/")}
    out: dict[tuple[str, str], list[str]] = {}
    for key in keys:
        _, _layer, target, summary = key.split("/")
        if summary in SPECTRUM_SUMMARIES:
            out.setdefault((target, summary), []).append(key)
    layer_of = lambda k: int(k.split("/")[1].removeprefix("layer_"))  # noqa: E731
    return {k: sorted(v, key=layer_of) for k, v in sorted(out.items())}


def dynamics_keys(analysis: dict) -> dict[str, list[str]]:
    """{quantity: keys} of the rank measurements over training the sweep's `analysis` run
    logged (`lora_jax.analysis.dynamics.dynamics_rows`); {} without dynamics."""
    dynamics = analysis.get("dynamics")
    keys = {k for row in (dynamics_rows(dynamics) if dynamics else {}).values() for k in row}
    out: dict[str, list[str]] = {}
    for key in sorted(keys):
        out.setdefault(key.split("/")[1], []).append(key)
    return out


def _runset(
    target: WandbTarget, name: str, job_type: str, groupby: list[str] | None = None
) -> wr.Runset:
    """The runs of the sweep's group with `job_type`; no network until the report is saved."""
    filters = f"Group = {target.group!r} and JobType = {job_type!r}"
    runset = wr.Runset(
        entity=target.entity or "",
        project=target.project,
        name=name,
        filters=filters,
        groupby=groupby or [],
    )
    # wandb-workspaces turns every "=" of a filter string into "==", values included, so a
    # group named like "rank=1,2" would not match; give it the parsed filter directly.
    parsed = expr.expr_to_filters(filters).filters
    if parsed[0].value != target.group:
        leaf = lambda key, value: expr.Filters(  # noqa: E731
            op="=", key=expr.Key(section="run", name=key), value=value, disabled=False
        )
        tree = expr.Filters(
            op="AND", filters=[leaf("group", target.group), leaf("jobType", job_type)]
        )
        object.__setattr__(runset, "_stashed_filters_v2", expr.filters_tree_to_v2(tree))
        object.__setattr__(runset, "_stashed_filter_string", runset.filters)
    return runset


def _section_markdown(blocks: list) -> str:
    parts = []
    for block in blocks:
        if isinstance(block, DocTable):
            parts.append(table_markdown(block))
        elif isinstance(block, Figure):
            continue  # local PNGs are not uploaded; the panels below show the logged ones
        else:
            parts.append(block)
    return "\n\n".join(parts)


def build_wandb_report(
    doc: Document,
    target: WandbTarget,
    metric_key: str,
    media: dict[str, list[str]],
    spectra: dict[tuple[str, str], list[str]],
    entity: str | None = None,
    dynamics: dict[str, list[str]] | None = None,
) -> wr.Report:
    """The W&B Report of a sweep, built without network.

    Args:
        doc: the local report (its sections become Markdown blocks).
        target: project, entity and group of the sweep's runs (`wandb_target`).
        metric_key: the run-summary key to plot against rank, e.g. "best/accuracy".
        media: image keys of the `analysis` run (`media_keys`).
        spectra: training-time spectrum keys (`spectrum_keys`).
        entity: the report's entity; default the logger's, else "" (resolved when saving).
        dynamics: the `analysis` run's curves over training (`dynamics_keys`).

    Returns:
        An unsaved `wandb_workspaces.reports.v2.Report`.
    """
    train = _runset(target, "training runs", "train")
    by_cell = _runset(
        target, "by target set and rank", "train", ["config.lora.targets", "config.lora.rank"]
    )
    blocks: list = [
        wr.P(
            f"Sweep group `{target.group}` in project `{target.project}`: made by "
            "`python -m experiments.report`; the same tables as the local report.html."
        ),
        wr.H1("Metric vs rank"),
        wr.PanelGrid(
            runsets=[train, by_cell],
            panels=[
                wr.ScatterPlot(
                    title=f"{metric_key} vs rank",
                    x=wr.Config("lora.rank"),
                    y=wr.SummaryMetric(metric_key),
                ),
                wr.BarPlot(
                    title=f"{metric_key} by rank: median, min-max over runs",
                    metrics=[wr.SummaryMetric(metric_key)],
                    groupby=wr.Config("lora.rank"),
                    groupby_aggfunc="median",
                    groupby_rangefunc="minmax",
                    orientation="v",
                ),
                wr.RunComparer(diff_only="split"),
            ],
        ),
    ]
    for section in doc.sections:
        blocks += [wr.H2(section.title), wr.MarkdownBlock(_section_markdown(section.blocks))]
    analysis_panels = [
        wr.MediaBrowser(title=title, media_keys=keys, num_columns=1)
        for title, keys in (
            ("phi heatmaps (Fig. 3/4 style)", media["phi"]),
            ("dW spectra", media["spectrum"]),
        )
        if keys
    ]
    if analysis_panels:
        blocks += [
            wr.H1("Rank analysis figures"),
            wr.PanelGrid(
                runsets=[_runset(target, "analysis run", "analysis")], panels=analysis_panels
            ),
        ]
    if dynamics:
        blocks += [
            wr.H1("Rank measurements over training"),
            wr.PanelGrid(
                runsets=[_runset(target, "analysis run", "analysis")],
                panels=[
                    wr.LinePlot(title=f"{q}, mean over layers", x=DYNAMICS_STEP, y=keys)
                    for q, keys in dynamics.items()
                ],
            ),
        ]
    if spectra:
        blocks += [
            wr.H1("dW spectra during training"),
            wr.PanelGrid(
                runsets=[train],
                panels=[
                    wr.LinePlot(title=f"W{t}: {summary} of dW, every layer", x="Step", y=keys)
                    for (t, summary), keys in spectra.items()
                ],
            ),
        ]
    return wr.Report(
        project=target.project,
        entity=entity if entity is not None else (target.entity or ""),
        title=doc.title.replace("`", "")[:128],
        description=f"LoRA rank sweep {target.group}: our numbers beside the paper's (Hu et al. 2021).",
        blocks=blocks,
    )


def offline_message(sweep_dir: Path, mode: str) -> str:
    """One line: why no W&B report was made, and how to make one."""
    return (
        f"W&B report not created: W&B is {mode} (logger.mode / WANDB_MODE). To create it, upload "
        f"the runs with `wandb sync {sweep_dir}/*/{WANDB_DIR}/offline-run-* "
        f"{sweep_dir}/{ANALYSIS_RUN_DIR}/{WANDB_DIR}/offline-run-*`, "
        f"then `wandb login` and run `WANDB_MODE=online python -m experiments.report {sweep_dir}`."
    )


def publish_wandb_report(
    target: WandbTarget, build: Callable[[str | None], wr.Report], sweep_dir: Path
) -> tuple[wr.Report | None, str]:
    """Build the report, and save it if W&B is online. Returns (report, one-line message).

    `build(entity)` makes the report; offline it is built with the logger's entity (or none),
    online with the logger's entity or the API's default one, then saved.
    """
    if target.backend == "none":
        return None, "W&B report not created: the runs were logged with logger=none."
    mode = wandb_mode(target.mode)
    if mode != "online":
        return build(None), offline_message(sweep_dir, mode)
    try:
        import wandb

        entity = target.entity or wandb.Api().default_entity
        report = build(entity)
        report.save()
    except Exception as err:  # network, login or permission: the local report still stands
        return None, (
            f"W&B report not saved ({type(err).__name__}: {err}). Check `wandb login` and that "
            f"project {target.project!r} exists for your entity (`wandb sync` the runs first)."
        )
    return report, f"W&B report: {report.url}"

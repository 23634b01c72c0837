"""Sweep-level work: check every job before the first trains, then summarise and report.

`SweepCallback` is a Hydra callback (`conf/sweep.yaml`). At the start of a multirun it
composes every job's config and validates it (`train.plan`), so `rank=1,2,999` fails in
seconds, not after two runs. At the end it writes `sweep_summary.json`, runs the rank
analysis, writes `report.md` and prints its path as the last line.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.core.global_hydra import GlobalHydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf


def job_configs(config: DictConfig) -> Iterator[DictConfig]:
    """Every job config a multirun of `config` will launch (the basic sweeper's grid)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    loader = GlobalHydra.instance().config_loader()
    sweep_params = OmegaConf.to_container(config.hydra.sweeper.get("params") or {})
    arguments = [f"{k}={v}" for k, v in sweep_params.items()] + list(config.hydra.overrides.task)
    overrides = OverridesParser.create(config_loader=loader).parse_overrides(arguments)
    for batch in BasicSweeper.split_arguments(overrides, max_batch_size=None):
        for job_overrides in batch:
            yield loader.load_sweep_config(config, list(job_overrides))


def read_runs(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One entry per finished run under `sweep_dir`: its overrides, folder and metrics."""
    entries = []
    for metrics_file in sorted(Path(sweep_dir).glob("*/metrics.json")):
        run_dir = metrics_file.parent
        metrics = json.loads(metrics_file.read_text())
        if metrics.get("status") != "complete":
            continue
        overrides_file = run_dir / ".hydra" / "overrides.yaml"
        overrides = (
            OmegaConf.to_container(OmegaConf.load(overrides_file))
            if overrides_file.exists()
            else []
        )
        entries.append(
            {
                "run_dir": str(run_dir),
                "name": run_dir.name,
                "overrides": overrides,
                "metrics": metrics,
            }
        )
    return entries


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"  # None: not measured at that step (e.g. BLEU)


def _results_table(entries: list[dict[str, Any]]) -> str:
    head = "| run | rank | targets | seed | scaling | main metric | final | best (step) | trainable params |"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]

    def key(e):
        return (
            e["metrics"]["full_finetune"],
            ",".join(e["metrics"]["targets"]),
            e["metrics"]["rank"],
            e["metrics"]["seed"],
        )

    for e in sorted(entries, key=key):
        m = e["metrics"]
        main = m["main_metric"]
        rank = "full FT" if m["full_finetune"] else m["rank"]
        lines.append(
            f"| {e['name']} | {rank} | {','.join(m['targets']) if m['rank'] else '-'} | {m['seed']} | "
            f"{m['scaling']} | {main} | {m['final'][main]:.4f} | {_num(m['best'][main])} ({m['best']['step']}) | "
            f"{m['trainable_params']:,} |"
        )
    return "\n".join(lines)


def write_report(
    sweep_dir: str | Path, entries: list[dict[str, Any]], sections: list[str] = ()
) -> Path:
    """`report.md` at the sweep root: the results table, then any extra sections."""
    sweep_dir = Path(sweep_dir)
    text = [
        f"# lora_jax sweep `{sweep_dir.name}`",
        "",
        f"{len(entries)} finished runs.",
        "",
        "## Results",
        "",
        _results_table(entries),
    ]
    for section in sections:
        text += ["", section]
    path = sweep_dir / "report.md"
    path.write_text("\n".join(text) + "\n")
    return path


def _log_to_wandb(sweep_dir: Path, entries: list[dict[str, Any]]) -> None:
    """An `analysis` run in the sweep's W&B group: the results table and every figure."""
    from lora_jax.tracking import Tracker

    logger = OmegaConf.load(Path(entries[0]["run_dir"]) / "config.yaml").logger
    if logger.backend == "none":
        return
    columns = ["run", "rank", "targets", "seed", "final", "best", "trainable_params"]
    rows = [
        [
            e["name"],
            m["rank"],
            ",".join(m["targets"]),
            m["seed"],
            m["final"][m["main_metric"]],
            m["best"][m["main_metric"]],
            m["trainable_params"],
        ]
        for e in entries
        for m in [e["metrics"]]
    ]
    with Tracker(
        sweep_dir / "analysis_run",
        "wandb",
        name=f"{sweep_dir.name}/analysis",
        group=logger.group or sweep_dir.name,
        project=logger.project,
        entity=logger.entity,
        mode=logger.mode,
        job_type="analysis",
        config={"sweep_dir": str(sweep_dir)},
    ) as tracker:
        tracker.log_table("results", columns, rows)
        tracker.log_images({p.stem: p for p in sorted((sweep_dir / "figures").glob("*.png"))})


def finish_sweep(sweep_dir: str | Path, analyze: bool = True) -> Path:
    """Summarise a sweep folder (and analyse it): `sweep_summary.json` and `report.md`.

    The summary and results table are written first, so a failing analysis loses nothing.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(
            f"sweep folder {sweep_dir} does not exist; pass a folder made by experiments.sweep."
        )
    entries = read_runs(sweep_dir)
    if not entries:
        raise FileNotFoundError(
            f"{sweep_dir} holds no finished run (no */metrics.json with status complete)."
        )
    (sweep_dir / "sweep_summary.json").write_text(json.dumps(entries, indent=2))
    report = write_report(sweep_dir, entries)
    if analyze:
        from lora_jax.analysis.sweep import analyze_sweep

        report = write_report(sweep_dir, entries, [analyze_sweep(sweep_dir, entries)])
        _log_to_wandb(sweep_dir, entries)
    return report


class SweepCallback(Callback):
    """Validate every job up front; summarise, analyse and report at the end."""

    def __init__(self, analyze: bool = True) -> None:
        self.analyze = analyze

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from lora_jax.train import plan

        for job in job_configs(config):
            try:
                plan(job)
            except (ValueError, FileNotFoundError) as err:
                # Hydra turns callback errors into warnings; bad input must stop the sweep.
                overrides = " ".join(job.hydra.overrides.task)
                print(f"Error in sweep job `{overrides}`: {err}", file=sys.stderr)
                raise SystemExit(1) from None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            report = finish_sweep(config.hydra.sweep.dir, analyze=self.analyze)
        except Exception:
            # Hydra turns callback errors into warnings; a failed analysis must fail the sweep.
            traceback.print_exc()
            raise SystemExit(1) from None
        print(report.absolute())

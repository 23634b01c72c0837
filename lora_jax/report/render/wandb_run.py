"""The sweep's `analysis` run in W&B: the results table, the model evaluations against full
fine-tuning, every figure and the rank measurements over training.

`lora_jax.stages.finish_sweep` calls `log_analysis_run` after the analysis; the W&B Report that
shows these (`wandb_report`) is built later by `make_report`. It logs through the training
logger (`lora_jax.train.tracking.Tracker`), imported only when called, so that importing this
module loads no W&B.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from lora_jax.runs.layout import SweepFolder
from lora_jax.runs.record import RunRecord


def log_analysis_run(sweep_dir: Path, runs: list[RunRecord], analysis: dict[str, Any]) -> None:
    """An `analysis` run in the sweep's W&B group: the results table, the model evaluations
    against full fine-tuning (truncation curves, forgetting) and every figure."""
    from lora_jax.analysis.dynamics import DYNAMICS_STEP, dynamics_rows
    from lora_jax.evals.model_evals import model_eval_rows
    from lora_jax.train.tracking import Tracker

    logger = OmegaConf.create(runs[0].config.get("logger") or {"backend": "none"})
    if logger.backend == "none":
        return
    columns = ["run", "rank", "targets", "seed", "final", "best", "trainable_params"]
    rows = [
        [
            r.name,
            r.rank,
            ",".join(r.targets),
            r.seed,
            r.value("final"),
            r.value("best"),
            r.metrics["trainable_params"],
        ]
        for r in runs
    ]
    with Tracker(
        SweepFolder(sweep_dir).analysis_run,
        "wandb",
        name=f"{sweep_dir.name}/analysis",
        group=logger.group or sweep_dir.name,
        project=logger.project,
        entity=logger.entity,
        mode=logger.mode,
        job_type="analysis",
        config={"sweep_dir": str(sweep_dir)},
    ) as tracker:
        # The rank measurements over training, against the training step of each checkpoint.
        dynamics = analysis.get("dynamics")
        if dynamics:
            tracker.log_curves(dynamics_rows(dynamics), DYNAMICS_STEP)
        tracker.log_table("results", columns, rows)
        evals = model_eval_rows(analysis)
        if evals:
            tracker.log_table(
                "versus_full_model_evals", list(evals[0]), [list(r.values()) for r in evals]
            )
        tracker.log_images(
            {p.stem: p for p in sorted(SweepFolder(sweep_dir).figures.glob("*.png"))}
        )

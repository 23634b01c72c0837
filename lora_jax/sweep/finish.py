"""The end of a sweep, Hydra's side: `SweepCallback` (`conf/sweep.yaml`) runs the stages after
training (`lora_jax.stages.finish_sweep`) once every job has ended. Every job was validated
before the first trained (`lora_jax.sweep.validate.CheckCallback`, with the grid of
`sweep.grid.job_configs`), so `rank=1,2,999` fails in seconds, not after two runs. The last
line a sweep prints is the path of `report.html`.
"""

from __future__ import annotations

import traceback
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class SweepCallback(Callback):
    """Summarise, analyse and report at the end (validation: `lora_jax.sweep.validate.CheckCallback`)."""

    def __init__(
        self, analyze: bool = True, model_evals: bool = True, eval_limit: int | None = None
    ) -> None:
        self.analyze, self.model_evals, self.eval_limit = analyze, model_evals, eval_limit

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from lora_jax.train.distributed import is_primary

        if not is_primary():  # every process of a multi-process sweep gets here; one analyses
            return
        from lora_jax import stages
        from lora_jax.train.signals import stop_at_once

        sweep_dir = config.hydra.sweep.dir
        redo = f"the runs are saved; `python -m experiments.analyze {sweep_dir}` redoes it"
        try:
            with stop_at_once("the analysis after the sweep", redo):
                report = stages.finish_sweep(
                    sweep_dir,
                    analyze=self.analyze,
                    model_evals=self.model_evals,
                    eval_limit=self.eval_limit,
                )
        except Exception:
            # Hydra turns callback errors into warnings; a failed analysis must fail the sweep.
            traceback.print_exc()
            raise SystemExit(1) from None
        print(report.absolute())  # the last line a sweep prints: the HTML report

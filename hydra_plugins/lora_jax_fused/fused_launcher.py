"""`FusedLauncher`: trains the jobs of a sweep that differ only in rank and seed as one program.

    python -m experiments.sweep rank=1,2,4,8 hydra/launcher=fused

Selected by `conf/hydra/launcher/fused.yaml`. The training is `lora_jax.train.fused`; this module
is the Hydra side: compose the jobs, give each its run folder (`.hydra/` included) as Hydra's
`run_job` does, fuse what can be fused, run the rest as the basic launcher does, and report a
`JobReturn` per job.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, configure_log, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict


class FusedLauncher(Launcher):
    """A Hydra launcher that fuses compatible jobs (`lora_jax.train.fused`).

    Args:
        max_members: the most runs trained as one program (larger groups are split); None
            fuses every compatible job together.
        chunk: members computed together (vmapped); the chunks run one after another in the
            program. None: one on CPU, all on accelerators (`lora_jax.train.fused.default_chunk`).
    """

    def __init__(self, max_members: int | None = None, chunk: int | None = None, **_: Any) -> None:
        self.max_members, self.chunk = max_members, chunk
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        """Fuse what can be fused, run the rest as the basic launcher does; one `JobReturn`
        per job, in job order."""
        from lora_jax.config import run_config
        from lora_jax.report.render.console import print_summary
        from lora_jax.train.compile_cache import enable_compilation_cache
        from lora_jax.train.fused import plan_groups, train_fused

        assert self.config is not None and self.hydra_context is not None
        setup_globals()
        config, context = self.config, self.hydra_context
        configure_log(config.hydra.hydra_logging, config.hydra.verbose)
        Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        enable_compilation_cache()
        jobs = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            job = context.config_loader.load_sweep_config(config, list(overrides))
            with open_dict(job):
                job.hydra.job.id = idx
                job.hydra.job.num = idx
            jobs.append(job)
        tasks = [run_config(_resolved(job, context)) for job in jobs]  # typed once
        # The jobs' logging (conf/hydra: WARNING) while groups are planned and trained, as
        # run_job sets it for a job.
        configure_log(jobs[0].hydra.job_logging, config.hydra.verbose)
        returns: dict[int, JobReturn] = {}
        for group in plan_groups(tasks, self.max_members):
            task_functions = {group[0]: self.task_function}
            if len(group) > 1:
                names = ", ".join(Path(tasks[i].workdir).name for i in group)
                print(f"[lora_jax] fused: training {len(group)} runs as one: {names}")
                configure_log(jobs[group[0]].hydra.job_logging, config.hydra.verbose)
                try:
                    outcomes = train_fused([tasks[i] for i in group], self.chunk, print_summary)
                except Exception as err:  # the whole group failed: every member reports it
                    outcomes = [err] * len(group)
                task_functions = {i: _report(o) for i, o in zip(group, outcomes, strict=True)}
            for i, task_function in task_functions.items():
                returns[i] = run_job(
                    hydra_context=context,
                    task_function=task_function,
                    config=jobs[i],
                    job_dir_key="hydra.sweep.dir",
                    job_subdir_key="hydra.sweep.subdir",
                )
                configure_log(config.hydra.hydra_logging, config.hydra.verbose)
        return [returns[i] for i in range(len(jobs))]


def _resolved(config: DictConfig, context: HydraContext) -> DictConfig:
    """A job's task config with every interpolation resolved (its `workdir` is
    `${hydra:runtime.output_dir}`), set up by Hydra's own `run_job` (which also writes
    `.hydra/`) with no callbacks: they run once, when the job's result is reported."""
    from hydra._internal.callbacks import Callbacks

    def resolve(task_cfg: DictConfig) -> DictConfig:
        task_cfg = copy.deepcopy(task_cfg)
        OmegaConf.resolve(task_cfg)
        return task_cfg

    ret = run_job(
        task_function=resolve,
        config=config,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
        hydra_context=HydraContext(config_loader=context.config_loader, callbacks=Callbacks()),
        configure_logging=False,
    )
    return ret.return_value


def _report(outcome: dict[str, Any] | Exception) -> Callable[[DictConfig], float]:
    """A task function that returns a fused run's result as `experiments.train.job` would
    (its final main metric), or raises the error that stopped it."""

    def task(_cfg: DictConfig) -> float:
        if isinstance(outcome, Exception):
            raise outcome
        return outcome["final"][outcome["main_metric"]]

    return task

"""What the four entry points share: one validation pass before any work, and user errors as
one message with exit status 2 (a traceback too only with `HYDRA_FULL_ERROR=1`, Hydra's own
switch). Bugs still raise.

`experiments.train` and `.sweep` run `check_job` on every job from `CheckCallback`
(`conf/hydra/default.yaml`), which Hydra calls before it creates a run or sweep folder, so a
bad value leaves existing folders untouched; `lora_jax.cli.hydra_main` makes Hydra's own
composition errors (`rank=abc`, `model=foo`, `trainer.stepz=3`) exit 2 too. `experiments.analyze` and `.report`
wrap their work in `lora_jax.user_errors` (light: the audit starts in a fraction of a second).
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lora_jax.config import TrainerConfig, check_config, run_config
from lora_jax.config_rules import check_batch_size, value_error
from lora_jax.data.task_spec import LOCAL_TASK
from lora_jax.runs.lock import lock_folder, unlock_folder
from lora_jax.train.run_identity import RunIdentityError, message
from lora_jax.train.run_identity import check as check_identity
from lora_jax.user_errors import USER_ERRORS, check_output_dir, user_errors

# What validation raises for bad input; raised there, never a bug's symptom.
OPTIONAL_GROUPS = ("experiment", "debug")  # Hydra ignores unknown names of optional defaults


def check_choices(config: DictConfig) -> None:
    """Reject an unknown name of an optional group (`experiment=table99`, `debug=fst`), which
    Hydra composes without: the default job would run instead of the one asked for."""
    from hydra.core.global_hydra import GlobalHydra

    choices = OmegaConf.select(config, "hydra.runtime.choices") or {}
    loader = GlobalHydra.instance().config_loader()
    for group in OPTIONAL_GROUPS:
        name = choices.get(group)
        options = loader.get_group_options(group)
        if name is not None and name not in options:
            example = (difflib.get_close_matches(name, options, n=1) or options)[0]
            raise value_error(group, name, ", ".join(options), f"{group}={example}")


def check_job(cfg: DictConfig) -> None:
    """The validation pass of one job, before any work: every value's range
    (`config.check_config`), `trainer.mesh.fsdp` against the devices, the names that depend on
    the model and task (`train.plan`: rank, targets, layers, model and task files,
    `lora.init_from`), the data (cache present, splits, a batch that fits) and the logger.
    Raises one of `USER_ERRORS`."""
    check_config(cfg)  # first: no heavy imports for a bad number
    from lora_jax.train import plan
    from lora_jax.train.distributed import initialize
    from lora_jax.train.parallel import check_mesh

    config = run_config(cfg)  # Hydra's job config, typed once: the library takes this
    # One of several processes: JAX's multi-process runtime first, before the device count.
    initialize(config.trainer)
    check_mesh(config.trainer.mesh.fsdp)  # divides the device count (fsdp=1 starts no backend)

    task = plan(config).task
    check_batch_size(config.data.batch_size, _split_size(task, "train"), task.name)
    split = task.splits.get(config.data.eval_split, config.data.eval_split)
    try:
        _split_size(task, split)
    except (ValueError, KeyError):
        allowed = ", ".join(task.splits)
        raise value_error(
            "data.eval_split", config.data.eval_split, allowed, "data.eval_split=validation"
        ) from None
    if task.is_generation and task.name == LOCAL_TASK:  # a researcher's prompts: do they fit?
        _check_prompts(task, config.model.name, config.data.max_len, config.data.prompt, split)
    if config.logger.backend == "wandb" and importlib.util.find_spec("wandb") is None:
        raise value_error("logger.backend", "wandb", "none (wandb is not installed)", "logger=none")


def check_jobs(jobs: Sequence[DictConfig], multirun: bool) -> None:
    """`run_identity.check` for job configs composed by Hydra (with their `hydra` node) before
    Hydra makes or touches their folders (`hydra.run.dir`, or `hydra.sweep.dir`/`subdir` of
    sweep jobs): for the validation pass before any job (`CheckCallback`). Each job checks
    again when it starts (`run_identity.claim`).

    Raises:
        RunIdentityError: folders hold results of another config (every one is listed) and
            `trainer.restart` is not set.
    """
    refused = []
    for job in jobs:
        h = job.hydra
        folder = Path(h.sweep.dir) / str(h.sweep.subdir) if multirun else Path(h.run.dir)
        config = run_config(job)  # typed once; `workdir` is None before Hydra starts the job
        diffs = check_identity(config, folder)
        if diffs and not config.trainer.restart:
            refused.append((folder, diffs))
    if refused:
        raise RunIdentityError(message(refused))


@functools.cache  # a sweep's jobs share their task: open each split once
def _split_size(task: Any, split: str) -> int:
    from lora_jax import data

    logging.disable(logging.INFO)  # TFDS logs "Load dataset info"; the pass prints one message
    try:
        return len(data.load_split(task, split))
    finally:
        logging.disable(logging.NOTSET)


@functools.cache  # a sweep's jobs share their data and model
def _check_prompts(task: Any, model: str, max_len: int, prompt: str | None, split: str) -> None:
    from lora_jax import data, models
    from lora_jax.data.prompts import check_prompt_lengths
    from lora_jax.train.lm import chat_template_of

    chat = chat_template_of(model) if task.chat else None
    sources = {s: data.load_split(task, s) for s in dict.fromkeys(("train", split))}
    tokenizer = models.tokenizer_of(model)
    check_prompt_lengths(task, sources, tokenizer, max_len, prompt or task.prompt, chat)


def _job_name(job: DictConfig) -> str:
    return " ".join(job.hydra.overrides.task) or "(no overrides)"


class CheckCallback(Callback):
    """Hydra calls these before it makes the run or sweep folder and before any job."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        with user_errors():
            check_choices(config)
            check_output_dir(config.hydra.run.dir, "hydra.run.dir", "hydra.run.dir=outputs/runs/a")
            check_job(config)
            check_jobs([config], multirun=False)  # the folder's results, same config?
            if _locks_for_the_run(run_config(config).trainer):
                lock_folder(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from lora_jax.sweep.grid import job_configs

        with user_errors():
            check_choices(config)
            check_output_dir(
                config.hydra.sweep.dir, "hydra.sweep.dir", "hydra.sweep.dir=outputs/sweeps/a"
            )
        from hydra.errors import CompactHydraException

        # A job's own overrides (`rank=abc,2`) are composed only here, Hydra's way.
        with user_errors(errors=(*USER_ERRORS, CompactHydraException)):
            jobs = list(job_configs(config))
        # Every job's numbers first (no heavy imports), then the model, data and files.
        for check in (check_config, check_job):
            for job in jobs:
                with user_errors(f" in sweep job `{_job_name(job)}`"):
                    check_choices(job)
                    check(job)
        with user_errors():  # every run folder's results against its job, all refusals listed
            check_jobs(jobs, multirun=True)
            lock_folder(config.hydra.sweep.dir, "hydra.sweep.dir")

    # Hydra ends callbacks in reverse order: these run after the sweep's analysis and report.
    # The locks go when the work ends, not when the process does (a notebook, a test runner).
    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        unlock_folder(config.hydra.run.dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        unlock_folder(config.hydra.sweep.dir)


def _locks_for_the_run(trainer: TrainerConfig) -> bool:
    """A lone process locks its run folder; of several, process 0 (by `trainer.process_id` or
    SLURM's task id) locks for all. Where only JAX knows the index (a TPU pod), none locks."""
    from lora_jax.train.distributed import several_processes

    if trainer.distributed == "off" or (
        trainer.distributed == "auto" and not several_processes(trainer)
    ):
        return True
    index = trainer.process_id if trainer.process_id is not None else os.environ.get("SLURM_PROCID")
    return index is not None and int(index) == 0

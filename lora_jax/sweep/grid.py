"""The grid of a sweep: every job config a Hydra multirun will launch, known before the first
job starts (so `sweep.validate` can check them all)."""

from __future__ import annotations

from collections.abc import Iterator

from hydra.core.global_hydra import GlobalHydra
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

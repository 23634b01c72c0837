"""What many test files share: the repo's Hydra configs composed as the entry points compose
them, the real entry points run in a subprocess as a user runs them, and one finished tiny run.

Test files import the helpers (`from conftest import FAST, compose_config, run_module`) and ask
for the fixtures by name (`finished_run`, `run_copy`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from lora_jax.config import register_configs

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
# The tiny random BERT on the real MR data, 20 steps: the fastest real training run.
FAST = ["model=tiny_bert", "debug=fast"]
# A finished rank-4 run of FAST: 20 steps, checkpoints at 10 and 20, spectra logged.
FINISHED_RUN = [*FAST, "logger=none", "rank=4"]

register_configs()


def compose_config(*overrides: str, hydra: bool = False):
    """The run config `python -m experiments.train OVERRIDES` composes (its `hydra` node on
    request, as a validation callback sees it)."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", list(overrides), return_hydra_config=hydra)


def compose_jobs(*overrides: str) -> list:
    """The job configs `python -m experiments.sweep OVERRIDES` would launch, in order."""
    from lora_jax.sweep import job_configs

    with initialize_config_dir(str(CONF), version_base="1.3"):
        return list(job_configs(compose("sweep", list(overrides), return_hydra_config=True)))


def run_module(
    module: str,
    *args: str,
    cwd: Path,
    check: bool = True,
    timeout: int = 600,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """`python -m module args` in `cwd` (W&B offline); raises with its output if it fails."""
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT), **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{module} {args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """The folder of a FINISHED_RUN trained through `experiments.train`; never change it."""
    cwd = tmp_path_factory.mktemp("finished")
    run_module("experiments.train", *FINISHED_RUN, f"hydra.run.dir={cwd / 'run'}", cwd=cwd)
    return cwd / "run"


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    """A copy of the finished run, for a test to change."""
    return Path(shutil.copytree(finished_run, tmp_path / "run"))

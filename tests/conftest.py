"""What many test files share: the repo's Hydra configs composed as the entry points compose
them, the real entry points run in a subprocess as a user runs them, and one finished tiny run.

Test files import the helpers (`from conftest import FAST, compose_config, run_module`) and ask
for the fixtures by name (`finished_run`, `run_copy`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lora_jax.config import register_configs
from lora_jax.runs import RunFolder
from lora_jax.train.compile_cache import enable_compilation_cache

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
FIXTURES = ROOT / "tests" / "fixtures"  # made by scripts/ (reference implementations)
# The tiny random BERT on the real MR data, 20 steps: the fastest real training run.
FAST = ["model=tiny_bert", "debug=fast"]
# A finished rank-4 run of FAST: 20 steps, checkpoints at 10 and 20, spectra logged.
FINISHED_RUN = [*FAST, "logger=none", "rank=4"]

# The layers of a synthetic run's spectra (write_run).
SYNTHETIC_LAYERS = 2

register_configs()
# Compiled programs are kept on disk (~/.cache/lora_jax/jax_compile, or LORA_JAX_COMPILE_CACHE),
# as the entry points keep them: a test run loads what an earlier one, or the other worker,
# compiled.
enable_compilation_cache()


def compose_config(*overrides: str, hydra: bool = False):
    """The run config `python -m experiments.train OVERRIDES` composes (its `hydra` node on
    request, as a validation callback sees it)."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", list(overrides), return_hydra_config=hydra)


def compose_jobs(*overrides: str) -> list:
    """The job configs `python -m experiments.sweep OVERRIDES` would launch, in order."""
    from lora_jax.sweep.grid import job_configs

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


def start_module(module: str, *args: str, cwd: Path) -> subprocess.Popen:
    """`python -m module args` started in `cwd` (W&B offline), its stderr piped: for a test
    that acts on the process while it runs (a signal, a second process)."""
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until(ready, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Poll until `ready()` holds, `proc` exits or `timeout` seconds pass."""
    import time

    deadline = time.time() + timeout
    while not ready() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)


def _to_stderr(message, category, filename, lineno, file=None, line=None) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def call_main(
    module: str, *args: str, cwd: Path, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """`run_module` in this process: the entry point's `main()` with `sys.argv`, the working
    folder and `env` set (and restored), stdout and stderr captured, the exit status from its
    `SystemExit`, warnings shown on stderr as a fresh Python shows them. A fraction of a second
    where a fresh Python + JAX + Hydra takes seconds (and a training run reuses this process's
    compiled programs): for what does not need a process of its own (signals, several
    processes, a shell's view of the exit). Hydra's global state is cleared after.

    Hydra's logging set-up (`logging.config.dictConfig`) closes every logging handler the
    process has, pytest's capture among them: they are hidden from it for the call."""
    import contextlib
    import importlib
    import io
    import logging

    from hydra.core.global_hydra import GlobalHydra

    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_argv, saved_cwd = dict(os.environ), sys.argv, os.getcwd()
    saved_handlers = logging._handlerList[:]  # what dictConfig would close
    root_handlers = logging.getLogger().handlers[:]
    del logging._handlerList[:]
    status: int | str | None = 0
    try:
        os.environ.update(env or {})
        sys.argv = [module, *args]
        os.chdir(cwd)
        with (
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
            warnings.catch_warnings(),
        ):
            warnings.resetwarnings()  # Python's defaults, each warning once per call
            for quiet in (DeprecationWarning, PendingDeprecationWarning, ImportWarning):
                warnings.simplefilter("ignore", quiet, append=True)
            warnings.showwarning = _to_stderr  # as Python shows them, not to pytest's record
            try:
                importlib.import_module(module).main()
            except SystemExit as exit_:
                status = exit_.code
    finally:
        logging._handlerList[:] = saved_handlers
        logging.getLogger().handlers[:] = root_handlers
        os.chdir(saved_cwd)
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
        GlobalHydra.instance().clear()
    code = status if isinstance(status, int) else (0 if status is None else 1)
    proc = subprocess.CompletedProcess([module, *args], code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(
            f"{module} {args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """The folder of a FINISHED_RUN trained through `experiments.train`; never change it."""
    cwd = tmp_path_factory.mktemp("finished")
    call_main("experiments.train", *FINISHED_RUN, f"hydra.run.dir={cwd / 'run'}", cwd=cwd)
    return cwd / "run"


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    """A copy of the finished run, for a test to change."""
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def write_run(
    sweep: Path,
    name: str,
    *,
    rank: int,
    targets: tuple[str, ...] = ("q", "v"),
    seed: int = 0,
    best: float | None = 0.8,
    final: float = 0.79,
    main: str = "accuracy",
    task: str = "mr",
    model: str = "minilm",
    alpha: float = 8.0,
    paper_items: list[str] | None = None,
    logger: dict | None = None,
    status: str = "complete",
    evals: int = 2,
    lr: float = 1e-3,
    scaling: str = "alpha_over_r",
    full_finetune: bool = False,
    train_rows: list[dict] | None = None,
    budget_rank: int | None = None,
) -> Path:
    """One run folder as `lora_jax.train.run` leaves it (no checkpoints, no adapter)."""
    folder = RunFolder(sweep / name)
    run = folder.path
    folder.hydra.mkdir(parents=True)
    metrics = {
        "status": status,
        "final": {main: final},
        "best": {main: best, "step": 200},
        "trainable_params": 1000 * rank + 770,
        "total_params": 22_713_216 + 1000 * rank,
        "steps": 200,
        "rank": rank,
        "targets": list(targets),
        "alpha": alpha,
        "scaling": scaling,
        "seed": seed,
        "full_finetune": full_finetune,
        "model": model,
        "task": task,
        "main_metric": main,
    }
    folder.metrics.write_text(json.dumps(metrics))
    config = {
        "rank": rank,
        "alpha": alpha,
        "targets": "".join(targets),
        "seed": seed,
        "scaling": scaling,
        "model": {"name": model},
        "data": {"task": task, "eval_split": "validation", "batch_size": 32, "max_len": 64},
        "lora": {
            "rank": rank,
            "alpha": alpha,
            "targets": "".join(targets),
            "rank_pattern": {},
            "budget_rank": budget_rank,
        },
        "optim": {"lr": lr},
        "trainer": {"steps": 200, "eval_every": 100, "progress": False},
        "logger": {"backend": "wandb", "project": "lora_jax", "entity": None, "mode": None}
        | (logger or {}),
        "workdir": str(run),
    }
    if paper_items is not None:
        config["paper"] = paper_items
    OmegaConf.save(OmegaConf.create(config), folder.config)
    OmegaConf.save(OmegaConf.create([f"rank={rank}", f"seed={seed}"]), folder.overrides)
    rows = [
        *(train_rows or []),
        *({"step": 100 * (i + 1), f"eval/{main}": final} for i in range(evals)),
    ]
    if rank:
        rows.append(
            {"step": 50}
            | {
                f"spectrum/layer_{layer}/{t}/{s}": 1.0
                for layer in range(SYNTHETIC_LAYERS)
                for t in targets
                for s in ("effective_rank", "stable_rank", "frobenius")
            }
        )
    folder.history.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run

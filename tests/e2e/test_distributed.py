"""Several processes, one run (`lora_jax.train.distributed`), on this machine.

Two `experiments.train` processes meet through `jax.distributed` on a free localhost port
(CPU collectives over gloo) and train tiny BERT with 8 examples each; one process trains the
same run with 16. The losses, evaluations, final metrics and exported adapter must agree
(float tolerance), process 0 alone must write the run folder, and a resumed 2-process run
(both restore their Orbax checkpoint and Grain position) must finish as the uninterrupted
one, here with the frozen base split between the processes (FSDP). Every wait has a timeout;
a stuck process is killed, never waited on.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST, ROOT
from safetensors.numpy import load_file

from lora_jax.config import TrainerConfig
from lora_jax.train.distributed import several_processes

# A global batch of 16 (8 per process), eval on 100 examples: 2 processes x 32 per eval batch
# fill the second global eval batch with 28 repeats that the gather drops. `data.pad=max_len`
# in the reference too: a padded length changes the shape of the dropout masks.
RUN = [
    *FAST,
    "logger=none",
    "data.pad=max_len",
    "data.eval_limit=100",
    "data.eval_batch_size=32",
    "trainer.steps=6",
    "trainer.log_every=1",
    "trainer.eval_every=3",
    "trainer.checkpoint_every=3",
    "trainer.spectrum_every=0",
]
TIMEOUT = 150  # seconds for a launch; the processes give up on each other after 60


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "JAX_PLATFORMS": "cpu",
        "WANDB_MODE": "offline",
        "HYDRA_FULL_ERROR": "1",
    }


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "experiments.train", *args],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(procs: list[subprocess.Popen]) -> list[str]:
    """Each process's output once all exit 0; kills them all if one fails or runs too long."""
    outs = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=TIMEOUT)
            outs.append(out)
            assert proc.returncode == 0, f"exit {proc.returncode}:\n{out[-5000:]}"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=30)
    return outs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(out: Path, cwd: Path, *extra: str) -> list[subprocess.Popen]:
    port = _free_port()
    return [
        _start(
            [
                *RUN,
                *extra,
                "data.batch_size=8",
                f"trainer.coordinator=127.0.0.1:{port}",
                "trainer.num_processes=2",
                f"trainer.process_id={i}",
                "trainer.distributed_timeout=60",
                f"hydra.run.dir={out}",
            ],
            cwd,
        )
        for i in range(2)
    ]


def _history(run: Path) -> tuple[list[float], list[dict[str, float]]]:
    """The logged train losses and evaluation rows (step and metrics) of a run."""
    rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    evals = [r for r in rows if any(k.startswith("eval/") for k in r)]
    return losses, evals


def _adapter(run: Path) -> dict[str, np.ndarray]:
    return {
        **load_file(run / "adapter" / "adapter_model.safetensors"),
        **load_file(run / "adapter" / "head.safetensors"),
    }


def _assert_same_run(run: Path, reference: Path) -> None:
    metrics = json.loads((run / "metrics.json").read_text())
    ref = json.loads((reference / "metrics.json").read_text())
    assert (metrics["processes"], metrics["devices"], metrics["steps"]) == (2, 2, 6)
    assert metrics["final"] == pytest.approx(ref["final"], rel=1e-6)
    assert metrics["best"] == pytest.approx(ref["best"], rel=1e-6)
    ours, theirs = _adapter(run), _adapter(reference)
    assert sorted(ours) == sorted(theirs)
    for name, value in theirs.items():
        np.testing.assert_allclose(ours[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    reference = _start([*RUN, "data.batch_size=16", f"hydra.run.dir={one}"], tmp_path)
    outs = _finish([*_two_processes(two, tmp_path), reference])
    assert "process 0 of 2" in outs[0] and "process 1 of 2" in outs[1]
    assert "process 0 of" not in outs[2]  # one process: jax.distributed is not started

    losses, evals = _history(two)
    ref_losses, ref_evals = _history(one)
    assert len(losses) == 6  # one writer: process 0
    assert losses == pytest.approx(ref_losses, rel=1e-5)
    assert [e["step"] for e in evals] == [e["step"] for e in ref_evals] == [3, 6]
    for row, ref in zip(evals, ref_evals, strict=True):
        assert row == pytest.approx(ref, rel=1e-6)
    _assert_same_run(two, one)
    grain = sorted(p.name for p in (two / "checkpoints" / "6" / "data").glob("process_*"))
    assert grain == ["process_0-of-2.json", "process_1-of-2.json"]  # each its data position

    # Resume: without step 6 and the results, both processes restore step 3 (arrays, the
    # best step, each its Grain position) and train on; the end is the uninterrupted run's.
    # On a (1 x 2) mesh this time: the frozen base split between the processes (FSDP), and
    # the validation pass counts the devices, so it starts jax.distributed itself.
    shutil.rmtree(two / "checkpoints" / "6")
    shutil.rmtree(two / "adapter")
    (two / "metrics.json").unlink()
    outs = _finish(_two_processes(two, tmp_path, "trainer.mesh.fsdp=2"))
    assert all("resuming two from step 3" in out and "fsdp=2" in out for out in outs)
    losses, _ = _history(two)
    assert losses[6:] == pytest.approx(ref_losses[3:], rel=1e-5)
    _assert_same_run(two, one)


def test_auto_starts_jax_distributed_only_for_several_processes():
    one = TrainerConfig()
    assert several_processes(one, {}) == ""
    assert several_processes(one, {"SLURM_STEP_NUM_TASKS": "1", "SLURM_PROCID": "0"}) == ""
    assert several_processes(one, {"SLURM_NTASKS": "4"}) == ""  # an allocation, not a step
    assert several_processes(one, {"TPU_WORKER_HOSTNAMES": "localhost"}) == ""
    assert "SLURM" in several_processes(one, {"SLURM_STEP_NUM_TASKS": "4"})
    assert "TPU" in several_processes(one, {"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"})
    assert "TPU" in several_processes(one, {"MEGASCALE_COORDINATOR_ADDRESS": "t0:8080"})
    assert several_processes(one, {"JAX_COORDINATOR_ADDRESS": "h:1234"}) != ""
    assert several_processes(TrainerConfig(num_processes=2), {}) != ""
    assert several_processes(TrainerConfig(coordinator="h:1234"), {}) != ""
    assert several_processes(TrainerConfig(num_processes=1), {}) == ""


@pytest.mark.slow
def test_a_signal_to_one_process_stops_both_after_the_same_step(tmp_path):
    """SIGTERM to process 1 alone: both agree on the step, save it together (one Orbax
    checkpoint, each its Grain position), say so and exit 143; both rerun and finish as one
    process trained uninterrupted does."""
    import re
    import signal
    import time

    longer = ["trainer.steps=60", "trainer.checkpoint_every=10", "trainer.eval_every=60"]
    two, one = tmp_path / "two", tmp_path / "one"
    reference = _start([*RUN, *longer, "data.batch_size=16", f"hydra.run.dir={one}"], tmp_path)
    procs = _two_processes(two, tmp_path, *longer)
    try:
        deadline = time.time() + TIMEOUT
        while not (two / "checkpoints" / "10").is_dir() and time.time() < deadline:
            time.sleep(0.02)
        procs[1].send_signal(signal.SIGTERM)
        outs = [proc.communicate(timeout=TIMEOUT)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert [p.returncode for p in procs] == [128 + signal.SIGTERM] * 2, outs
    steps = {re.search(r"stopped after step (\d+); checkpoint saved", out)[1] for out in outs}
    (step,) = steps  # the same step on both
    assert int(step) < 60 and not (two / "metrics.json").exists()
    assert (two / "checkpoints" / step / "data" / "process_1-of-2.json").is_file()
    _finish([*_two_processes(two, tmp_path, *longer), reference])
    metrics = json.loads((two / "metrics.json").read_text())
    ref = json.loads((one / "metrics.json").read_text())
    assert metrics["steps"] == 60 and metrics["final"] == pytest.approx(ref["final"], rel=1e-5)
    ours, theirs = _adapter(two), _adapter(one)
    for name, value in theirs.items():
        np.testing.assert_allclose(ours[name], value, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.slow
def test_two_processes_on_local_files_train_like_one(tmp_path, monkeypatch):
    """`data=local` under several processes, each starting with an empty asset cache: every
    process computes the same content key, one prepares the files under the cache's lock, and
    the run is the one-process run."""
    from conftest import FIXTURES

    monkeypatch.setenv("LORA_JAX_CACHE", str(tmp_path / "cache"))
    local = ["data=local", f"data.path={FIXTURES / 'local_mr' / 'jsonl'}"]
    local.append("data.columns.text=sentence")
    two, one = tmp_path / "two", tmp_path / "one"
    outs = _finish(_two_processes(two, tmp_path, *local))
    assert "process 0 of 2" in outs[0] and "process 1 of 2" in outs[1]
    monkeypatch.setenv("LORA_JAX_CACHE", str(tmp_path / "cache_one"))
    _finish([_start([*RUN, *local, "data.batch_size=16", f"hydra.run.dir={one}"], tmp_path)])
    assert len(list((tmp_path / "cache").rglob("local_files/*/1.0.0"))) == 1
    losses, _ = _history(two)
    assert losses == pytest.approx(_history(one)[0], rel=1e-5)
    _assert_same_run(two, one)

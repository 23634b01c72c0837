"""One writer per folder: a second sweep into a busy folder is refused before any work, a lock
left by a dead process is taken over, and a finished process leaves no lock behind."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from conftest import FAST, run_module, start_module, wait_until

from lora_jax.runs.layout import LOCK_FILE
from lora_jax.runs.lock import FolderBusyError, lock_folder


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_live_owner_is_refused_and_a_dead_one_taken_over(tmp_path):
    lock = tmp_path / LOCK_FILE
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid()}))
    with pytest.raises(
        FolderBusyError, match=rf"hydra.sweep.dir=.* is busy: process {os.getppid()}"
    ):
        lock_folder(tmp_path, "hydra.sweep.dir")
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": _dead_pid()}))
    assert lock_folder(tmp_path, "hydra.sweep.dir") == lock
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert lock_folder(tmp_path, "hydra.sweep.dir") == lock  # ours already: no-op
    lock.write_text(json.dumps({"host": "other-node", "pid": 1}))
    with pytest.raises(FolderBusyError, match=r"host other-node.*remove"):
        lock_folder(tmp_path, "hydra.sweep.dir")


@pytest.mark.slow
def test_a_second_sweep_into_a_busy_folder_is_refused(tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = [*FAST, "rank=1,2", "logger=none", f"hydra.sweep.dir={sweep_dir}"]
    first = start_module("experiments.sweep", *args, cwd=tmp_path)
    wait_until((sweep_dir / LOCK_FILE).exists, first)
    second = run_module("experiments.sweep", *args, cwd=tmp_path, check=False)
    assert second.returncode == 2, second.stderr
    assert f"is busy: process {first.pid}" in second.stderr and "Traceback" not in second.stderr
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert not (sweep_dir / LOCK_FILE).exists()  # released at exit
    for history in sweep_dir.glob("*/history.jsonl"):  # nothing trained twice
        rows = [json.loads(line) for line in history.read_text().splitlines()]
        steps = [r["step"] for r in rows if "train/loss" in r]
        assert steps and steps == sorted(set(steps)), history
    assert (sweep_dir / "report.html").is_file()

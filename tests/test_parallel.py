"""Data parallelism (`lora_jax.train.parallel`) on 4 fake CPU devices against 1 device.

Each check runs in a subprocess: the fake devices (`XLA_FLAGS`) must be set before JAX is
imported and must not leak into other tests. `NPROC=8` keeps XLA's CPU thread pools from
deadlocking the fake devices on a 2-core machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _python(args: list[str], devices: int, cwd: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "WANDB_MODE": "offline",
        "NPROC": "8",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
    }
    proc = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def test_shard_batch_splits_replicates_and_rejects(tmp_path):
    code = textwrap.dedent(
        """
        import jax, numpy as np
        from lora_jax.train import parallel
        assert jax.device_count() == 4
        mesh = parallel.data_mesh()
        batch = {"input_ids": np.arange(8 * 3).reshape(8, 3), "labels": np.arange(8)}
        sharded = parallel.shard_batch(batch, mesh)
        x = sharded["input_ids"]
        assert [s.data.shape for s in x.addressable_shards] == [(2, 3)] * 4
        np.testing.assert_array_equal(np.asarray(x), batch["input_ids"])
        params = parallel.replicate({"w": np.ones((3, 2))}, mesh)
        assert [s.data.shape for s in params["w"].addressable_shards] == [(3, 2)] * 4
        short = {"labels": np.arange(6)}
        assert parallel.shard_batch(short, mesh, allow_replicated=True)["labels"].sharding \\
            .is_fully_replicated
        try:
            parallel.shard_batch(short, mesh)
        except ValueError as e:
            assert "data.batch_size=6" in str(e) and "4 devices" in str(e), e
        else:
            raise AssertionError("an indivisible batch was accepted")
        print("ok")
        """
    )
    assert _python(["-c", code], 4, tmp_path).stdout.strip().endswith("ok")


def test_four_devices_train_like_one(tmp_path):
    common = [
        "-m",
        "experiments.train",
        "model=tiny_bert",
        "debug=fast",
        "logger=none",
        "trainer.steps=6",
        "trainer.log_every=1",
        "trainer.eval_every=6",
        "trainer.checkpoint_every=6",
        "data.eval_limit=250",  # the last eval batch (26) does not split over 4 devices
    ]
    runs = {}
    for devices in (4, 1):
        out = tmp_path / f"d{devices}"
        proc = _python([*common, f"hydra.run.dir={out}"], devices, tmp_path)
        assert ("data parallel over 4 devices" in proc.stdout) == (devices == 4)
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["devices"] == devices and metrics["steps"] == 6
        rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
        losses = [r["train/loss"] for r in rows if "train/loss" in r]
        runs[devices] = (losses, metrics["final"])
    assert len(runs[4][0]) == 6
    assert runs[4][0] == pytest.approx(runs[1][0], rel=1e-4)
    assert runs[4][1] == pytest.approx(runs[1][1], rel=1e-4)

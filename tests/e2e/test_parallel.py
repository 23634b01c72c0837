"""The device mesh (`lora_jax.train.parallel`) on 8 fake CPU devices against 1 device: batches
split over ("data", "fsdp"), the frozen base sharded over "fsdp" (FSDP), the same losses.

Each check runs in a subprocess: the fake devices (`XLA_FLAGS`) must be set before JAX is
imported and must not leak into other tests. `NPROC=8` keeps XLA's CPU thread pools from
deadlocking the fake devices on a 2-core machine.

Runtime: the 3 tests take 43-50 s of CPU (most of it compiling tiny BERT's step for 1 device
and each mesh); on 2 cores shared with other jobs (load 8-11) 1.7-2.6 min of wall time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

DEVICES = 8
MESHES = ((8, 1), (2, 4), (1, 8))  # (data, fsdp)


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


def test_mesh_batches_and_placement_rules(tmp_path):
    code = textwrap.dedent(
        """
        import jax, numpy as np, optax
        from jax.sharding import PartitionSpec as P
        from lora_jax.train import parallel
        assert jax.device_count() == 8
        mesh = parallel.data_mesh(fsdp=4)
        assert dict(mesh.shape) == {"data": 2, "fsdp": 4}
        # A batch splits over all 8 devices (both axes), in order.
        batch = {"input_ids": np.arange(16 * 3).reshape(16, 3), "labels": np.arange(16)}
        x = parallel.shard_batch(batch, mesh)["input_ids"]
        assert [s.data.shape for s in x.addressable_shards] == [(2, 3)] * 8
        np.testing.assert_array_equal(np.asarray(x), batch["input_ids"])
        short = {"labels": np.arange(6)}
        assert parallel.shard_batch(short, mesh, allow_replicated=True)["labels"].sharding \\
            .is_fully_replicated
        try:
            parallel.shard_batch(short, mesh)
        except ValueError as e:
            assert "data.batch_size=6" in str(e) and "8 devices" in str(e), e
        else:
            raise AssertionError("an indivisible batch was accepted")
        # Placement: the largest dimension fsdp divides; LoRA factors, small and indivisible
        # leaves whole; an optimizer moment where its parameter is.
        params = {
            "kernel": np.ones((64, 96), np.float32),   # 96 is the largest: (64, 24) shards
            "odd": np.ones((1025,), np.float32),       # no dimension 4 divides
            "bias": np.ones((96,), np.float32),        # under MIN_SHARD_SIZE
            "lora_a": np.ones((64, 16), np.float32),   # factors: whole, rank dimension too
            "lora_b": np.ones((16, 96), np.float32),
        }
        spec = lambda t: {k: v.spec for k, v in parallel.param_sharding(t, mesh).items()}
        assert spec(params) == {"kernel": P(None, "fsdp"), "odd": P(), "bias": P(),
                                "lora_a": P(), "lora_b": P()}, spec(params)
        placed = parallel.shard_params(params, mesh)
        assert {s.data.shape for s in placed["kernel"].addressable_shards} == {(64, 24)}
        moments = optax.adam(1e-3).init(params)[0]
        for tree in (moments.mu, moments.nu):
            assert spec(tree) == spec(params)
        assert parallel.param_sharding(params, parallel.data_mesh())["kernel"].spec == P()
        # fsdp must divide the device count: the config error, naming what is allowed.
        try:
            parallel.data_mesh(fsdp=3)
        except ValueError as e:
            assert "trainer.mesh.fsdp=3" in str(e) and "(1, 2, 4, 8)" in str(e), e
            assert "`trainer.mesh.fsdp=2`" in str(e), e
        else:
            raise AssertionError("fsdp=3 over 8 devices was accepted")
        print("ok")
        """
    )
    assert _python(["-c", code], DEVICES, tmp_path).stdout.strip().endswith("ok")


# Trains tiny BERT (LoRA r=8 on q, v) for a few steps on one device, then on each mesh from
# the same state and batches; prints the losses and the bytes each device holds.
MESH_RUNS = """
import json, sys
from pathlib import Path
import jax, numpy as np
from hydra import compose, initialize_config_dir
from lora_jax.config import register_configs, run_config
from lora_jax.train import parallel
from lora_jax.train.setup import plan, prepare_run, step_rng
from lora_jax.train.steps import make_eval_step, make_train_step

root, workdir, meshes = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
workdir.mkdir()
register_configs()
with initialize_config_dir(f"{root}/conf", version_base="1.3"):
    overrides = ["model=tiny_bert", "debug=fast", "logger=none", f"workdir={workdir}"]
    cfg = run_config(compose("config", overrides))
s = prepare_run(cfg, plan(cfg), workdir)
batches = [s.objective.prepare(next(s.data.train_iter)) for _ in range(3)]
init = jax.device_get((s.parts.trainable, s.opt_state))  # host copies: the steps donate
key = step_rng(cfg.seed)
nbytes = lambda tree: sum(x.nbytes for x in jax.tree.leaves(tree))
factor = lambda t: np.asarray(t["encoder"]["layer_0"]["attention"]["q"]["lora_a"]).tolist()

def train(trainable, opt_state, frozen, step):
    losses = []
    for i, batch in enumerate(batches):
        rng = jax.random.fold_in(key, i)
        trainable, opt_state, out = step(trainable, frozen, opt_state, batch, rng)
        losses.append(float(out["loss"]))
    return trainable, opt_state, losses

train_step = make_train_step(s.objective.loss_fn, s.tx)
eval_step = make_eval_step(s.objective.predict_fn)
trainable, _, losses = train(*jax.device_put(init), s.parts.frozen, train_step)
runs = {"1": {"losses": losses, "a": factor(trainable)}}
for data, fsdp in meshes:
    t, o, parts, step, _ = parallel.data_parallel(
        *jax.device_put(init), s.parts, train_step, eval_step, fsdp=fsdp
    )
    t, o, losses = train(t, o, parts.frozen, step)
    frozen = jax.tree.leaves(parts.frozen)
    runs[f"{data}x{fsdp}"] = {
        "losses": losses,
        "a": factor(t),
        "frozen_total": nbytes(frozen),
        "frozen_per_device": sorted(parallel.bytes_per_device(frozen).values()),
        "frozen_whole": nbytes([x for x in frozen if x.sharding.is_fully_replicated]),
        "trainable_whole": all(x.sharding.is_fully_replicated for x in jax.tree.leaves(t)),
        "opt_state_per_device": sorted(parallel.bytes_per_device(o).values()),
        "opt_state_total": nbytes(o),
    }
print("RESULT " + json.dumps(runs))
"""


@pytest.mark.slow
def test_fsdp_meshes_train_like_one_device(tmp_path):
    """(8, 1), (2, 4) and (1, 8) give one device's losses; each device holds ~1/fsdp of the base."""
    args = ["-c", MESH_RUNS, str(ROOT), str(tmp_path / "run"), json.dumps(MESHES)]
    out = _python(args, DEVICES, tmp_path).stdout
    for data, fsdp in MESHES:
        assert f"data parallel over {DEVICES} devices (mesh data={data} x fsdp={fsdp})" in out
    runs = json.loads(out.split("RESULT ", 1)[1])
    one = runs.pop("1")
    for (data, fsdp), run in zip(MESHES, runs.values(), strict=True):
        assert run["losses"] == pytest.approx(one["losses"], rel=1e-5), (data, fsdp)
        np.testing.assert_allclose(run["a"], one["a"], rtol=1e-4, atol=1e-6, err_msg=f"{run}")
        total, held = run["frozen_total"], run["frozen_per_device"]
        assert len(set(held)) == 1 and len(held) == DEVICES  # every device the same share
        # Exactly 1/fsdp of every sharded weight plus the small leaves kept whole (biases,
        # norms: a few per cent of tiny BERT), so about 1/fsdp of the total.
        whole = run["frozen_whole"]
        assert held[0] == (total - whole) // fsdp + whole, run
        assert whole < 0.05 * total if fsdp > 1 else whole == total
        assert run["trainable_whole"]  # the LoRA factors (and the head) on every device
        # The optimizer state (adapters and head only) follows them: whole on each device.
        assert run["opt_state_per_device"] == [run["opt_state_total"]] * DEVICES
    print(json.dumps({k: (v["frozen_total"], v["frozen_per_device"][0]) for k, v in runs.items()}))


@pytest.mark.slow
def test_fsdp_run_trains_like_one_device(tmp_path):
    """The entry point with `trainer.mesh.fsdp=4` on 8 devices: the same losses and metrics."""
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
        "data.eval_limit=250",  # the last eval batch (26) does not split over 8 devices
    ]
    runs = {}
    for devices, mesh in ((DEVICES, ["trainer.mesh.fsdp=4"]), (1, [])):
        out = tmp_path / f"d{devices}"
        proc = _python([*common, *mesh, f"hydra.run.dir={out}"], devices, tmp_path)
        assert ("data parallel over 8 devices (mesh data=2 x fsdp=4)" in proc.stdout) == (
            devices == DEVICES
        )
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["devices"] == devices and metrics["steps"] == 6
        rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
        losses = [r["train/loss"] for r in rows if "train/loss" in r]
        runs[devices] = (losses, metrics["final"])
    assert len(runs[DEVICES][0]) == 6
    assert runs[DEVICES][0] == pytest.approx(runs[1][0], rel=1e-4)
    assert runs[DEVICES][1] == pytest.approx(runs[1][1], rel=1e-4)

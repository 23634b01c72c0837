"""Several processes, one run: JAX's own multi-process runtime (`jax.distributed`), started
when the run is one of several processes, and what the rest of a run asks of it.

`trainer.distributed=auto` (the default) calls `jax.distributed.initialize()` before any other
JAX call when something names several processes: `trainer.coordinator` / `num_processes` /
`process_id`, JAX's `JAX_COORDINATOR_ADDRESS`, a SLURM step of several tasks (srun, submitit)
or a Cloud TPU slice of several hosts (`TPU_WORKER_HOSTNAMES`, `TPU_PROCESS_ADDRESSES`,
`MEGASCALE_COORDINATOR_ADDRESS`); JAX fills in what the keys leave out. `on` always calls it
(JAX detects the cluster, e.g. a TPU VM pod through its metadata server); `off` never does.
For one process nothing happens and every helper below is the one-process identity.

Process 0 writes the run folder and W&B (`is_primary`); evaluation gathers every process's
predictions (`gather`). Example, two processes on one machine:

    python -m experiments.train trainer.coordinator=localhost:1234 trainer.num_processes=2 \\
        trainer.process_id=0 hydra.run.dir=out &     # and process_id=1 in a second shell
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from jax.experimental import multihost_utils

if TYPE_CHECKING:  # Hydra's schemas: not loaded by a train step process
    from lora_jax.config import TrainerConfig

# The task count of a SLURM job step (srun, and submitit through srun): unlike SLURM_NTASKS it
# is not set in an allocation's own shell, where a sweep's launcher may run.
SLURM_TASKS = "SLURM_STEP_NUM_TASKS"
# Host lists of a multi-host TPU slice (GKE, multislice); a TPU VM pod answers through its
# metadata server instead, which only `trainer.distributed=on` asks (JAX does).
TPU_HOSTS = ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES")
TPU_COORDINATOR = "MEGASCALE_COORDINATOR_ADDRESS"


def several_processes(trainer: TrainerConfig, environ: Mapping[str, str] = os.environ) -> str:
    """Why this run is one of several processes ("" if nothing says so): the config's keys,
    then JAX's own variable, then SLURM and TPU slices."""
    if trainer.coordinator or (trainer.num_processes or 1) > 1:
        return "trainer.coordinator/num_processes"
    if environ.get("JAX_COORDINATOR_ADDRESS"):
        return "JAX_COORDINATOR_ADDRESS"
    if int(environ.get(SLURM_TASKS) or 1) > 1:
        return f"SLURM ({SLURM_TASKS}={environ[SLURM_TASKS]})"
    for name in TPU_HOSTS:
        if len((environ.get(name) or "").split(",")) > 1:
            return f"a TPU slice ({name})"
    if environ.get(TPU_COORDINATOR):
        return f"a TPU slice ({TPU_COORDINATOR})"
    return ""


def initialize(trainer: TrainerConfig) -> bool:
    """Start JAX's multi-process runtime if `trainer.distributed` asks for it (module
    docstring); True if it runs. Call before any other JAX call; a second call (the next job
    of a sweep in the same process) leaves the running one as it is.

    Raises:
        ValueError: JAX's backend is already up, so a multi-process start is too late.
    """
    if trainer.distributed == "off" or jax.distributed.is_initialized():
        return jax.distributed.is_initialized()
    reason = several_processes(trainer) if trainer.distributed == "auto" else "distributed=on"
    if not reason:
        return False
    # Cross-process computations on CPU need a collectives library (none by default); GPUs
    # and TPUs use their own, so this only concerns the CPU backend.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address=trainer.coordinator,
            num_processes=trainer.num_processes,
            process_id=trainer.process_id,
            initialization_timeout=trainer.distributed_timeout,
            shutdown_timeout_seconds=trainer.distributed_timeout,
        )
    except RuntimeError as err:
        if "before any JAX calls" not in str(err):
            raise
        raise ValueError(
            f"trainer.distributed={trainer.distributed!r} ({reason}) needs JAX's multi-process "
            "runtime, but JAX was already in use in this process; allowed: start it first "
            "(lora_jax.train.run does) or `trainer.distributed=off` for independent processes."
        ) from None
    print(
        f"[lora_jax] process {jax.process_index()} of {jax.process_count()} ({reason}); "
        f"{jax.device_count()} devices in all"
    )
    return True


def is_primary() -> bool:
    """Whether this process writes the run folder, W&B and the sweep's analysis: process 0, or
    the only one. Never starts JAX's backend where the runtime is not running."""
    return not jax.distributed.is_initialized() or jax.process_index() == 0


def gather(x: Any) -> np.ndarray:
    """`x` whole on every process as numpy: a global array's every shard, or every process's
    local (numpy) rows concatenated in process order; one process: `np.asarray(x)`."""
    if jax.process_count() == 1:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def agreed_signal(received: list[int]) -> int:
    """The signal every process stops on (0: none): the largest any process received, so all
    stop after the same step and save it together. A collective with several processes: each
    calls it once per step; one process: its own."""
    own = received[0] if received else 0
    if jax.process_count() == 1:
        return own
    return int(gather(np.asarray([own], np.int32)).max())


def put(tree: Any, shardings: Any) -> Any:
    """`jax.device_put(tree, shardings)`; with several processes, each holding the whole value
    of every leaf (the same model, the same restored state), each builds its own devices'
    shards from host memory: device_put would copy between processes' devices, which the CPU
    backend does not support, and its arrays' shards cannot be listed."""
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)

    def place(x: Any, sharding: Any) -> jax.Array:
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(place, tree, shardings)

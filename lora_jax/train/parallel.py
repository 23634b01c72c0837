"""Data parallelism over every device with a 1-D `jax.sharding.Mesh` (axis "data").

The parameters and optimizer state are replicated on every device once; each batch is split
along its first (batch) dimension; `jax.jit` then runs the unchanged train step SPMD and XLA
inserts the gradient all-reduce. There is no pmap and no process code of our own, and the
losses match a one-device run to float tolerance. `lora_jax.train` turns this on only when
`jax.device_count() > 1`; with one device nothing changes.

Multi-host (TPU pods, SLURM): call `jax.distributed.initialize()` in every process before any
other JAX call. Each process then reads only its own shard of the data (the Grain loader
shards by `jax.process_index()`), so `data.batch_size` is per process and the global batch is
`data.batch_size * jax.process_count()`; `shard_batch` assembles the global array with
`jax.make_array_from_process_local_data`.

    mesh = data_mesh()
    trainable, frozen, opt_state = replicate((trainable, frozen, opt_state), mesh)
    batch = shard_batch(host_batch, mesh)  # {"input_ids": (B, L) split over "data", ...}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "data"


def data_mesh(devices: Any = None) -> Mesh:
    """A 1-D mesh named "data" over `devices` (default: all devices of all processes)."""
    return Mesh(np.array(jax.devices() if devices is None else devices), (AXIS,))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place every array of `tree` (params, optimizer state) whole on every device of `mesh`."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(batch: dict, mesh: Mesh, *, allow_replicated: bool = False) -> dict:
    """Split a host batch (arrays with the batch dimension first) along the mesh's "data" axis.

    The batch size must divide evenly over this process's devices. With
    `allow_replicated=True` a batch that does not (the last, short eval batch) is placed whole
    on every device instead: correct, only redundant (single process only).
    """
    local = len(mesh.local_devices)
    sizes = {np.shape(x)[0] for x in jax.tree.leaves(batch) if np.ndim(x) > 0}
    if any(n % local for n in sizes):
        if allow_replicated and jax.process_count() == 1:
            return replicate(batch, mesh)
        raise ValueError(
            f"data.batch_size={sorted(sizes)[0] if len(sizes) == 1 else sorted(sizes)} does not "
            f"divide over {local} devices; use a multiple of {local} (data parallelism splits "
            "each batch evenly over jax.local_device_count() devices)."
        )
    sharding = NamedSharding(mesh, P(AXIS))
    if jax.process_count() > 1:
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch
        )
    return jax.device_put(batch, sharding)


def data_parallel(
    trainable: Any, opt_state: Any, parts: Any, train_step: Callable, eval_step: Callable
) -> tuple[Any, Any, Any, Callable, Callable]:
    """`train.py`'s hook: replicate the state once and wrap the steps to shard their batches.

    `parts` is a `Partition`; its frozen half comes back replicated. The steps are the ones
    from `lora_jax.train.steps` (`train_step(trainable, frozen, opt_state, batch, rng)`,
    `eval_step(trainable, frozen, batch)`).
    """
    mesh = data_mesh()
    print(
        f"[lora_jax] data parallel over {jax.device_count()} devices ({mesh.devices.size} in mesh)"
    )
    trainable, frozen, opt_state = replicate((trainable, parts.frozen, opt_state), mesh)

    def sharded_train_step(trainable, frozen, opt_state, batch, rng):
        return train_step(trainable, frozen, opt_state, shard_batch(batch, mesh), rng)

    def sharded_eval_step(trainable, frozen, batch):
        return eval_step(trainable, frozen, shard_batch(batch, mesh, allow_replicated=True))

    return (
        trainable,
        opt_state,
        parts._replace(frozen=frozen),
        sharded_train_step,
        sharded_eval_step,
    )

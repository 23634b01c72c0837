"""The devices of a run: a 2-D `jax.sharding.Mesh` ("data" x "fsdp"), batches split over all
of its devices, and the frozen base sharded over "fsdp" (FSDP).

`trainer.mesh.fsdp=N` groups the devices into data = devices / N rows of N. Each frozen weight
is cut along one dimension into N shards, one per device of a row (`param_sharding`: the
largest dimension N divides; leaves under `MIN_SHARD_SIZE` elements or with no such dimension
stay whole). Every batch splits along its first dimension over all devices, both axes. The
LoRA factors stay whole on every device; the optimizer state exists only for what trains
(`partition.make_optimizer`) and is placed like the leaf it belongs to. `jax.jit` with these
shardings runs the unchanged train step SPMD: XLA gathers each weight where it is used and
reduces the gradients; there is no pmap and no process code of our own. `fsdp=1`, the default,
replicates every weight: plain data parallelism. `lora_jax.train` turns this on only when
`jax.device_count() > 1`; with one device nothing changes.

Why the factors are whole, where qwix (`_get_or_create_lora_params`) gives A the sharding of
the kernel's input dimension and B that of its output, and levanter shards A's `In` axis as the
kernel's: the factors are small (MiniLM, r=8 on Wq, Wv: 0.3% of the parameters; r=64: 2.6%),
so sharding them saves little and costs a gather per adapted matrix per step, and whole factors
are what the adapter export, the spectra and every process read without a gather. Full
fine-tuning trains the base itself: those weights (and their optimizer state) are sharded by
the same rule.

Several processes (TPU pods, SLURM): `lora_jax.train.distributed` starts `jax.distributed`
before any other JAX call and places the state (`distributed.put`). Each process reads its
block of every global batch (`lora_jax.data.shards`), so `data.batch_size` is per process;
`shard_batch` assembles the global array with `jax.make_array_from_process_local_data`.

    mesh = data_mesh(fsdp=4)               # 8 devices: data=2 x fsdp=4
    frozen = shard_params(frozen, mesh)    # a (384, 1536) kernel: a (384, 384) shard per device
    batch = shard_batch(host_batch, mesh)  # {"input_ids": (B, L) split B-wise over 8 devices}
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lora_jax.config_rules import value_error
from lora_jax.lora import LORA_LEAVES
from lora_jax.train import distributed

AXES = ("data", "fsdp")
# Leaves smaller than this (biases, norms, a small head) stay whole: sharding them would save
# at most a few KiB per device and add a gather each.
MIN_SHARD_SIZE = 1024


def check_mesh(fsdp: int, devices: int | None = None) -> None:
    """Raise the config error unless `fsdp` (`trainer.mesh.fsdp`) divides the device count
    (`devices`, default `jax.device_count()`). fsdp=1 divides every count and starts nothing
    (JAX's backend must not start before `jax.distributed.initialize` in a multi-process run)."""
    if fsdp == 1:
        return
    n = jax.device_count() if devices is None else devices
    if fsdp < 1 or n % fsdp:
        divisors = [d for d in range(1, n + 1) if n % d == 0]
        fix = max(d for d in divisors if d <= max(fsdp, 1))
        raise value_error(
            "trainer.mesh.fsdp",
            fsdp,
            f"a divisor of the device count {n} ({', '.join(map(str, divisors))})",
            f"trainer.mesh.fsdp={fix}",
        )


def data_mesh(devices: Any = None, *, fsdp: int = 1) -> Mesh:
    """The ("data", "fsdp") mesh over `devices` (default: all devices of all processes): rows of
    `fsdp` devices that share one copy of the frozen base; data = devices / fsdp rows."""
    devices = np.array(jax.devices() if devices is None else devices)
    check_mesh(fsdp, devices.size)
    return Mesh(devices.reshape(devices.size // fsdp, fsdp), AXES)


def _spec(key: Any, shape: tuple[int, ...], fsdp: int, min_size: int) -> P:
    """One leaf's placement: its largest dimension that `fsdp` divides, over "fsdp"."""
    if fsdp == 1 or key in LORA_LEAVES or int(np.prod(shape)) < min_size:
        return P()
    dims = [i for i, n in enumerate(shape) if n % fsdp == 0]
    if not dims:
        return P()
    dim = max(dims, key=lambda i: shape[i])  # the first of equal ones
    return P(*(AXES[1] if i == dim else None for i in range(len(shape))))


def param_sharding(tree: Any, mesh: Mesh, min_size: int = MIN_SHARD_SIZE) -> Any:
    """The `NamedSharding` of every leaf of a parameter or optimizer-state tree on `mesh`.

    A leaf named `lora_a`/`lora_b` (a factor, or its optimizer moments) is replicated; any other
    leaf of `min_size` elements or more is split over "fsdp" along its largest dimension that
    the axis size divides, else replicated. The rule reads only the leaf's name and shape, so an
    optimizer moment lands where its parameter is.
    """
    fsdp = mesh.shape[AXES[1]]

    def sharding(path: tuple, leaf: Any) -> NamedSharding:
        key = getattr(path[-1], "key", None) if path else None
        return NamedSharding(mesh, _spec(key, np.shape(leaf), fsdp, min_size))

    return jax.tree_util.tree_map_with_path(sharding, tree)


def shard_params(tree: Any, mesh: Mesh) -> Any:
    """Place `tree` (parameters or optimizer state) on `mesh` as `param_sharding` says."""
    return jax.device_put(tree, param_sharding(tree, mesh))


def placer(mesh: Mesh, min_size: int = MIN_SHARD_SIZE) -> Callable[[np.ndarray], jax.Array]:
    """Puts one host array of the base (a checkpoint tensor, `load_model(place=...)`) where
    `param_sharding` would: each tensor reaches its devices as it is read, so neither the host
    nor one device ever holds the whole model."""
    fsdp = mesh.shape[AXES[1]]

    def place(array: np.ndarray) -> jax.Array:
        sharding = NamedSharding(mesh, _spec(None, np.shape(array), fsdp, min_size))
        return distributed.put(array, sharding)

    return place


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place every array of `tree` whole on every device of `mesh`."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


def bytes_per_device(tree: Any) -> dict[Any, int]:
    """Bytes of `tree`'s arrays that each (addressable) device holds, from their shards."""
    held: Counter = Counter()
    for leaf in jax.tree.leaves(tree):
        for shard in getattr(leaf, "addressable_shards", ()):
            held[shard.device] += shard.data.nbytes
    return dict(held)


def _share(tree: Any) -> str:
    """What the fullest device holds of `tree`, e.g. '22.78 of 90.86 MB'."""
    held = max(bytes_per_device(tree).values(), default=0)
    total = sum(x.nbytes for x in jax.tree.leaves(tree))
    return f"{held / 1e6:.2f} of {total / 1e6:.2f} MB"


def shard_batch(batch: dict, mesh: Mesh, *, allow_replicated: bool = False) -> dict:
    """Split a host batch (arrays with the batch dimension first) over all devices of `mesh`.

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
    sharding = NamedSharding(mesh, P(AXES))  # the batch dimension over both axes
    if jax.process_count() > 1:
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch
        )
    return jax.device_put(batch, sharding)


def data_parallel(
    trainable: Any,
    opt_state: Any,
    parts: Any,
    train_step: Callable,
    eval_step: Callable,
    fsdp: int = 1,
) -> tuple[Any, Any, Any, Callable, Callable]:
    """`runner.py`'s hook: place the state on the mesh once, wrap the steps to split batches.

    `parts` is a `Partition`; its frozen half comes back sharded over `fsdp` devices. The steps
    are the ones from `lora_jax.train.steps` (`train_step(trainable, frozen, opt_state, batch,
    rng)`, `eval_step(trainable, frozen, batch)`).
    """
    mesh = data_mesh(fsdp=fsdp)
    state = (trainable, parts.frozen, opt_state)
    shardings = tuple(param_sharding(x, mesh) for x in state)
    trainable, frozen, opt_state = distributed.put(state, shardings)
    rows, cols = mesh.shape[AXES[0]], mesh.shape[AXES[1]]
    print(
        f"[lora_jax] data parallel over {jax.device_count()} devices (mesh data={rows} x "
        f"fsdp={cols}); per device: parameters {_share((trainable, frozen))}, optimizer state "
        f"{_share(opt_state)}"
    )
    t_sh, f_sh, o_sh = shardings
    # The steps are jitted already; jitting again with the shardings pins them, so the state
    # comes back placed as it went in (one compile) and stays donated.
    step = jax.jit(
        train_step,
        in_shardings=(t_sh, f_sh, o_sh, None, None),
        out_shardings=(t_sh, o_sh, None),
        donate_argnums=(0, 2),
    )
    predict = jax.jit(eval_step, in_shardings=(t_sh, f_sh, None))

    def sharded_train_step(trainable, frozen, opt_state, batch, rng):
        return step(trainable, frozen, opt_state, shard_batch(batch, mesh), rng)

    def sharded_eval_step(trainable, frozen, batch):
        return predict(trainable, frozen, shard_batch(batch, mesh, allow_replicated=True))

    return (
        trainable,
        opt_state,
        parts._replace(frozen=frozen),
        sharded_train_step,
        sharded_eval_step,
    )

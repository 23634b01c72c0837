"""Mixed precision (`model.dtype=bfloat16`): the frozen half of the params stored in bfloat16,
and whether this CPU multiplies bfloat16 fast. The model computes its projections in bfloat16
(`lora_jax.lora.mixed_dot`); what trains, and so the optimizer state, stays float32.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from lora_jax.lora import check_dtype
from lora_jax.partition import Partition

# /proc/cpuinfo flags of x86 CPUs with bfloat16 matmul instructions (XLA:CPU uses them for
# bf16 x bf16 -> float32 dots); without them XLA emulates bfloat16, slower than float32.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cast_frozen(parts: Partition, dtype: str) -> Partition:
    """`parts` with the floating leaves of its frozen half stored in `dtype` (integer leaves
    and the trainable half untouched). Under full fine-tuning nothing is frozen: the trainable
    float32 weights are the master copy and only the products run in bfloat16.

    Example:
        >>> parts = cast_frozen(split(params, labels), "bfloat16")
        >>> parts.frozen["encoder"]["layer_0"]["attention"]["q"]["kernel"].dtype
        dtype(bfloat16)
    """
    if check_dtype(dtype) == "float32":
        return parts

    def cast(leaf: Any) -> Any:
        return leaf.astype(dtype) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf

    return parts._replace(frozen=jax.tree.map(cast, parts.frozen))


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The first CPU's /proc/cpuinfo flags (empty where there is no such file)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags":
                return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def slow_bf16_notice(dtype: str, backend: str | None = None, flags: frozenset[str] | None = None):
    """A one-line notice when `dtype` is bfloat16 on a CPU without `BF16_CPU_FLAGS` (it works,
    but slower than float32); None otherwise. `backend`, `flags`: this machine's by default."""
    backend = jax.default_backend() if backend is None else backend
    flags = cpu_flags() if flags is None else flags
    if check_dtype(dtype) == "float32" or backend != "cpu" or flags & set(BF16_CPU_FLAGS):
        return None
    return (
        f"[lora_jax] model.dtype={dtype}: this CPU has neither {' nor '.join(BF16_CPU_FLAGS)}; "
        "bfloat16 runs emulated, likely slower than model.dtype=float32."
    )


@functools.cache
def warn_if_slow(dtype: str) -> None:
    """Print `slow_bf16_notice` once per process (a sweep's runs share the machine)."""
    notice = slow_bf16_notice(dtype)
    if notice:
        print(notice, file=sys.stderr)

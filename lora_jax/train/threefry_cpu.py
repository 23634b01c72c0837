"""Dropout's random bits on CPU without a loop: the same bits, in less memory.

JAX lowers its Threefry hash for CPU as a rolled loop (five iterations of four rounds, to
compile faster), and unrolled everywhere else. A rolled loop carries two uint32 arrays of the
mask's shape through a `while`, which XLA must hold in memory and cannot fuse into the
dropout's `select`; the unrolled hash fuses into it. On MiniLM's LoRA r=8 train step (batch
32 x 64, its own dropout 0.1: `python -m benchmarks.mem_probe --as-trained`) the unrolled
lowering cut XLA's step scratch from 599 to 461 MB (what the step needs without dropout) and
the process's peak RSS by ~100 MB, steps and compiling no slower, the trained parameters bit
for bit the same: both lowerings compute the same integer hash, which the Random123 known
answers and a NumPy Threefry check (tests/unit/test_threefry_cpu.py).

It reaches into `jax._src` (the lowering JAX registers for every other platform); pyproject
pins jax below 0.11, and the test fails if the rule stops applying.
"""

from __future__ import annotations

import functools


@functools.cache
def unroll_threefry_on_cpu() -> None:
    """From now on in this process, lower Threefry on CPU as JAX lowers it on accelerators.
    Programs lowered before keep the loop (the same bits)."""
    from jax._src.interpreters import mlir
    from jax._src.random import threefry2x32

    mlir.register_lowering(
        threefry2x32.threefry2x32_p, threefry2x32._threefry2x32_lowering_rule, platform="cpu"
    )

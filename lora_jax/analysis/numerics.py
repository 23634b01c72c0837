"""Numerics shared by the analysis functions: float32-or-wider inputs, rank masks, and
LAPACK on one thread for the small decompositions the analysis makes by the thousand."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import jax
import jax.numpy as jnp

__all__ = ["as_float", "on_one_blas_thread", "rank_mask"]


def as_float(x: jax.Array) -> jax.Array:
    """x as an array of at least float32 (bfloat16 factors are decomposed in float32)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def rank_mask(s: jax.Array, shape: tuple[int, ...], rtol: float | None) -> jax.Array:
    """True for singular values that define a direction (s > rtol * s_max).

    The default rtol is numpy's matrix_rank tolerance, max(shape) * eps.
    """
    if rtol is None:
        rtol = max(shape) * float(jnp.finfo(s.dtype).eps)
    tol = rtol * jnp.max(s, initial=0.0)
    return s > tol


_F = TypeVar("_F", bound=Callable)


def on_one_blas_thread(fn: _F) -> _F:
    """Run the jitted `fn` to completion with BLAS/LAPACK on one thread (traced calls: as is).

    XLA:CPU hands QR and SVD to LAPACK (OpenBLAS, through jaxlib), which splits these small
    problems over every core and then spends more time synchronising its threads than
    computing: on a busy 2-core machine the Table 6 analysis took 45 s of CPU, 27 s on one
    thread. The results agree to float32 accuracy; whether they are the same bits depends on
    the CPU's LAPACK kernels (the same on one Xeon, up to 5e-5 apart on an AMD EPYC), so
    nothing may rely on bits across thread counts.
    """

    @functools.wraps(fn)
    def run(*args, **kwargs):
        if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((args, kwargs))):
            return fn(*args, **kwargs)
        from threadpoolctl import threadpool_limits  # scikit-learn's dependency

        with threadpool_limits(1, user_api="blas"):
            return jax.block_until_ready(fn(*args, **kwargs))  # finish inside the limit

    return run  # type: ignore[return-value]

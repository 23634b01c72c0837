"""Tolerances derived from the arithmetic and the backend, for results that are equal in exact
arithmetic but may be reached in another order (another XLA fusion, BLAS kernel, thread count,
CPU or device).

Nothing here is calibrated on one machine's observed error. The unit roundoff u is the
relative error of one rounding of a float32 product on this backend as configured: float32's
2^-24 on a CPU and wherever JAX's matmul precision is "highest" (as `scripts/gpu_check.sh`
runs the tests), TF32's 2^-11 on a GPU at its default precision, bfloat16's 2^-8 on a TPU at
its default precision. A sum of n terms in another order differs by about sqrt(n) u of the sum
of their magnitudes (probabilistic rounding-error analysis, Higham & Mary 2019); the bounds
below allow n u, the worst case.

Example:
    >>> reordered_atol(logits, ops=cfg.num_layers * cfg.hidden_size)
"""

from __future__ import annotations

import math

import jax
import numpy as np

FLOAT32_U = 2.0**-24
# The input rounding of a float32 matmul at JAX's default precision, per backend.
DEFAULT_PRECISION_U = {"cpu": FLOAT32_U, "gpu": 2.0**-11, "tpu": 2.0**-8}


def unit_roundoff() -> float:
    """u of one float32 matmul on the default backend at JAX's configured matmul precision."""
    precision = str(jax.config.jax_default_matmul_precision or "default").lower()
    if precision in ("highest", "float32"):
        return FLOAT32_U
    return DEFAULT_PRECISION_U.get(jax.default_backend(), FLOAT32_U)


def reordered_atol(reference, ops: int) -> float:
    """Absolute tolerance for float32 values equal in exact arithmetic to `reference` but
    computed along a path of `ops` roundings in another order: ops * u * max |reference|."""
    return ops * unit_roundoff() * float(np.max(np.abs(np.asarray(reference, np.float64))))


def svd_residual_tol(a) -> float:
    """Bound on ||A - U diag(s) V^T||_F for a float32 SVD of A from any backward-stable solver
    (LAPACK's Householder bidiagonalisation, cuSOLVER's QR or Jacobi): min(m, n) orthogonal
    transformations, each a rounding of about sqrt(max(m, n)) u ||A||_F, times 2 for the
    product that forms U diag(s) V^T again."""
    m, n = np.shape(a)
    frobenius = float(np.linalg.norm(np.asarray(a, np.float64)))
    return 2 * min(m, n) * np.sqrt(max(m, n)) * unit_roundoff() * frobenius


def float32_forward_tolerance(logits: np.ndarray, depth: int, width: int) -> float:
    """How far two float32 forwards of one model may drift when they sum in different orders
    (torch's and XLA's kernels): sqrt(n) * eps per n-term dot product (Higham's probabilistic
    round-off bound), over `depth` layers in sequence with dot products of at most `width` terms,
    relative to the logits' scale. On SmolLM2 (30 layers, FFN 1536, |logits| ~ 30): ~8e-4,
    4x the 1.5e-4 and 2.1e-4 measured on a Xeon and an AMD EPYC."""
    eps = 2 * FLOAT32_U  # float32's machine epsilon, 2^-23
    return math.sqrt(depth * width) * eps * float(np.abs(logits).max())

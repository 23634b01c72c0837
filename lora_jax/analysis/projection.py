"""How dW relates to the frozen W (Hu et al. 2021, Sec. 7.3, Table 7 and Fig. 8).

The paper writes W (out, in) and dW = U S V^T with U the left (output-side) and V the right
(input-side) singular vectors, and measures ||U^T W V||_F over the top-r directions ("W
projected onto dW's r-dimensional subspace"). Our kernel is K = W^T (in, out), and
`spectrum.dw_svd` returns dW_ours = u S v^T with u (in, r) input-side and v (out, r)
output-side, so

    ||U^T W_paper V||_F = ||(v^T K^T u)||_F = ||u^T K v||_F,

i.e. in our layout the INPUT-side basis goes on the left of the kernel and the OUTPUT-side basis
on its right. The same form is used with W's own top-r singular directions (K = P diag(sig) Q^T,
P input side, Q output side: ||P_r^T K Q_r||_F = sqrt(sig_1^2 + ... + sig_r^2)) and with
independent uniformly random orthonormal directions, whose expected squared value is
r^2 / (in * out) * ||W||_F^2 (`proj_random_rms` is its square root).

dW includes the LoRA scale (it is the update actually added to W), and W is the FROZEN
pretrained kernel, not the merged one. r defaults to the adapter rank, as in Table 7
(the random row 0.02 / 0.33 for r = 4 / 64 matches r^2 / d^2 * ||W||_F^2 with d = 12288).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lora_jax.analysis.numerics import as_float, on_one_blas_thread, rank_mask
from lora_jax.analysis.similarity import subspace_similarity
from lora_jax.analysis.spectrum import dw_svd

__all__ = [
    "DW_VS_W_KEYS",
    "KernelSVD",
    "dw_vs_w",
    "kernel_svd",
    "random_projection_norm",
    "w_dw_phi_grid",
]

DW_VS_W_KEYS = (
    "w_norm",
    "dw_norm",
    "dw_rank",
    "proj_dw",
    "proj_w",
    "proj_random",
    "proj_random_rms",
    "amplification",
    "phi_input",
    "phi_output",
)


def _random_basis(key: jax.Array, n: int, r: int, dtype) -> jax.Array:
    """A uniformly random (Haar) orthonormal basis (n, r): Q of a Gaussian (n, r) matrix."""
    return jnp.linalg.qr(jax.random.normal(key, (n, r), dtype), mode="reduced")[0]


@on_one_blas_thread
@partial(jax.jit, static_argnames="r")
def random_projection_norm(kernel: jax.Array, key: jax.Array, r: int) -> jax.Array:
    """||P^T K Q||_F for independent random orthonormal P (in, r), Q (out, r) drawn from `key`."""
    kernel = as_float(kernel)
    k_in, k_out = jax.random.split(key)
    p = _random_basis(k_in, kernel.shape[0], r, kernel.dtype)
    q = _random_basis(k_out, kernel.shape[1], r, kernel.dtype)
    return jnp.linalg.norm(p.T @ kernel @ q)


class KernelSVD(NamedTuple):
    """Thin SVD of a kernel K (in, out) = p @ diag(s) @ qt, s descending (`kernel_svd`)."""

    p: jax.Array  # (in, k) input-side singular vectors, k = min(in, out)
    s: jax.Array  # (k,)
    qt: jax.Array  # (k, out): rows are the output-side singular vectors


# One BLAS thread (see `spectrum.on_one_blas_thread`) measured 0.02 s of CPU for a 384 x 384
# SVD against 0.1-0.2 s with 2 threads on a busy 2-core machine. Larger kernels keep the
# library's own threading, where it may pay.
_ONE_THREAD_MAX = 1024


def kernel_svd(kernel: jax.Array) -> KernelSVD:
    """W's thin SVD, computed once and passed to `dw_vs_w` / `w_dw_phi_grid` as `w_svd`.

    Every adapter of every run on the same frozen W needs the same decomposition; a full SVD
    costs far more than the rest of `dw_vs_w`. The results are the same bits either way:
    both paths run this function.

    Example:
        >>> w_svd = kernel_svd(kernel)
        >>> dw_vs_w(kernel, a, b, scale, key, w_svd=w_svd)  # == dw_vs_w(kernel, a, b, scale, key)
    """
    kernel = jnp.asarray(kernel)
    if max(kernel.shape) > _ONE_THREAD_MAX:
        return _kernel_svd(kernel)
    return on_one_blas_thread(_kernel_svd)(kernel)


@jax.jit
def _kernel_svd(kernel: jax.Array) -> KernelSVD:
    return KernelSVD(*jnp.linalg.svd(as_float(kernel), full_matrices=False))


def _checked_svd(kernel: jax.Array, w_svd: KernelSVD | None) -> KernelSVD:
    if w_svd is None:
        return kernel_svd(kernel)
    w_svd = KernelSVD(*w_svd)
    k = min(kernel.shape)
    if w_svd.p.shape != (kernel.shape[0], k) or w_svd.qt.shape != (k, kernel.shape[1]):
        raise ValueError(
            f"w_svd has p {w_svd.p.shape}, qt {w_svd.qt.shape}; for kernel {kernel.shape} "
            f"allowed: p {(kernel.shape[0], k)}, qt {(k, kernel.shape[1])}, i.e. "
            "kernel_svd(kernel) of this very kernel."
        )
    return w_svd


@partial(jax.jit, static_argnames="r")
def _dw_vs_w(kernel, w_svd, lora_a, lora_b, scale, key, r):
    kernel = as_float(kernel)
    n_in, n_out = kernel.shape
    u, s, v = dw_svd(lora_a, lora_b, scale)
    dw_rank = jnp.sum(rank_mask(s, (n_in, n_out), None))
    defined = dw_rank >= r  # dW's top-r directions all exist; otherwise some are arbitrary
    u, v = u[:, :r].astype(kernel.dtype), v[:, :r].astype(kernel.dtype)
    pw, sw, qwt = w_svd
    proj_dw = jnp.linalg.norm(u.T @ kernel @ v)
    dw_norm = jnp.sqrt(jnp.sum(jnp.square(s)))
    nan = jnp.asarray(jnp.nan, kernel.dtype)
    return {
        "w_norm": jnp.linalg.norm(kernel),
        "dw_norm": dw_norm,
        "dw_rank": dw_rank.astype(kernel.dtype),
        "proj_dw": jnp.where(defined, proj_dw, nan),
        "proj_w": jnp.sqrt(jnp.sum(jnp.square(sw[:r]))),
        "proj_random": random_projection_norm(kernel, key, r),
        "proj_random_rms": r / jnp.sqrt(n_in * n_out) * jnp.linalg.norm(kernel),
        "amplification": jnp.where(defined, dw_norm / proj_dw, nan),
        # phi(r, r) between W's and dW's top-r singular directions, input and output side.
        "phi_input": jnp.where(defined, subspace_similarity(pw[:, :r], u)[-1, -1], nan),
        "phi_output": jnp.where(defined, subspace_similarity(qwt[:r].T, v)[-1, -1], nan),
    }


def dw_vs_w(
    kernel: jax.Array,
    lora_a: jax.Array,
    lora_b: jax.Array,
    scale: float,
    key: jax.Array,
    r: int | None = None,
    w_svd: KernelSVD | None = None,
) -> dict[str, float]:
    """Table 7 numbers for one adapted matrix, as Python floats.

    Args:
        kernel: the frozen pretrained kernel K (in, out) (the paper's W transposed).
        lora_a: (in, rank). lora_b: (rank, out). scale: the LoRA scaling (dW = scale * a @ b).
        key: PRNG key for the random directions.
        r: number of directions (default: the adapter rank, capped at min(in, out)).
        w_svd: `kernel_svd(kernel)`, to share one SVD of W between the adapters and runs
            that adapt it (same numbers as without it; default: computed here).

    Returns:
        dict of floats:
            r: the r used.
            w_norm: ||W||_F. dw_norm: ||dW||_F.
            dw_rank: numerical rank of dW (singular values above max(in, out) * eps * s_max).
            proj_dw: ||U^T W V||_F with U, V dW's top-r singular directions (see the module
                docstring for the orientation).
            proj_w: the same with W's own top-r singular directions.
            proj_random: the same with random orthonormal directions drawn from `key`.
            proj_random_rms: sqrt(E[proj_random^2]) = r / sqrt(in * out) * ||W||_F.
            amplification: dw_norm / proj_dw.
            phi_input, phi_output: phi(r, r) (Eq. 4) between W's and dW's top-r singular
                directions on the input (our rows) and output (our columns) side.
        proj_dw, amplification and the phis are NaN when dW has fewer than r numerically
        nonzero singular values (e.g. lora_b = 0 at initialisation): its top-r directions
        are then partly arbitrary.
    """
    kernel, lora_a, lora_b = jnp.asarray(kernel), jnp.asarray(lora_a), jnp.asarray(lora_b)
    if kernel.ndim != 2 or kernel.shape != (lora_a.shape[0], lora_b.shape[-1]):
        raise ValueError(
            f"kernel {kernel.shape} must be (in, out) = ({lora_a.shape[0]}, {lora_b.shape[-1]}) "
            f"to match lora_a {lora_a.shape} and lora_b {lora_b.shape}."
        )
    k_max = min(kernel.shape[0], kernel.shape[1], lora_a.shape[1])
    r = k_max if r is None else int(r)
    if not 1 <= r <= k_max:
        raise ValueError(f"r={r} is not valid; allowed: 1..{k_max} (min(in, out, adapter rank)).")
    w_svd = _checked_svd(kernel, w_svd)
    out = on_one_blas_thread(_dw_vs_w)(kernel, w_svd, lora_a, lora_b, scale, key, r=r)
    return {"r": float(r), **{k: float(out[k]) for k in DW_VS_W_KEYS}}


def w_dw_phi_grid(
    kernel: jax.Array,
    lora_a: jax.Array,
    lora_b: jax.Array,
    scale: float | jax.Array = 1.0,
    side: str = "input",
    num_w: int | None = None,
    rtol: float | None = None,
    w_svd: KernelSVD | None = None,
) -> jax.Array:
    """Fig. 8: phi(i, j) between W's top-i and dW's top-j singular directions.

    Args:
        kernel: frozen kernel (in, out). lora_a (in, r), lora_b (r, out), scale: the adapter.
        side: "input" (W's and dW's input-side singular vectors, in R^in) or "output" (R^out).
        num_w: how many of W's directions (rows); default min(in, out).
        rtol: relative tolerance for numerically zero singular values (default
            max(in, out) * eps).
        w_svd: `kernel_svd(kernel)`, shared between calls on the same W (default: computed).

    Returns:
        (num_w, k) grid, rows i = 1..num_w over W, columns j = 1..k over dW
        (k = min(in, out, r)); NaN in rows/columns past W's or dW's numerical rank.
    """
    if side not in ("input", "output"):
        raise ValueError(f"side={side!r} is not valid; allowed: 'input', 'output'.")
    kernel = jnp.asarray(kernel)
    w_svd = _checked_svd(kernel, w_svd)
    return on_one_blas_thread(_w_dw_phi_grid)(
        kernel, w_svd, lora_a, lora_b, scale, side=side, num_w=num_w, rtol=rtol
    )


@partial(jax.jit, static_argnames=("side", "num_w", "rtol"))
def _w_dw_phi_grid(kernel, w_svd, lora_a, lora_b, scale, side, num_w, rtol):
    kernel = as_float(kernel)
    pw, sw, qwt = w_svd
    u, s, v = dw_svd(lora_a, lora_b, scale)
    w_basis = pw if side == "input" else qwt.T
    dw_basis = u if side == "input" else v
    num_w = w_basis.shape[1] if num_w is None else num_w
    grid = subspace_similarity(w_basis[:, :num_w], dw_basis.astype(kernel.dtype))
    ok_w = rank_mask(sw, kernel.shape, rtol)[:num_w]
    ok_dw = rank_mask(s, kernel.shape, rtol)
    return jnp.where(ok_w[:, None] & ok_dw[None, :], grid, jnp.nan)

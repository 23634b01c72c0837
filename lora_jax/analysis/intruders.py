"""Intruder dimensions (Shuttleworth et al. 2024, "LoRA vs Full Fine-tuning: An Illusion of
Equivalence"): singular vectors of a fine-tuned W that are far from every singular vector of
the pretrained W_0.

For each of the top-k singular vectors of W_ft, its largest |cosine| with all of W_0's
singular vectors; an intruder is one below epsilon. Low-rank LoRA creates them, full
fine-tuning hardly does. Scaling the intruders' singular values down (by lambda) reduces
forgetting. We follow PEFT's `reduce_intruder_dimension` (defaults top_k 10, epsilon 0.5,
lambda 0.75), which compares the singular vectors of PyTorch's (out, in) weight's left side:
in our (in, out) layout that is the OUTPUT side (`side="output"`, the default).

Example:
    >>> count_intruders(w0, w0 + dw, top_k=10, epsilon=0.5)  # doctest: +SKIP
    3
"""

from __future__ import annotations

from collections.abc import Iterable

import jax.numpy as jnp
import numpy as np

from lora_jax.analysis.full_update import update_svd

__all__ = [
    "adapter_intruder_cosines",
    "count_intruders",
    "intruder_cosines",
    "intruder_curve",
    "scale_intruders",
]

TOP_K, EPSILON, LAMBDA = 10, 0.5, 0.75  # PEFT's reduce_intruder_dimension defaults
# Up to this smaller side W_ft is decomposed densely; above, only its top-k by Lanczos.
_DENSE_MAX = 512


def _side(svd: tuple, side: str):
    if side not in ("input", "output"):
        raise ValueError(f"side={side!r} is not valid; allowed: input, output.")
    return svd[0] if side == "input" else svd[2]


def _cosines(w0_svd: tuple, ft_svd: tuple, top_k: int, side: str) -> np.ndarray:
    base, tuned = _side(w0_svd, side), _side(ft_svd, side)[:, :top_k]
    return np.asarray(jnp.max(jnp.abs(tuned.T @ base), axis=1))


def intruder_cosines(
    w0: np.ndarray,
    w_ft: np.ndarray,
    top_k: int = TOP_K,
    side: str = "output",
    w0_svd: tuple | None = None,
) -> np.ndarray:
    """(k,) for each of W_ft's top-k singular vectors, its largest |cosine| with W_0's.

    `w0_svd`: `update_svd(w0)`, to decompose W_0 once for every update compared with it.
    """
    return _cosines(update_svd(w0) if w0_svd is None else w0_svd, update_svd(w_ft), top_k, side)


def _top_singular_vectors(kernel, a, b, scale: float, k: int):
    """(u (in, k), v (out, k)) of W_ft = kernel + scale·a@b's top-k singular triplets."""
    kernel, a, b = (np.asarray(x, np.float32) for x in (kernel, a, b))
    if min(kernel.shape) <= _DENSE_MAX:
        u, _, vt = np.linalg.svd(kernel + np.float32(scale) * (a @ b), full_matrices=False)
        return u[:, :k], vt[:k].T
    from scipy.sparse.linalg import LinearOperator, svds

    # ARPACK on the operator: W_ft is never formed; ~0.2 s for a 2048 x 8192 W against ~10 s
    # for its full SVD, the same vectors to ~1e-7.
    op = LinearOperator(
        kernel.shape,
        matvec=lambda x: kernel @ x + scale * (a @ (b @ x)),
        rmatvec=lambda y: kernel.T @ y + scale * (b.T @ (a.T @ y)),
        dtype=np.float32,
    )
    u, s, vt = svds(op, k=k, rng=0)
    order = np.argsort(-s)
    return u[:, order], vt[order].T


def adapter_intruder_cosines(
    w0_svd: tuple, kernel, a, b, scale: float, top_k: int = TOP_K, side: str = "output"
) -> np.ndarray:
    """`intruder_cosines(W_0, W_0 + dW)` for a LoRA update dW = scale·a@b, given W_0's thin
    SVD (`projection.kernel_svd`: p, s, qt): only W_ft's top-k singular vectors are computed."""
    p, sw, qt = w0_svd
    k = min(top_k, *kernel.shape)
    u, v = _top_singular_vectors(kernel, a, b, scale, k)
    return np.asarray(_cosines((p, sw, np.asarray(qt).T), (u, None, v), k, side))


def count_intruders(
    w0: np.ndarray,
    w_ft: np.ndarray,
    top_k: int = TOP_K,
    epsilon: float = EPSILON,
    side: str = "output",
) -> int:
    """How many of W_ft's top-k singular vectors have |cosine| < epsilon with all of W_0's."""
    return int(np.sum(intruder_cosines(w0, w_ft, top_k, side) < epsilon))


def intruder_curve(
    w0: np.ndarray,
    w_ft: np.ndarray,
    epsilons: Iterable[float],
    top_k: int = TOP_K,
    side: str = "output",
    w0_svd: tuple | None = None,
) -> list[int]:
    """The intruder count at each epsilon (one SVD pair for the whole curve)."""
    cos = intruder_cosines(w0, w_ft, top_k, side, w0_svd)
    return [int(np.sum(cos < e)) for e in epsilons]


def scale_intruders(
    w0: np.ndarray,
    w_ft: np.ndarray,
    top_k: int = TOP_K,
    epsilon: float = EPSILON,
    lam: float = LAMBDA,
    side: str = "output",
) -> tuple[np.ndarray, int]:
    """W_ft with each intruder's singular value multiplied by `lam` (PEFT's mitigation:
    W_ft + (lam - 1) * s_i u_i v_i^T over the intruders), and the number of intruders."""
    u, s, v = update_svd(w_ft)
    cos = _cosines(update_svd(w0), (u, s, v), top_k, side)
    idx = np.flatnonzero(cos < epsilon)
    correction = (u[:, idx] * s[idx]) @ v[:, idx].T
    return np.asarray(jnp.asarray(w_ft) + (lam - 1.0) * correction), len(idx)

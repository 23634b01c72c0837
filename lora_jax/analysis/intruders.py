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

__all__ = ["count_intruders", "intruder_cosines", "intruder_curve", "scale_intruders"]

TOP_K, EPSILON, LAMBDA = 10, 0.5, 0.75  # PEFT's reduce_intruder_dimension defaults


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

"""Any weight update dW = W_ft - W_0 (full fine-tuning, or a LoRA merged in), as a matrix.

LoRA's dW is low-rank by construction (`spectrum` reads it from the factors); a full
fine-tuning update is a dense matrix whose rank is the question (Biderman et al. 2024: it needs
10-100x typical LoRA ranks to hold 90% of its energy, yet far fewer than a random matrix).
Layouts as everywhere here: (in, out) kernels, so `u` spans the input side, `v` the output side.

- `update_svd`: its spectrum (the ranks that hold a share of its energy: `audit.cores.energy_ranks`);
- `random_like`: a Gaussian matrix of the same shape and Frobenius norm, the "no structure"
  reference;
- `truncate`: SVD_k(dW), the best rank-k approximation (Eckart-Young), for truncation curves;
- `update_phi`: phi (Eq. 4) between the top subspaces of two updates, e.g. full fine-tuning's
  and LoRA's, on either side.

Example:
    >>> import jax
    >>> dw = jax.random.normal(jax.random.key(0), (64, 32))
    >>> from lora_jax.audit.cores import energy_ranks
    >>> energy_ranks(update_svd(dw)[1], (0.5, 0.9))  # doctest: +SKIP
    {'energy_rank_50': 9, 'energy_rank_90': 22}
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lora_jax.analysis.numerics import as_float
from lora_jax.analysis.similarity import subspace_similarity

__all__ = ["random_like", "truncate", "update_phi", "update_svd"]


@jax.jit
def update_svd(dw: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Thin SVD of dW (in, out): (u (in, k), s (k,) descending, v (out, k)), dW = u diag(s) v^T."""
    u, s, vt = jnp.linalg.svd(as_float(dw), full_matrices=False)
    return u, s, vt.T


def random_like(key: jax.Array, dw: jax.Array) -> jax.Array:
    """A Gaussian matrix with dW's shape and Frobenius norm: an update with no structure."""
    dw = as_float(dw)
    g = jax.random.normal(key, dw.shape, dw.dtype)
    return g * (jnp.linalg.norm(dw) / jnp.linalg.norm(g))


def truncate(dw: jax.Array, k: int, svd: tuple | None = None) -> jax.Array:
    """SVD_k(dW): the best rank-k approximation of dW in Frobenius and spectral norm.

    Args:
        dw: (in, out). k: rank kept, 0..min(in, out). svd: `update_svd(dw)` if already known.
    """
    u, s, v = update_svd(dw) if svd is None else svd
    if not 0 <= k <= s.shape[0]:
        raise ValueError(f"k={k} is not valid; allowed: 0..{s.shape[0]} (min(in, out) of dW).")
    return (u[:, :k] * s[:k]) @ v[:, :k].T


def update_phi(svd_1: tuple, svd_2: tuple, side: str = "input", rtol: float = 1e-6) -> jax.Array:
    """phi(i, j) between the top-i singular directions of one update and the top-j of another.

    Args:
        svd_1, svd_2: `(u, s, v)` of each update (`update_svd`, or `dw_svd` of LoRA factors).
        side: "input" (u, the paper's A side) or "output" (v, the B side).
        rtol: directions with s <= rtol * s_max are arbitrary: their rows/columns are NaN.

    Returns:
        (k1, k2) grid in [0, 1] (NaN where a direction is undefined).
    """
    if side not in ("input", "output"):
        raise ValueError(f"side={side!r} is not valid; allowed: input, output.")
    index = 0 if side == "input" else 2
    grid = subspace_similarity(svd_1[index], svd_2[index])
    defined = [np.asarray(s) > rtol * float(np.max(s, initial=0.0)) for s in (svd_1[1], svd_2[1])]
    mask = defined[0][:, None] & defined[1][None, :]
    return jnp.where(jnp.asarray(mask), grid, jnp.nan)

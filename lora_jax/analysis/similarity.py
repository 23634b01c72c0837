"""Normalized subspace similarity between LoRA factors (Hu et al. 2021, Sec. 7.2, Eq. 4).

For two adapters with input-side orthonormal bases U1 (n, r1) and U2 (n, r2), columns ordered
by decreasing singular value,

    phi(i, j) = ||U1[:, :i]^T U2[:, :j]||_F^2 / min(i, j)      in [0, 1],

for i = 1..r1 (rows of the grid) and j = 1..r2 (columns). phi is 1 when the smaller of the two
top subspaces lies inside the larger one and 0 when they are orthogonal. The whole grid comes
from one product M = U1^T U2: phi(i, j) is the sum of M**2 over the top-left i x j block,
i.e. a 2-D cumulative sum, divided by min(i, j). No SVD per (i, j).

Orientation (the part that is easy to get wrong):
    * The paper's A is (r, in) and its input-side space is spanned by A's RIGHT singular
      vectors. Our `lora_a` is (in, r) = A^T, so the same space is spanned by the LEFT singular
      vectors of `lora_a`: `input_subspace(lora_a)`.
    * The paper's B is (out, r) and its output-side space is spanned by B's LEFT singular
      vectors. Our `lora_b` is (r, out) = B^T, so it is spanned by the RIGHT singular vectors of
      `lora_b` (= left singular vectors of `lora_b.T`): `output_subspace(lora_b)`.

Degenerate directions: a singular vector whose singular value is (numerically) zero is
arbitrary (e.g. every direction of `lora_b` at initialisation, where `lora_b = 0`). A phi that
uses such a direction would be a number with no meaning, so `phi_grid_a`/`phi_grid_b` return
NaN for every (i, j) with i > rank(factor 1) or j > rank(factor 2), where rank counts singular
values above `rtol * s_max` (default `rtol = max(shape) * eps`, as `numpy.linalg.matrix_rank`).

Example:
    >>> import jax
    >>> a1 = jax.random.normal(jax.random.key(0), (64, 8))
    >>> a2 = jax.random.normal(jax.random.key(1), (64, 16))
    >>> phi_grid_a(a1, a2).shape
    (8, 16)
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from lora_jax.analysis.numerics import as_float, on_one_blas_thread, rank_mask
from lora_jax.audit.cores import expected_random_phi

__all__ = [
    "expected_random_phi",
    "input_subspace",
    "output_subspace",
    "phi_grid_a",
    "phi_grid_b",
    "random_baseline",
    "random_mean_phi",
    "subspace_similarity",
]


def _left_basis(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Left singular vectors (n, k) and singular values (k,) of x (n, m), k = min(n, m)."""
    u, s, _ = jnp.linalg.svd(as_float(x), full_matrices=False)
    return u, s


@jax.jit
def subspace_similarity(u1: jax.Array, u2: jax.Array) -> jax.Array:
    """The grid phi(i, j) = ||u1[:, :i]^T u2[:, :j]||_F^2 / min(i, j) for all i, j.

    Args:
        u1: (n, r1) orthonormal columns, ordered by decreasing importance (singular value).
        u2: (n, r2) orthonormal columns, same ambient space R^n, same ordering convention.

    Returns:
        (r1, r2) array; entry [i - 1, j - 1] is phi(i, j), in [0, 1]. Rounding can push an
        exact 1 a few ulps past 1; the grid is clipped to [0, 1]. The inputs are assumed
        orthonormal (not checked: this must stay jit-able); non-orthonormal inputs give
        numbers without meaning.
    """
    u1, u2 = as_float(u1), as_float(u2)
    if u1.ndim != 2 or u2.ndim != 2 or u1.shape[0] != u2.shape[0]:
        raise ValueError(
            f"u1 {u1.shape} and u2 {u2.shape} must be (n, r1) and (n, r2) bases of the same R^n."
        )
    m2 = jnp.square(u1.T @ u2)  # (r1, r2), entry (a, b) = cos^2 between direction a and b
    cum = jnp.cumsum(jnp.cumsum(m2, axis=0), axis=1)  # cum[i-1, j-1] = ||U1_i^T U2_j||_F^2
    i = jnp.arange(1, u1.shape[1] + 1)[:, None]
    j = jnp.arange(1, u2.shape[1] + 1)[None, :]
    return jnp.clip(cum / jnp.minimum(i, j).astype(cum.dtype), 0.0, 1.0)


def input_subspace(lora_a: jax.Array) -> jax.Array:
    """Orthonormal basis (in, r) of the input-side space of `lora_a` (in, r).

    These are the LEFT singular vectors of our `lora_a`, which are the RIGHT singular vectors
    of the paper's A = lora_a.T (r, in). Columns are ordered by decreasing singular value.
    """
    return _left_basis(lora_a)[0]


def output_subspace(lora_b: jax.Array) -> jax.Array:
    """Orthonormal basis (out, r) of the output-side space of `lora_b` (r, out).

    These are the RIGHT singular vectors of our `lora_b`, i.e. the LEFT singular vectors of the
    paper's B = lora_b.T (out, r). Columns are ordered by decreasing singular value.
    """
    return _left_basis(jnp.asarray(lora_b).T)[0]


# One program per factor shape (its SVD) and one per pair of shapes (the grid), instead of one
# per pair: a sweep has few ranks and many pairs, and most of the compile time is the SVDs
# (Table 6: 5 ranks, 10 pairs of shapes). The SVDs and the grid give the same bits either way.
@partial(jax.jit, static_argnames=("rtol", "transpose"))
def _basis(x: jax.Array, rtol: float | None, transpose: bool) -> tuple[jax.Array, jax.Array]:
    """Left singular basis of x (or of x.T) and the mask of its defined directions."""
    x = x.T if transpose else x
    u, s = _left_basis(x)
    return u, rank_mask(s, x.shape, rtol)


@jax.jit
def _masked_similarity(u1, ok1, u2, ok2) -> jax.Array:
    return jnp.where(ok1[:, None] & ok2[None, :], subspace_similarity(u1, u2), jnp.nan)


def _masked_grid(x1, x2, rtol: float | None, transpose: bool = False) -> jax.Array:
    """phi grid between the left singular bases of x1 (n, r1) and x2 (n, r2) (or of their
    transposes), NaN past rank."""
    return _masked_similarity(*_basis(x1, rtol, transpose), *_basis(x2, rtol, transpose))


@on_one_blas_thread
def phi_grid_a(a1: jax.Array, a2: jax.Array, rtol: float | None = None) -> jax.Array:
    """Fig. 3/4 grid for two `lora_a` factors (in, r1) and (in, r2): input-side similarity.

    Returns:
        (r1, r2) array, [i - 1, j - 1] = phi(A1, A2, i, j); NaN where i or j exceeds the
        numerical rank of its factor (see the module docstring).
    """
    return _masked_grid(jnp.asarray(a1), jnp.asarray(a2), rtol)


@on_one_blas_thread
def phi_grid_b(b1: jax.Array, b2: jax.Array, rtol: float | None = None) -> jax.Array:
    """The same grid for two `lora_b` factors (r1, out) and (r2, out): output-side similarity.

    Returns:
        (r1, r2) array, [i - 1, j - 1] = phi(B1, B2, i, j); NaN where i or j exceeds the
        numerical rank of its factor (all NaN for `lora_b = 0`, as at initialisation).
    """
    return _masked_grid(jnp.asarray(b1), jnp.asarray(b2), rtol, transpose=True)


@on_one_blas_thread
@jax.jit(static_argnames=("n", "r1", "r2"))
def random_baseline(key: jax.Array, n: int, r1: int, r2: int) -> jax.Array:
    """phi grid between two independent Gaussian (n, r1) and (n, r2) matrices (Fig. 4, right).

    The top-i left singular subspace of a Gaussian matrix is uniform on the Grassmannian
    (rotation invariance), so for independent draws E||U_i^T V_j||_F^2 = i * j / n and
    E phi(i, j) = max(i, j) / n (`expected_random_phi`). One draw is returned, as in the paper.

    Returns:
        (r1, r2) float32 grid.
    """
    k1, k2 = jax.random.split(key)
    g1 = jax.random.normal(k1, (n, r1))
    g2 = jax.random.normal(k2, (n, r2))
    return subspace_similarity(_left_basis(g1)[0], _left_basis(g2)[0])


def random_mean_phi(key: jax.Array, n: int, r1: int, r2: int, draws: int) -> np.ndarray:
    """The mean of `random_baseline`'s grid for `draws` independent pairs: how much the random
    baseline itself varies (its expectation is `expected_random_phi(n, r1, r2).mean()`)."""
    keys = jax.random.split(key, draws)
    return np.asarray(_draw_means(keys, n, r1, r2))


@jax.jit(static_argnames=("n", "r1", "r2"))
def _draw_means(keys: jax.Array, n: int, r1: int, r2: int) -> jax.Array:
    # lax.map, not vmap: jaxlib 0.10's batched LAPACK kernels wait on the CPU thread pool they
    # run in and, inside a loop, can deadlock it on 2 cores (6 of 10 runs hung): one draw at a time.
    return jax.lax.map(lambda k: random_baseline(k, n, r1, r2).mean(), keys)

"""The singular spectrum of dW = scale * lora_a @ lora_b without forming dW.

With thin QR factorisations lora_a = Qa Ra (Qa: (in, r)) and lora_b^T = Qb Rb (Qb: (out, r)),

    dW = scale * Qa (Ra Rb^T) Qb^T,   and with  scale * Ra Rb^T = Uc S Vc^T  (an r x r SVD),
    dW = (Qa Uc) S (Qb Vc)^T.

This is an exact SVD of dW (not an approximation) in O((in + out) r^2) time and memory.

Orientation: dW here is in the kernel's (in, out) layout, so `u` = Qa Uc (in, k) spans the
INPUT side and `v` = Qb Vc (out, k) the OUTPUT side. In the paper's (out, in) layout,
dW_paper = dW^T = v S u^T: the paper's left singular vectors are our `v`, its right ones our `u`.

Summaries (`summarize_spectrum`, `spectrum_summary`), all defined as 0 for dW = 0:
    * frobenius = ||dW||_F = sqrt(sum s^2); spectral = ||dW||_2 = s_max.
    * stable_rank = ||dW||_F^2 / ||dW||_2^2 = sum s^2 / s_max^2.
    * effective_rank = exp(H(p)), H the Shannon entropy (natural log) of p = s / sum(s): the
      singular values normalised by their L1 norm, as in Roy & Vetterli (2007), "The effective
      rank: a measure of effective dimensionality". (Not s^2 / sum s^2.)
    * energy_rank_90 / energy_rank_99: the smallest k with sum_{l<=k} s_l^2 >= 0.90 (0.99) of
      sum s^2 (energy = squared singular values = share of ||dW||_F^2).
    * numerical_rank: the number of s > max(in, out) * eps * s_max (numpy.linalg.matrix_rank).

Example:
    >>> import jax, jax.numpy as jnp
    >>> a = jax.random.normal(jax.random.key(0), (16, 4))
    >>> b = jnp.zeros((4, 8))  # lora_b at initialisation
    >>> float(spectrum_summary(a, b, 2.0)["stable_rank"])
    0.0
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lora_jax.analysis.numerics import as_float, on_one_blas_thread

__all__ = ["dw_svd", "spectrum", "spectrum_summary", "summarize_spectrum"]

SUMMARY_KEYS = (
    "frobenius",
    "spectral",
    "stable_rank",
    "effective_rank",
    "energy_rank_90",
    "energy_rank_99",
    "numerical_rank",
)


def _check(lora_a: jax.Array, lora_b: jax.Array) -> None:
    if lora_a.ndim != 2 or lora_b.ndim != 2 or lora_a.shape[1] != lora_b.shape[0]:
        raise ValueError(
            f"lora_a {lora_a.shape} and lora_b {lora_b.shape} must be (in, r) and (r, out) "
            "with the same r (the layout of lora_jax.lora.LoRADense)."
        )


@on_one_blas_thread
@jax.jit
def dw_svd(
    lora_a: jax.Array, lora_b: jax.Array, scale: float | jax.Array = 1.0
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Thin SVD of dW = scale * lora_a @ lora_b (in, out), exact, without forming dW.

    Args:
        lora_a: (in, r). lora_b: (r, out). scale: the LoRA scaling (any sign; may be traced).

    Returns:
        (u, s, v): u (in, k) input-side singular vectors, s (k,) singular values in descending
        order, v (out, k) output-side singular vectors, k = min(in, out, r), with
        dW = u @ diag(s) @ v.T. Directions with s = 0 are arbitrary orthonormal completions.
    """
    lora_a, lora_b = as_float(lora_a), as_float(lora_b)
    _check(lora_a, lora_b)
    dtype = jnp.result_type(lora_a, lora_b)
    lora_a, lora_b = lora_a.astype(dtype), lora_b.astype(dtype)
    qa, ra = jnp.linalg.qr(lora_a, mode="reduced")  # (in, ka), (ka, r)
    qb, rb = jnp.linalg.qr(lora_b.T, mode="reduced")  # (out, kb), (kb, r)
    core = jnp.asarray(scale, dtype) * (ra @ rb.T)  # (ka, kb)
    uc, s, vct = jnp.linalg.svd(core, full_matrices=False)
    return qa @ uc, s, qb @ vct.T


@on_one_blas_thread
@jax.jit
def spectrum(lora_a: jax.Array, lora_b: jax.Array, scale: float | jax.Array = 1.0) -> jax.Array:
    """Singular values (descending, length min(in, out, r)) of dW = scale * lora_a @ lora_b."""
    lora_a, lora_b = as_float(lora_a), as_float(lora_b)
    _check(lora_a, lora_b)
    dtype = jnp.result_type(lora_a, lora_b)
    ra = jnp.linalg.qr(lora_a.astype(dtype), mode="r")
    rb = jnp.linalg.qr(lora_b.T.astype(dtype), mode="r")
    return jnp.linalg.svd(jnp.asarray(scale, dtype) * (ra @ rb.T), compute_uv=False)


def summarize_spectrum(s: jax.Array, shape: tuple[int, int] | None = None) -> dict[str, jax.Array]:
    """Scalar summaries of singular values `s` (any order, >= 0); see the module docstring.

    Args:
        s: singular values of dW.
        shape: (in, out) of dW, used only for the numerical-rank tolerance
            (default: len(s) for both).

    Returns:
        dict with keys `SUMMARY_KEYS`: float scalars (ranks as floats so the dict is one dtype),
        all 0 (never NaN) when s is all zero or empty.
    """
    s = as_float(s)
    if isinstance(s, jax.core.Tracer):
        return _summarize(s, shape)
    with np.errstate(all="ignore"):  # inf/NaN as in jnp, without numpy's warnings
        return _summarize_concrete(np.asarray(s), shape)


def _summarize(s: jax.Array, shape: tuple[int, int] | None) -> dict[str, jax.Array]:
    """The definition, in jnp (traced under jit, e.g. in `spectrum_summary`)."""
    s = jnp.sort(s)[::-1]
    dtype = s.dtype
    if s.size == 0:
        return {k: jnp.zeros((), dtype) for k in SUMMARY_KEYS}
    energy = jnp.square(s)
    total = jnp.sum(energy)
    smax = s[0]
    nonzero = smax > 0
    safe_total = jnp.where(nonzero, total, 1.0)
    stable_rank = jnp.where(nonzero, total / jnp.where(nonzero, jnp.square(smax), 1.0), 0.0)

    l1 = jnp.sum(s)
    p = s / jnp.where(nonzero, l1, 1.0)
    plogp = jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)
    effective_rank = jnp.where(nonzero, jnp.exp(-jnp.sum(plogp)), 0.0)

    frac = jnp.cumsum(energy) / safe_total

    def energy_rank(q: float) -> jax.Array:
        # smallest k with frac[k-1] >= q; frac is non-decreasing. Rounding can leave the last
        # entry a hair below 1, so the count is capped at len(s).
        k = jnp.minimum(jnp.sum(frac < q) + 1, s.shape[0])
        return jnp.where(nonzero, k, 0).astype(dtype)

    m, n = shape if shape is not None else (s.shape[0], s.shape[0])
    tol = max(m, n) * float(jnp.finfo(dtype).eps) * smax
    numerical_rank = jnp.sum(s > tol).astype(dtype)
    return {
        "frobenius": jnp.sqrt(total),
        "spectral": smax,
        "stable_rank": stable_rank,
        "effective_rank": effective_rank,
        "energy_rank_90": energy_rank(0.90),
        "energy_rank_99": energy_rank(0.99),
        "numerical_rank": numerical_rank,
    }


def _summarize_concrete(s: np.ndarray, shape: tuple[int, int] | None) -> dict[str, jax.Array]:
    """`_summarize` on a concrete array, bit for bit, with 5 XLA programs instead of ~15.

    Run eagerly, every jnp operation of `_summarize` is its own XLA program, compiled anew for
    each length of s (~15 per rank: most of a sweep analysis's compiles). Here the exact
    operations (sort, indexing, comparisons, selections, counts) and the correctly rounded
    IEEE operations (elementwise *, scalar /, sqrt, negation) run in numpy; the reductions
    (sum, cumsum: their order sets the rounding), log/exp and the divisions by a scalar stay
    the same XLA programs as in `_summarize`. Jitting `_summarize` whole would fuse them and
    change the last bits.
    tests/unit/test_analysis_spectrum.py checks it against the jnp definition run op by op.
    """
    s = np.sort(s)[::-1]
    dtype = s.dtype
    one, zero = dtype.type(1.0), dtype.type(0.0)
    if s.size == 0:
        return {k: jnp.zeros((), dtype) for k in SUMMARY_KEYS}
    energy = np.square(s)
    total = np.asarray(jnp.sum(energy))
    smax = s[0]
    nonzero = smax > 0
    safe_total = total if nonzero else one
    stable_rank = total / np.square(smax) if nonzero else zero

    l1 = np.asarray(jnp.sum(s))
    # XLA turns a division by a broadcast scalar into a product with its reciprocal, so this
    # one stays in XLA (numpy's correctly rounded division differs in the last bit).
    p = np.asarray(jnp.true_divide(s, l1 if nonzero else one))
    logs = np.asarray(jnp.log(np.where(p > 0, p, one)))
    plogp = np.where(p > 0, p * logs, zero)
    effective_rank = np.asarray(jnp.exp(-np.asarray(jnp.sum(plogp)))) if nonzero else zero

    frac = np.asarray(jnp.true_divide(jnp.cumsum(energy), safe_total))

    def energy_rank(q: float) -> np.ndarray:
        k = min(int(np.sum(frac < dtype.type(q))) + 1, s.shape[0])
        return dtype.type(k if nonzero else 0)

    m, n = shape if shape is not None else (s.shape[0], s.shape[0])
    tol = dtype.type(max(m, n) * float(np.finfo(dtype).eps)) * smax
    out = {
        "frobenius": np.sqrt(total),
        "spectral": smax,
        "stable_rank": stable_rank,
        "effective_rank": effective_rank,
        "energy_rank_90": energy_rank(0.90),
        "energy_rank_99": energy_rank(0.99),
        "numerical_rank": dtype.type(np.sum(s > tol)),
    }
    return {k: jnp.asarray(v, dtype) for k, v in out.items()}


@jax.jit
def spectrum_summary(
    lora_a: jax.Array, lora_b: jax.Array, scale: float | jax.Array = 1.0
) -> dict[str, jax.Array]:
    """Cheap, jit-able summaries of dW = scale * lora_a @ lora_b for logging during training.

    Handles rank 0 (r = 0 columns) and dW = 0 (lora_b = 0 at initialisation): every entry is
    then 0, never NaN. See the module docstring for the definitions.

    Returns:
        dict with keys `SUMMARY_KEYS`, float scalars.
    """
    lora_a, lora_b = jnp.asarray(lora_a), jnp.asarray(lora_b)
    _check(lora_a, lora_b)
    shape = (lora_a.shape[0], lora_b.shape[1])
    if lora_a.shape[1] == 0:
        return summarize_spectrum(jnp.zeros((0,), as_float(lora_a).dtype), shape)
    return summarize_spectrum(spectrum(lora_a, lora_b, scale), shape)

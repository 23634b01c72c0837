"""The spectrum of dW from its factors, and its summaries, on known answers.

Precision: inputs and computations are float32; references are numpy float64 SVDs of the
explicitly formed product. Tolerances are relative to the largest singular value.
"""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from tolerance import FLOAT32_U

from lora_jax.analysis import SUMMARY_KEYS, dw_svd, spectrum, spectrum_summary, summarize_spectrum

# derandomize: the same examples every run, so their compiled programs come from the compile
# cache (random shapes compiled anew each run) and a failure on CI repeats on a laptop.
SETTINGS = settings(max_examples=15, deadline=None, derandomize=True)


@SETTINGS
@given(
    seed=st.integers(0, 2**16),
    n_in=st.integers(1, 48),
    n_out=st.integers(1, 48),
    r=st.integers(1, 10),
    scale=st.sampled_from([1.0, -0.5, 16.0, 1e-3]),
)
def test_qr_trick_equals_full_svd_of_the_product(seed, n_in, n_out, r, scale):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n_in, r)).astype(np.float32)
    b = rng.standard_normal((r, n_out)).astype(np.float32)
    dw = scale * a.astype(np.float64) @ b.astype(np.float64)
    ref = np.linalg.svd(dw, compute_uv=False)
    k = min(n_in, n_out, r)
    s = np.asarray(spectrum(a, b, scale))
    assert s.shape == (k,) and s.dtype == np.float32
    tol = 1e-5 * ref[0]
    np.testing.assert_allclose(s, ref[:k], rtol=0, atol=tol)
    assert np.all(np.diff(s) <= 0)  # descending

    u, s2, v = (np.asarray(x, dtype=np.float64) for x in dw_svd(a, b, scale))
    assert u.shape == (n_in, k) and v.shape == (n_out, k)
    np.testing.assert_allclose(s2, ref[:k], rtol=0, atol=tol)
    np.testing.assert_allclose(u @ np.diag(s2) @ v.T, dw, rtol=0, atol=tol)
    np.testing.assert_allclose(u.T @ u, np.eye(k), atol=1e-5)
    np.testing.assert_allclose(v.T @ v, np.eye(k), atol=1e-5)


def test_u_is_input_side_and_v_output_side():
    # dW = 3 * e_1 (input, R^5) f_2^T (output, R^4), in the kernel's (in, out) layout.
    a = np.zeros((5, 1))
    a[1, 0] = 1.0
    b = np.zeros((1, 4))
    b[0, 2] = 1.0
    u, s, v = (np.asarray(x) for x in dw_svd(a, b, 3.0))
    np.testing.assert_allclose(s, [3.0])
    np.testing.assert_allclose(np.abs(u[:, 0]), np.eye(5)[1], atol=1e-7)
    np.testing.assert_allclose(np.abs(v[:, 0]), np.eye(4)[2], atol=1e-7)


def test_scale_multiplies_the_spectrum_by_its_absolute_value():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((20, 4)), rng.standard_normal((4, 12))
    np.testing.assert_allclose(
        np.asarray(spectrum(a, b, -2.5)), 2.5 * np.asarray(spectrum(a, b, 1.0)), rtol=1e-6
    )


def _factors_with_spectrum(s, n_in=7, n_out=5, seed=0):
    """lora_a (n_in, r), lora_b (r, n_out) whose product has singular values s (any order)."""
    rng = np.random.default_rng(seed)
    r = len(s)
    p = np.linalg.qr(rng.standard_normal((n_in, r)))[0]
    q = np.linalg.qr(rng.standard_normal((n_out, r)))[0]
    m = rng.standard_normal((r, r)) + 3 * np.eye(r)  # invertible mixing between the factors
    return p @ np.diag(s) @ m, np.linalg.inv(m) @ q.T


def test_summaries_of_singular_values_3_and_4():
    a, b = _factors_with_spectrum([3.0, 4.0])
    out = {k: float(v) for k, v in spectrum_summary(a, b, 1.0).items()}
    assert set(out) == set(SUMMARY_KEYS)
    p = np.array([4.0, 3.0]) / 7.0  # Roy & Vetterli: L1-normalised singular values
    expected = {
        "frobenius": 5.0,
        "spectral": 4.0,
        "stable_rank": 25.0 / 16.0,
        "effective_rank": float(np.exp(-np.sum(p * np.log(p)))),
        "energy_rank_90": 2.0,  # 16/25 = 0.64 < 0.9
        "energy_rank_99": 2.0,
        "numerical_rank": 2.0,
    }
    for k, v in expected.items():
        np.testing.assert_allclose(out[k], v, rtol=1e-5, err_msg=k)


def test_energy_ranks_and_effective_rank_on_constructed_spectra():
    # energies 100, 9, 1 of 110: 100/110 = 0.909 >= 0.9 -> 1; 109/110 = 0.991 >= 0.99 -> 2.
    out = summarize_spectrum(jnp.array([1.0, 10.0, 3.0]))
    assert float(out["energy_rank_90"]) == 1.0 and float(out["energy_rank_99"]) == 2.0
    np.testing.assert_allclose(float(out["stable_rank"]), 1.1, rtol=1e-6)
    flat = summarize_spectrum(jnp.ones(4))
    for key in ("stable_rank", "effective_rank", "energy_rank_90", "energy_rank_99"):
        np.testing.assert_allclose(float(flat[key]), 4.0, rtol=1e-6, err_msg=key)
    one = summarize_spectrum(jnp.array([5.0, 0.0, 0.0]))
    for key in (
        "stable_rank",
        "effective_rank",
        "energy_rank_90",
        "energy_rank_99",
        "numerical_rank",
    ):
        np.testing.assert_allclose(float(one[key]), 1.0, rtol=1e-6, err_msg=key)
    # energy exactly at the threshold counts as holding it: 9 of 10 -> k = 1 for 90%.
    assert float(summarize_spectrum(jnp.array([3.0, 1.0]))["energy_rank_90"]) == 1.0


def test_zero_dw_and_rank_zero_give_zeros_not_nan():
    a = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    b = np.zeros((4, 8), np.float32)  # lora_b at initialisation
    for out in (
        spectrum_summary(a, b, 2.0),
        jax.jit(spectrum_summary)(a, b, jnp.float32(2.0)),  # traced scale
        spectrum_summary(a, np.random.default_rng(1).standard_normal((4, 8)), 0.0),
        spectrum_summary(np.zeros((16, 0)), np.zeros((0, 8)), 1.0),
    ):
        vals = {k: float(v) for k, v in out.items()}
        assert vals == dict.fromkeys(SUMMARY_KEYS, 0.0), vals
    s = np.asarray(spectrum(a, b, 2.0))
    assert np.all(s == 0) and not np.any(np.isnan(s))


def test_summary_is_jittable_and_matches_numpy():
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((32, 6)), rng.standard_normal((6, 24))
    out = jax.jit(spectrum_summary)(a, b, 0.5)
    s = np.linalg.svd(0.5 * a @ b, compute_uv=False)[:6]
    np.testing.assert_allclose(float(out["frobenius"]), np.sqrt(np.sum(s**2)), rtol=1e-5)
    np.testing.assert_allclose(float(out["stable_rank"]), np.sum(s**2) / s[0] ** 2, rtol=1e-5)
    frac = np.cumsum(s**2) / np.sum(s**2)
    assert float(out["energy_rank_90"]) == np.argmax(frac >= 0.9) + 1
    assert float(out["numerical_rank"]) == 6.0


def test_matches_lora_delta_w_of_a_real_layer():
    from lora_jax.lora import LoRADense, delta_w, lora_scale

    layer = LoRADense(features=12, rank=4, alpha=8.0)
    params = layer.init(jax.random.key(0), jnp.ones((1, 20)))["params"]
    a = params["lora_a"]
    b = jax.random.normal(jax.random.key(1), params["lora_b"].shape)
    scale = lora_scale(4, 8.0)
    ref = np.linalg.svd(np.asarray(delta_w(a, b, 8.0), np.float64), compute_uv=False)[:4]
    np.testing.assert_allclose(np.asarray(spectrum(a, b, scale)), ref, rtol=0, atol=1e-5 * ref[0])
    init = spectrum_summary(a, params["lora_b"], scale)  # lora_b = 0 at init: dW = 0
    assert all(float(v) == 0.0 for v in init.values())


def _summary_op_by_op(s, shape=None):
    """summarize_spectrum as it was defined before issue 13: jnp, run eagerly op by op."""
    s = jnp.sort(jnp.asarray(s, jnp.float32))[::-1]
    energy = jnp.square(s)
    total = jnp.sum(energy)
    smax = s[0]
    nonzero = smax > 0
    safe_total = jnp.where(nonzero, total, 1.0)
    stable_rank = jnp.where(nonzero, total / jnp.where(nonzero, jnp.square(smax), 1.0), 0.0)
    p = s / jnp.where(nonzero, jnp.sum(s), 1.0)
    plogp = jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)
    frac = jnp.cumsum(energy) / safe_total

    def energy_rank(q):
        k = jnp.minimum(jnp.sum(frac < q) + 1, s.shape[0])
        return jnp.where(nonzero, k, 0).astype(s.dtype)

    m, n = shape if shape is not None else (s.shape[0], s.shape[0])
    return {
        "frobenius": jnp.sqrt(total),
        "spectral": smax,
        "stable_rank": stable_rank,
        "effective_rank": jnp.where(nonzero, jnp.exp(-jnp.sum(plogp)), 0.0),
        "energy_rank_90": energy_rank(0.90),
        "energy_rank_99": energy_rank(0.99),
        "numerical_rank": jnp.sum(s > max(m, n) * float(jnp.finfo(s.dtype).eps) * smax).astype(
            s.dtype
        ),
    }


def test_summaries_of_concrete_spectra_equal_the_jnp_definition():
    # Outside jit, summarize_spectrum runs the exact steps in numpy (fewer XLA compiles); the
    # analysis.json numbers must stay those of the jnp definition run op by op. On a CPU both
    # are IEEE float32 on one machine: the same bits. A GPU or TPU computes XLA's division,
    # sqrt, log and exp its own way (not always correctly rounded): there the floats agree to
    # a few units in the last place and the ranks (counts) exactly.
    cpu = jax.default_backend() == "cpu"
    counts = ("energy_rank_90", "energy_rank_99", "numerical_rank")
    rng = np.random.default_rng(7)
    for n in (1, 2, 3, 4, 7, 8, 16, 31, 64, 384):
        for case in range(12):
            s = np.abs(rng.standard_normal(n) * 10.0 ** rng.integers(-6, 6)).astype(np.float32)
            if case % 4 == 1:
                s[n // 2 :] = 0.0  # rank-deficient dW
            if case % 4 == 2:
                s[:] = s[0]  # flat spectrum: ties
            if case == 3:
                s[:] = 0.0  # lora_b = 0
            shape = (384, 768) if case % 2 else None
            new, ref = summarize_spectrum(s, shape), _summary_op_by_op(s, shape)
            for key in SUMMARY_KEYS:
                assert new[key].dtype == ref[key].dtype
                if cpu or key in counts:
                    same = np.asarray(new[key]).tobytes() == np.asarray(ref[key]).tobytes()
                    assert same, (n, key)
                else:
                    np.testing.assert_allclose(new[key], ref[key], rtol=8 * FLOAT32_U, atol=0)

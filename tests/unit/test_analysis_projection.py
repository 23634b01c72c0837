"""dW against W (Table 7, Fig. 8) on constructed kernels and adapters with analytic answers.

Layout: kernel K (in, out) = the paper's W^T; dW = scale * lora_a @ lora_b (in, out).
Precision: float32 computations, float64 references.
"""

import math

import jax
import numpy as np
import pytest

from lora_jax.analysis import (
    DW_VS_W_KEYS,
    dw_vs_w,
    kernel_svd,
    random_projection_norm,
    w_dw_phi_grid,
)


def _unit(n, i):
    e = np.zeros(n)
    e[i] = 1.0
    return e


def _rank_one(n_in, n_out, i, j):
    """lora_a (n_in, 1) = e_i (input side), lora_b (1, n_out) = f_j (output side)."""
    return _unit(n_in, i)[:, None], _unit(n_out, j)[None, :]


def test_orientation_on_a_non_symmetric_kernel():
    # dW = 3 e_1 f_2^T: input direction 1, output direction 2, so U^T W V picks K[1, 2] = 7.
    # The swapped orientation would pick K[2, 1] = 0.1.
    k = np.diag([20.0, 0.0, 0.0, 1.0])
    k[1, 2], k[2, 1] = 7.0, 0.1
    a, b = _rank_one(4, 4, 1, 2)
    out = dw_vs_w(k, a, b, 3.0, jax.random.key(0))
    assert set(out) == {"r", *DW_VS_W_KEYS}
    assert all(isinstance(v, float) for v in out.values())
    np.testing.assert_allclose(out["proj_dw"], 7.0, rtol=1e-6)
    np.testing.assert_allclose(out["dw_norm"], 3.0, rtol=1e-6)
    np.testing.assert_allclose(out["amplification"], 3.0 / 7.0, rtol=1e-6)
    np.testing.assert_allclose(out["w_norm"], math.sqrt(400 + 49 + 0.01 + 1), rtol=1e-6)
    np.testing.assert_allclose(out["proj_w"], 20.0, rtol=1e-6)  # W's top singular value
    assert out["r"] == 1.0 and out["dw_rank"] == 1.0


def test_rank_two_dw_on_a_rectangular_kernel():
    # dW = 3 e_1 f_2^T + 2 e_3 f_0^T: U = [e_1, e_3] (in = 5), V = [f_2, f_0] (out = 4).
    rng = np.random.default_rng(0)
    k = rng.standard_normal((5, 4))
    a = np.stack([3 * _unit(5, 1), 2 * _unit(5, 3)], 1)
    b = np.stack([_unit(4, 2), _unit(4, 0)], 0)
    out = dw_vs_w(k, a, b, 1.0, jax.random.key(0))
    np.testing.assert_allclose(out["proj_dw"], np.linalg.norm(k[np.ix_([1, 3], [2, 0])]), rtol=1e-5)
    np.testing.assert_allclose(out["dw_norm"], math.sqrt(13.0), rtol=1e-6)
    sig = np.linalg.svd(k, compute_uv=False)
    np.testing.assert_allclose(out["proj_w"], np.sqrt(np.sum(sig[:2] ** 2)), rtol=1e-5)
    np.testing.assert_allclose(
        out["proj_random_rms"], 2 / math.sqrt(20) * np.linalg.norm(k), rtol=1e-5
    )
    # r = 1 keeps only dW's top direction (3 e_1 f_2^T): |K[1, 2]|.
    out1 = dw_vs_w(k, a, b, 1.0, jax.random.key(0), r=1)
    np.testing.assert_allclose(out1["proj_dw"], abs(k[1, 2]), rtol=1e-5)


def _kernel_with_spectrum(sig, n_in, n_out, seed=0):
    rng = np.random.default_rng(seed)
    p = np.linalg.qr(rng.standard_normal((n_in, len(sig))))[0]
    q = np.linalg.qr(rng.standard_normal((n_out, len(sig))))[0]
    return p @ np.diag(sig) @ q.T, p, q


def test_dw_along_ws_own_directions():
    # W = P diag(5, 4, 3, 2, 1) Q^T; dW = P[:, 1] Q[:, 1]^T (W's 2nd singular pair).
    k, p, q = _kernel_with_spectrum([5.0, 4.0, 3.0, 2.0, 1.0], 8, 6)
    a, b = p[:, 1:2], q[:, 1:2].T
    out = dw_vs_w(k, a, b, 2.0, jax.random.key(1))
    np.testing.assert_allclose(out["proj_dw"], 4.0, rtol=1e-5)
    np.testing.assert_allclose(out["proj_w"], 5.0, rtol=1e-5)
    np.testing.assert_allclose(out["amplification"], 0.5, rtol=1e-5)
    np.testing.assert_allclose(out["phi_input"], 0.0, atol=1e-6)  # W's top-1 is P[:, 0]
    np.testing.assert_allclose(out["phi_output"], 0.0, atol=1e-6)
    for side in ("input", "output"):
        grid = np.asarray(w_dw_phi_grid(k, a, b, 2.0, side=side))
        # Rows: W's top-i (i = 1..5, then NaN past W's rank 5 of min(8, 6) = 6); column: dW.
        assert grid.shape == (6, 1)
        np.testing.assert_allclose(grid[:5, 0], [0, 1, 1, 1, 1], atol=1e-5)
        assert np.isnan(grid[5, 0])


def test_w_dw_grid_sides_differ_when_only_one_side_is_shared():
    # dW's input direction is W's top input direction, its output direction is orthogonal
    # to all of W's output directions (W has rank 3 in R^6 on the output side).
    k, p, q = _kernel_with_spectrum([3.0, 2.0, 1.0], 6, 6, seed=2)
    f = np.linalg.qr(np.concatenate([q, np.random.default_rng(3).standard_normal((6, 1))], 1))[0][
        :, 3:4
    ]
    a, b = p[:, :1], f.T
    g_in = np.asarray(w_dw_phi_grid(k, a, b, side="input", num_w=3))
    g_out = np.asarray(w_dw_phi_grid(k, a, b, side="output", num_w=3))
    np.testing.assert_allclose(g_in[:, 0], [1, 1, 1], atol=1e-5)
    np.testing.assert_allclose(g_out[:, 0], [0, 0, 0], atol=1e-5)
    out = dw_vs_w(k, a, b, 1.0, jax.random.key(0))
    np.testing.assert_allclose([out["phi_input"], out["phi_output"]], [1.0, 0.0], atol=1e-5)
    np.testing.assert_allclose(out["proj_dw"], 0.0, atol=1e-5)  # W V = 0: amplification inf
    with pytest.raises(ValueError, match="side"):
        w_dw_phi_grid(k, a, b, side="in")


def test_random_projection_matches_its_expectation():
    # E||P^T K Q||_F^2 = (r / in)(r / out) ||K||_F^2 for independent Haar P (in, r), Q (out, r).
    rng = np.random.default_rng(4)
    k = rng.standard_normal((24, 16)) * np.linspace(0.1, 3.0, 16)
    r, num = 3, 2000
    keys = jax.random.split(jax.random.key(7), num)
    sq = (
        np.asarray(jax.lax.map(lambda key: random_projection_norm(k, key, r), keys), np.float64)
        ** 2
    )
    expected = r * r / (24 * 16) * np.sum(k**2)
    assert abs(sq.mean() - expected) < 5 * sq.std() / math.sqrt(num), (sq.mean(), expected)
    # dw_vs_w's random row is one such draw, reproducible from its key.
    a, b = rng.standard_normal((24, r)), rng.standard_normal((r, 16))
    o1, o2 = dw_vs_w(k, a, b, 1.0, keys[0]), dw_vs_w(k, a, b, 1.0, keys[0])
    assert o1["proj_random"] == o2["proj_random"]
    np.testing.assert_allclose(
        o1["proj_random"], float(random_projection_norm(k, keys[0], r)), rtol=1e-6
    )


def test_zero_dw_gives_nan_for_undefined_directions_only():
    rng = np.random.default_rng(5)
    k = rng.standard_normal((8, 8))
    out = dw_vs_w(k, rng.standard_normal((8, 2)), np.zeros((2, 8)), 4.0, jax.random.key(0))
    for key in ("proj_dw", "amplification", "phi_input", "phi_output"):
        assert math.isnan(out[key]), key
    for key in ("w_norm", "proj_w", "proj_random", "proj_random_rms"):
        assert math.isfinite(out[key]), key
    assert out["dw_norm"] == 0.0 and out["dw_rank"] == 0.0
    assert np.all(np.isnan(np.asarray(w_dw_phi_grid(k, np.ones((8, 2)), np.zeros((2, 8))))))


def test_bad_arguments_raise():
    k = np.zeros((4, 6))
    a, b = np.ones((4, 2)), np.ones((2, 6))
    with pytest.raises(ValueError, match="r=3"):
        dw_vs_w(k, a, b, 1.0, jax.random.key(0), r=3)
    with pytest.raises(ValueError, match="kernel"):
        dw_vs_w(k.T, a, b, 1.0, jax.random.key(0))


def test_shared_kernel_svd_gives_the_same_bits():
    # The sweep analysis decomposes each W once for all its adapters; nothing may change.
    rng = np.random.default_rng(6)
    k = rng.standard_normal((48, 32)).astype(np.float32)
    w_svd = kernel_svd(k)
    for r in (1, 3, 8):
        a, b = rng.standard_normal((48, r)), rng.standard_normal((r, 32))
        key = jax.random.key(r)
        assert dw_vs_w(k, a, b, 0.5, key, w_svd=w_svd) == dw_vs_w(k, a, b, 0.5, key)
        for side in ("input", "output"):
            np.testing.assert_array_equal(
                w_dw_phi_grid(k, a, b, 0.5, side=side, w_svd=w_svd),
                w_dw_phi_grid(k, a, b, 0.5, side=side),
            )
    with pytest.raises(ValueError, match="w_svd"):
        dw_vs_w(k, a, b, 0.5, key, w_svd=kernel_svd(k.T))


def test_kernel_svd_on_one_blas_thread_agrees_with_the_default_threading():
    # kernel_svd runs LAPACK on one thread for kernels this size (speed). One thread and the
    # default threading give the same bits on some CPUs, not on others (an AMD EPYC: up to 5e-5),
    # so the promise is the float32 SVD's accuracy: singular values within the backward-error
    # bound max(m, n) * eps * s_max, and each singular vector (up to sign) within that bound over
    # its gap to the nearest other singular value (Wedin's theorem), for both runs: twice.
    k = np.random.default_rng(8).standard_normal((384, 256)).astype(np.float32)
    p0, s0, qt0 = (np.asarray(x) for x in jax.jit(lambda x: jax.numpy.linalg.svd(x, False))(k))
    p, s, qt = (np.asarray(x) for x in kernel_svd(k))
    bound = max(k.shape) * np.finfo(np.float32).eps * s0[0]
    np.testing.assert_allclose(s, s0, rtol=0, atol=bound)
    gaps = np.abs(s0[:, None] - s0[None, :]) + np.diag(np.full(len(s0), np.inf))
    allowed = 2 * bound / gaps.min(axis=1)
    for got, want in ((p.T, p0.T), (qt, qt0)):
        sign = np.sign(np.sum(got * want, axis=1, keepdims=True))
        assert np.all(np.linalg.norm(got * sign - want, axis=1) <= allowed)

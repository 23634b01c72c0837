"""Known answers for the normalized subspace similarity phi (Hu et al. 2021, Eq. 4).

Precision: the functions run in float32; references are numpy float64.
"""

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lora_jax.analysis import (
    expected_random_phi,
    input_subspace,
    output_subspace,
    phi_grid_a,
    phi_grid_b,
    random_baseline,
    random_mean_phi,
    subspace_similarity,
)

# derandomize: the same examples every run, so their compiled programs come from the compile
# cache (random shapes compiled anew each run) and a failure on CI repeats on a laptop.
SETTINGS = settings(max_examples=15, deadline=None, derandomize=True)


def _orthogonal(rng, n, k=None):
    q, r = np.linalg.qr(rng.standard_normal((n, k or n)))
    return q * np.sign(np.diag(r))


def _phi_reference(u1, u2):
    """Eq. 4 literally: one Frobenius norm per (i, j), float64."""
    r1, r2 = u1.shape[1], u2.shape[1]
    out = np.empty((r1, r2))
    for i in range(1, r1 + 1):
        for j in range(1, r2 + 1):
            out[i - 1, j - 1] = np.linalg.norm(u1[:, :i].T @ u2[:, :j]) ** 2 / min(i, j)
    return out


def _with_spectrum(rng, n, r):
    """lora_a (n, r) = U diag(s) V^T with well separated singular values s_k = 10 * 0.6^k."""
    s = 10.0 * 0.6 ** np.arange(r)
    return _orthogonal(rng, n, r) @ np.diag(s) @ _orthogonal(rng, r).T


# ---- the grid itself ----------------------------------------------------------------------


@SETTINGS
@given(seed=st.integers(0, 2**16), n=st.integers(6, 24), r1=st.integers(1, 6), r2=st.integers(1, 6))
def test_cumsum_grid_equals_eq4_per_entry(seed, n, r1, r2):
    rng = np.random.default_rng(seed)
    u1, u2 = _orthogonal(rng, n, r1), _orthogonal(rng, n, r2)
    grid = np.asarray(subspace_similarity(u1.astype(np.float32), u2.astype(np.float32)))
    np.testing.assert_allclose(grid, _phi_reference(u1, u2), atol=1e-5)


@SETTINGS
@given(
    seed=st.integers(0, 2**16),
    n=st.integers(2, 20),
    r1=st.integers(1, 8),
    r2=st.integers(1, 8),
    log_scale=st.floats(-3, 3),
)
def test_phi_is_within_unit_interval_before_clipping(seed, n, r1, r2, log_scale):
    rng = np.random.default_rng(seed)
    a1 = 10.0**log_scale * rng.standard_normal((n, min(r1, n)))
    a2 = rng.standard_normal((n, min(r2, n)))
    grid = np.asarray(phi_grid_a(a1.astype(np.float32), a2.astype(np.float32)))
    assert np.all((grid >= 0) & (grid <= 1))
    # The clip only hides rounding: the unclipped value is within float32 rounding of [0, 1].
    u1, u2 = np.asarray(input_subspace(a1)), np.asarray(input_subspace(a2))
    raw = _phi_reference(u1.astype(np.float64), u2.astype(np.float64))
    assert raw.min() >= -1e-6 and raw.max() <= 1 + 1e-5
    np.testing.assert_allclose(grid, np.clip(raw, 0, 1), atol=1e-5)


@SETTINGS
@given(
    seed=st.integers(0, 2**16),
    n=st.integers(4, 24),
    r=st.integers(1, 4),
    c=st.floats(1e-3, 1e3),
)
def test_identical_subspace_is_one_whatever_rotation_and_scale(seed, n, r, c):
    # a2 = c * a1 @ R with R (r, r) orthogonal: a1 = U S V^T gives a2 = U (c S) (R^T V)^T, the
    # same left singular vectors in the same order (S is only multiplied by c > 0). So every
    # top-i subspace coincides with the top-i of the other and the whole grid is 1.
    rng = np.random.default_rng(seed)
    r = min(r, n)
    a1 = _with_spectrum(rng, n, r)
    a2 = c * a1 @ _orthogonal(rng, r)
    grid = np.asarray(phi_grid_a(a1.astype(np.float32), a2.astype(np.float32)))
    np.testing.assert_allclose(grid, np.ones((r, r)), atol=1e-4)


def test_same_span_different_order_is_one_only_at_full_rank():
    # A non-orthogonal mix keeps the span but can reorder the singular directions: a1 has
    # s = (2, 1) on (e1, e2); a1 @ diag(1, 4) has s = (4, 2) on (e2, e1). Top-1 directions are
    # orthogonal (phi(1, 1) = 0) yet the full spans agree (phi(2, 2) = 1).
    a1 = np.array([[2.0, 0], [0, 1], [0, 0], [0, 0]])
    a2 = a1 @ np.diag([1.0, 4.0])
    grid = np.asarray(phi_grid_a(a1, a2))
    np.testing.assert_allclose(grid, [[0.0, 1.0], [1.0, 1.0]], atol=1e-6)


def test_orthogonal_subspaces_are_zero():
    rng = np.random.default_rng(0)
    q = _orthogonal(rng, 10)
    a1 = q[:, :3] @ rng.standard_normal((3, 3))
    a2 = q[:, 3:7] @ rng.standard_normal((4, 4))
    np.testing.assert_allclose(np.asarray(phi_grid_a(a1, a2)), np.zeros((3, 4)), atol=1e-6)


@SETTINGS
@given(t=st.floats(0, np.pi), seed=st.integers(0, 2**16))
def test_partial_overlap_closed_form(t, seed):
    # U1 = [e1, e2], U2 = [e1, cos t e2 + sin t e3], then U1^T U2 = [[1, 0], [0, cos t]]:
    # phi(1,1) = 1, phi(1,2) = 1/1, phi(2,1) = 1/1, phi(2,2) = (1 + cos^2 t) / 2.
    # A random rotation Q of R^n keeps it away from the coordinate axes; singular values
    # (2, 1) fix the order of the directions.
    rng = np.random.default_rng(seed)
    q = _orthogonal(rng, 6)
    e = np.eye(6)
    u1 = np.stack([e[0], e[1]], 1)
    u2 = np.stack([e[0], np.cos(t) * e[1] + np.sin(t) * e[2]], 1)
    a1, a2 = q @ u1 @ np.diag([2.0, 1.0]), q @ u2 @ np.diag([2.0, 1.0])
    expected = [[1.0, 1.0], [1.0, (1 + np.cos(t) ** 2) / 2]]
    np.testing.assert_allclose(np.asarray(phi_grid_a(a1, a2)), expected, atol=1e-5)
    # The top directions tilted by t: phi(1, 1) = cos^2 t.
    b1 = q @ e[:, :1]
    b2 = q @ (np.cos(t) * e[:, :1] + np.sin(t) * e[:, 1:2])
    np.testing.assert_allclose(np.asarray(phi_grid_a(b1, b2)), [[np.cos(t) ** 2]], atol=1e-5)


# ---- orientation --------------------------------------------------------------------------


def test_lora_a_uses_left_singular_vectors_not_right():
    # lora_a (in=3, r=2); a2 = a1 @ R mixes only the r side, so the input-side spaces (and
    # their order: s = (2, 1) on (e1, e2) for both) agree: phi = 1 everywhere. The right
    # singular vectors (the r side) differ: a2^T a2 = diag(1, 4), so the top right direction
    # swaps; a computation on the transposed layout reports phi(1, 1) = 0.
    a1 = np.array([[2.0, 0], [0, 1], [0, 0]])
    a2 = a1 @ np.array([[0.0, 1], [-1, 0]])
    np.testing.assert_allclose(np.asarray(phi_grid_a(a1, a2)), np.ones((2, 2)), atol=1e-6)
    wrong = np.asarray(phi_grid_a(a1.T, a2.T))  # the paper's layout passed by mistake
    assert wrong[0, 0] < 1e-6


@SETTINGS
@given(seed=st.integers(0, 2**16), n=st.integers(8, 20), r1=st.integers(1, 5), r2=st.integers(1, 5))
def test_phi_a_equals_paper_layout_with_right_singular_vectors(seed, n, r1, r2):
    # Paper: A (r, in); its input space is spanned by the RIGHT singular vectors (rows of Vh).
    rng = np.random.default_rng(seed)
    a1, a2 = _with_spectrum(rng, n, r1), _with_spectrum(rng, n, r2)
    paper_u1 = np.linalg.svd(a1.T, full_matrices=False)[2].T  # (in, r1)
    paper_u2 = np.linalg.svd(a2.T, full_matrices=False)[2].T
    expected = _phi_reference(paper_u1, paper_u2)
    got = np.asarray(phi_grid_a(a1.astype(np.float32), a2.astype(np.float32)))
    np.testing.assert_allclose(got, expected, atol=1e-4)


@SETTINGS
@given(seed=st.integers(0, 2**16), n=st.integers(8, 20), r1=st.integers(1, 5), r2=st.integers(1, 5))
def test_phi_b_equals_paper_layout_with_left_singular_vectors(seed, n, r1, r2):
    # Paper: B (out, r); its output space is spanned by B's LEFT singular vectors. Ours: b = B^T.
    rng = np.random.default_rng(seed)
    big_b1, big_b2 = _with_spectrum(rng, n, r1), _with_spectrum(rng, n, r2)  # (out, r)
    expected = _phi_reference(
        np.linalg.svd(big_b1, full_matrices=False)[0], np.linalg.svd(big_b2, full_matrices=False)[0]
    )
    got = np.asarray(phi_grid_b(big_b1.T.astype(np.float32), big_b2.T.astype(np.float32)))
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_lora_b_output_side_invariant_to_r_side_mixing():
    b1 = np.array([[2.0, 0, 0], [0, 1, 0]])  # (r=2, out=3): output directions (e1, e2)
    b2 = np.array([[0.0, 1], [-1, 0]]) @ b1
    np.testing.assert_allclose(np.asarray(phi_grid_b(b1, b2)), np.ones((2, 2)), atol=1e-6)
    assert np.asarray(phi_grid_b(b1.T, b2.T))[0, 0] < 1e-6  # wrong layout: wrong answer
    u = np.asarray(output_subspace(b1))
    np.testing.assert_allclose(np.abs(u), np.eye(3)[:, :2], atol=1e-6)


# ---- undefined directions -----------------------------------------------------------------


def test_zero_lora_b_gives_nan_not_a_number_without_meaning():
    rng = np.random.default_rng(0)
    grid = np.asarray(phi_grid_b(np.zeros((4, 10)), rng.standard_normal((8, 10))))
    assert grid.shape == (4, 8) and np.all(np.isnan(grid))


def test_rank_deficient_factor_masks_only_its_undefined_directions():
    rng = np.random.default_rng(1)
    a1 = np.outer(rng.standard_normal(10), [1.0, 2.0, 3.0])  # (10, 3) of rank 1
    a2 = rng.standard_normal((10, 2))
    grid = np.asarray(phi_grid_a(a1, a2))
    assert np.all(np.isfinite(grid[0])) and np.all(np.isnan(grid[1:]))


# ---- random baseline ----------------------------------------------------------------------


def test_expected_random_phi_formula():
    # E||U_i^T V_j||_F^2 = sum over i*j pairs of E(u.v)^2 = i*j/n; / min(i, j) = max(i, j)/n.
    np.testing.assert_allclose(expected_random_phi(8, 2, 3), [[1, 2, 3], [2, 2, 3]] / np.array(8))


@pytest.mark.parametrize("n, r1, r2", [(16, 3, 5), (40, 4, 2)])
def test_random_baseline_mean_is_max_ij_over_n(n, r1, r2):
    num = 3000
    keys = jax.random.split(jax.random.key(123), num)
    grids = np.asarray(jax.lax.map(lambda k: random_baseline(k, n, r1, r2), keys), dtype=np.float64)
    assert grids.shape == (num, r1, r2)
    mean, se = grids.mean(0), grids.std(0) / np.sqrt(num)
    expected = expected_random_phi(n, r1, r2)
    assert np.all(np.abs(mean - expected) < 5 * se), (mean, expected, se)
    # Two different keys give different draws; one key gives the same one.
    g = np.asarray(random_baseline(jax.random.key(0), n, r1, r2))
    np.testing.assert_array_equal(g, np.asarray(random_baseline(jax.random.key(0), n, r1, r2)))


def test_phi_grids_work_under_jit_and_vmap():
    # Called on arrays they run as small programs (one per factor shape, one per pair); traced,
    # the same code is part of the caller's program.
    rng = np.random.default_rng(11)
    a1, a2 = rng.standard_normal((3, 32, 2)), rng.standard_normal((3, 32, 5))
    eager = np.stack([np.asarray(phi_grid_a(x, y)) for x, y in zip(a1, a2, strict=True)])
    np.testing.assert_allclose(np.asarray(jax.vmap(phi_grid_a)(a1, a2)), eager, atol=1e-6)
    b1, b2 = a1.transpose(0, 2, 1), a2.transpose(0, 2, 1)
    traced = jax.jit(lambda x, y: phi_grid_b(x, y, rtol=1e-3))(b1[0], b2[0])
    np.testing.assert_allclose(
        np.asarray(traced), np.asarray(phi_grid_b(b1[0], b2[0], 1e-3)), atol=1e-6
    )


def test_random_mean_phi_spreads_around_its_expectation():
    """32 Gaussian pairs: their mean phi averages to E phi = mean of max(i, j) / n."""
    draws = random_mean_phi(jax.random.key(3), 96, 4, 8, 32)
    expected = expected_random_phi(96, 4, 8).mean()
    assert draws.shape == (32,) and len(set(draws.tolist())) == 32  # independent draws
    se = draws.std(ddof=1) / np.sqrt(32)
    assert abs(draws.mean() - expected) < 4 * se

"""Dense updates (full fine-tuning) and intruder dimensions, on cases with a known answer."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from tolerance import svd_residual_tol

from lora_jax.analysis.full_update import random_like, truncate, update_phi, update_svd
from lora_jax.analysis.intruders import (
    adapter_intruder_cosines,
    count_intruders,
    intruder_curve,
    scale_intruders,
)
from lora_jax.analysis.projection import kernel_svd
from lora_jax.analysis.spectrum import dw_svd
from lora_jax.audit.cores import energy_ranks


def _orthonormal(seed: int, n: int, k: int) -> np.ndarray:
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((n, k)))[0]


def _planted(n_in=48, n_out=40, s=(5.0, 3.0, 2.0, 1.0)):
    u, v = _orthonormal(0, n_in, len(s)), _orthonormal(1, n_out, len(s))
    return (u * np.asarray(s)) @ v.T, u, v


def test_energy_ranks_by_hand():
    # energies 9, 4, 1 of 14: 64%, 93%, 100%
    assert energy_ranks(np.array([3.0, 2.0, 1.0])) == {
        "energy_rank_50": 1,
        "energy_rank_90": 2,
        "energy_rank_99": 3,
    }
    assert energy_ranks(np.zeros(4)) == {
        "energy_rank_50": 0,
        "energy_rank_90": 0,
        "energy_rank_99": 0,
    }


def test_update_svd_finds_a_planted_spectrum_and_truncation_is_eckart_young():
    dw, u, _ = _planted()
    _, s, _ = update_svd(dw)
    np.testing.assert_allclose(s[:4], [5, 3, 2, 1], rtol=1e-5)
    assert float(s[4]) < 1e-5
    np.testing.assert_allclose(truncate(dw, 4), dw, atol=1e-5)
    top2 = (u[:, :2] * [5.0, 3.0]) @ _orthonormal(1, 40, 4)[:, :2].T
    np.testing.assert_allclose(truncate(dw, 2), top2, atol=1e-5)
    g = np.asarray(jax.random.normal(jax.random.key(3), (30, 20)))
    s = np.asarray(update_svd(g)[1], np.float64)
    for k in (0, 1, 7, 20):
        err = np.linalg.norm(g - np.asarray(truncate(g, k)))
        want = np.sqrt(np.sum(s[k:] ** 2))  # float32: 0 at full rank up to the SVD's rounding
        assert err == pytest.approx(want, rel=1e-4, abs=svd_residual_tol(g))
    with pytest.raises(ValueError, match=r"k=21 is not valid; allowed: 0\.\.20"):
        truncate(g, 21)


def test_random_like_keeps_shape_and_norm_and_has_no_low_rank():
    dw, _, _ = _planted(128, 128)
    r = random_like(jax.random.key(0), dw)
    assert r.shape == dw.shape
    assert float(np.linalg.norm(r)) == pytest.approx(float(np.linalg.norm(dw)), rel=1e-5)
    # a Gaussian 128x128 needs a large share of its rank for 90% of its energy; the planted 4
    assert energy_ranks(update_svd(r)[1])["energy_rank_90"] > 50
    assert energy_ranks(update_svd(dw)[1])["energy_rank_90"] == 3


def test_update_phi_finds_shared_and_orthogonal_directions():
    dw, u, v = _planted()
    full = update_svd(dw)
    # a LoRA whose A spans the top-2 input directions and B the top-2 output ones
    lora = dw_svd(u[:, :2], (v[:, :2] * [5.0, 3.0]).T, 1.0)
    grid_in, grid_out = update_phi(full, lora, "input"), update_phi(full, lora, "output")
    assert float(grid_in[1, 1]) == pytest.approx(1.0, abs=1e-5)
    assert float(grid_out[1, 1]) == pytest.approx(1.0, abs=1e-5)
    assert float(grid_in[0, 0]) == pytest.approx(1.0, abs=1e-5)  # same top direction
    # directions 3-4 of dW are orthogonal to the LoRA's
    orth = dw_svd(u[:, 2:4], (v[:, 2:4]).T, 1.0)
    assert float(update_phi(lora, orth)[1, 1]) == pytest.approx(0.0, abs=1e-6)
    # directions of dW with s = 0 are undefined: NaN, not a number made up
    assert np.isnan(np.asarray(update_phi(full, lora))[4:, :]).all()
    with pytest.raises(ValueError, match="allowed: input, output"):
        update_phi(full, lora, "left")


def _w0(n_in=64, n_out=48):
    p, q = _orthonormal(2, n_in, n_out), _orthonormal(3, n_out, n_out)
    s0 = np.linspace(10.0, 1.0, n_out)  # distinct, well separated
    return (p * s0) @ q.T, p, q


def test_a_large_update_across_many_base_directions_is_one_intruder():
    w0, p, q = _w0()
    # unit directions mixing W_0's 8 weakest singular vectors: |cos| = 1/sqrt(8) = 0.35 < 0.5
    x_in, x_out = p[:, -8:].sum(1) / np.sqrt(8), q[:, -8:].sum(1) / np.sqrt(8)
    w_ft = w0 + 30.0 * np.outer(x_in, x_out)
    assert count_intruders(w0, w_ft) == 1
    assert count_intruders(w0, w_ft, side="input") == 1
    # the intruder's |cos| is 0.35; the other top-9 directions are W_0's own (|cos| ~ 1)
    assert intruder_curve(w0, w_ft, [0.1, 0.3, 0.4, 0.99]) == [0, 0, 1, 1]
    mitigated, n = scale_intruders(w0, w_ft, lam=0.75)
    assert n == 1
    s_ft, s_new = np.asarray(update_svd(w_ft)[1]), np.asarray(update_svd(mitigated)[1])
    assert s_new[0] == pytest.approx(0.75 * s_ft[0], rel=1e-4)  # only the intruder shrank
    np.testing.assert_allclose(s_new[1:], s_ft[1:], rtol=1e-4)


def test_a_small_update_inside_the_top_directions_has_no_intruder():
    w0, p, q = _w0()
    rotation = np.random.default_rng(4).standard_normal((3, 3))
    w_ft = w0 + 0.05 * (p[:, :3] @ rotation @ q[:, :3].T)
    assert count_intruders(w0, w_ft) == 0
    mitigated, n = scale_intruders(w0, w_ft)
    assert n == 0 and np.allclose(mitigated, w_ft)


@pytest.mark.parametrize("shape", [(64, 48), (640, 560)])  # dense, and Lanczos past 512
def test_intruders_of_a_lora_update_need_only_its_top_vectors(shape):
    """The `--base` audit's intruders: W_0's SVD once, W_ft's top 10 only (ARPACK on
    W_0 + s·B·A above 512), against numpy's full SVD of both and the known answer (one
    intruder at |cos| 1/sqrt(8)). The dW direction is a LoRA of rank 2."""
    w0, p, q = _w0(*shape)
    x_in, x_out = p[:, -8:].sum(1) / np.sqrt(8), q[:, -8:].sum(1) / np.sqrt(8)
    a = np.stack([x_in, p[:, 0]], 1).astype(np.float32)  # (in, 2)
    b = np.stack([x_out, q[:, 0]]).astype(np.float32) * np.array([[1.0], [0.5]], np.float32)
    scale = 30.0
    w0 = w0.astype(np.float32)
    cosines = adapter_intruder_cosines(kernel_svd(w0), w0, a, b, scale)
    u0 = np.linalg.svd(w0.astype(np.float64), full_matrices=False)[2].T  # output side
    w_ft = w0.astype(np.float64) + scale * a.astype(np.float64) @ b.astype(np.float64)
    u_ft = np.linalg.svd(w_ft, full_matrices=False)[2].T[:, :10]
    want = np.abs(u_ft.T @ u0).max(1)
    np.testing.assert_allclose(cosines, want, atol=1e-4)
    # W_0 + dW mixes a little of W_0 into the intruder: near, not at, 1/sqrt(8)
    assert np.sum(cosines < 0.5) == 1 and cosines[0] == pytest.approx(1 / np.sqrt(8), abs=0.02)

"""The math of truncation curves and of the forgetting measure, on known answers."""

from __future__ import annotations

import numpy as np
import pytest

from lora_jax.analysis.full_update import update_svd
from lora_jax.analysis.truncation import (
    rank_for_gain,
    similarity_kept,
    truncated_kernels,
    truncation_ranks,
)


def test_truncation_ranks_are_zero_powers_of_two_and_full():
    assert truncation_ranks(384) == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 384]
    assert truncation_ranks(64) == [0, 1, 2, 4, 8, 16, 32, 64]
    assert truncation_ranks(1) == [0, 1] and truncation_ranks(0) == [0]
    with pytest.raises(ValueError, match="full=-1"):
        truncation_ranks(-1)


def test_truncated_kernels_follow_eckart_young():
    rng = np.random.default_rng(0)
    w0 = {(0, "q"): rng.standard_normal((12, 8)), (0, "v"): rng.standard_normal((12, 8))}
    # dW of (0, "v") has rank 2: truncating beyond it changes nothing.
    dw = {
        (0, "q"): rng.standard_normal((12, 8)),
        (0, "v"): rng.standard_normal((12, 2)) @ rng.standard_normal((2, 8)),
    }
    svds = {k: update_svd(d) for k, d in dw.items()}
    assert all(np.allclose(w, w0[k], atol=1e-6) for k, w in truncated_kernels(w0, svds, 0).items())
    for k, w in truncated_kernels(w0, svds, 8).items():
        np.testing.assert_allclose(w, w0[k] + dw[k], atol=1e-5)
    # At k = 3 the error of (0, "q") is the energy of its singular values past the third.
    s = np.linalg.svd(dw[(0, "q")], compute_uv=False)
    err = truncated_kernels(w0, svds, 3)[(0, "q")] - w0[(0, "q")] - dw[(0, "q")]
    np.testing.assert_allclose(np.linalg.norm(err), np.sqrt(np.sum(s[3:] ** 2)), rtol=1e-4)
    np.testing.assert_allclose(
        truncated_kernels(w0, svds, 3)[(0, "v")], w0[(0, "v")] + dw[(0, "v")], atol=1e-5
    )


def test_rank_for_gain():
    ks = [0, 1, 2, 4, 8]
    assert rank_for_gain(ks, [0.5, 0.6, 0.7, 0.9, 1.0]) == 8  # 0.9 keeps 80% of the gain
    assert rank_for_gain(ks, [0.5, 0.6, 0.7, 0.96, 1.0]) == 4  # 0.96 keeps 92%
    assert rank_for_gain(ks, [0.5, 0.96, 0.97, 0.98, 1.0]) == 1  # 90% at k = 1
    assert rank_for_gain(ks, [0.5, 0.6, 0.7, 0.8, 0.5]) is None  # no gain: no rank
    # A curve that overshoots and falls back keeps its first k past 90% of the final gain.
    assert rank_for_gain(ks, [0.0, 0.2, 1.2, 0.8, 1.0]) == 2
    with pytest.raises(ValueError, match="must start at 0"):
        rank_for_gain([1, 2], [0.1, 0.2])


def test_rank_for_gain_of_a_loss_counts_its_drop():
    ks = [0, 1, 2, 4, 8]
    # A generation task's eval loss: 5 -> 0 is the gain; 90% of it is a drop of 4.5, at k = 4.
    assert rank_for_gain(ks, [5.0, 3.0, 1.0, 0.5, 0.0], lower_is_better=True) == 4
    assert rank_for_gain(ks, [5.0, 0.4, 0.3, 0.2, 0.0], lower_is_better=True) == 1
    assert rank_for_gain(ks, [5.0, 4.0, 3.0, 2.0, 5.5], lower_is_better=True) is None  # rose
    # The same curve as a score (higher is better) gives the same rank.
    assert rank_for_gain(ks, [-5.0, -3.0, -1.0, -0.5, 0.0]) == 4


def test_similarity_kept_is_one_for_the_same_geometry():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((40, 16))
    assert similarity_kept(base, base) == pytest.approx(1.0, abs=1e-12)
    # Cosines do not see a rotation or a rescaling of every embedding.
    q, _ = np.linalg.qr(rng.standard_normal((16, 16)))
    scale = rng.uniform(0.5, 2.0, (40, 1))
    assert similarity_kept(base, scale * base @ q) == pytest.approx(1.0, abs=1e-12)


def test_similarity_kept_on_hand_computed_orders():
    # Unit vectors at angles 0, 10, 40 degrees: pairs (01, 02, 12) differ by 10, 40, 30 deg,
    # cosine ranks 3, 1, 2; at 0, 60, 70 degrees they differ by 60, 70, 10: ranks 2, 1, 3.
    # Spearman = 1 - 6 * (1 + 0 + 1) / (3 * (9 - 1)) = 0.5.
    def at(*degrees):
        r = np.radians(degrees)
        return np.stack([np.cos(r), np.sin(r)], axis=1)

    assert similarity_kept(at(0, 10, 40), at(0, 60, 70)) == pytest.approx(0.5)
    assert similarity_kept(at(0, 10, 40), at(0, 70, 10)) == pytest.approx(-1.0)  # reversed


def test_similarity_kept_is_near_zero_for_unrelated_embeddings():
    rng = np.random.default_rng(2)
    kept = similarity_kept(rng.standard_normal((200, 32)), rng.standard_normal((200, 32)))
    assert abs(kept) < 0.05
    with pytest.raises(ValueError, match="the same sentences"):
        similarity_kept(np.ones((4, 2)), np.ones((5, 2)))

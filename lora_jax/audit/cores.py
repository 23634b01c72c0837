"""Exact measurements of a LoRA update from its r x r cores, in float64 numpy (no JAX).

With Ga = lora_aᵀ lora_a and Gb = lora_b lora_bᵀ (r x r Gram matrices, float64), the nonzero
singular values of dW = scale * lora_a @ lora_b are |scale| * sqrt(eig(Ga^½ Gb Ga^½)); the
cost is two (n x r) Gram products, O((in + out) r²), with no QR and no (in x out) matrix. In
float64 the squared singular values carry an absolute error ~1e-16 s_max², below the float32
rounding of the factors themselves (`lora_jax.analysis.spectrum` gives the same values by QR
in float32; tests/unit/test_audit.py holds them to each other). This is gradience's method.

phi (Hu et al. 2021, Eq. 4) between the input-side subspaces of two A factors comes the same
way: with aᵀa = V S² Vᵀ, U = a V S⁻¹ and U1ᵀ U2 = S1⁻¹ V1ᵀ (a1ᵀ a2) V2 S2⁻¹.

Summaries (`summarize`), as in `lora_jax.analysis.spectrum` plus:
    * energy_rank_50/90/99: smallest k keeping that share of ||dW||_F².
    * utilization = stable_rank / r (gradience's definition); energy_utilization = k90 / r.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

ENERGY_SHARES = (0.5, 0.9, 0.99)
# `summarize`'s keys, in audit.csv's order.
SUMMARY_KEYS = (
    "frobenius",
    "spectral",
    "stable_rank",
    "effective_rank",
    "energy_rank_50",
    "energy_rank_90",
    "energy_rank_99",
    "numerical_rank",
    "utilization",
    "energy_utilization",
)


def energy_ranks(s: np.ndarray, shares: Iterable[float] = ENERGY_SHARES) -> dict[str, int]:
    """{`energy_rank_<pct>`: the smallest k whose top-k singular values hold that share of
    sum s^2}; 0 for dW = 0. The same definition as `summarize_spectrum`'s energy ranks and
    PEFT's `convert_to_lora` cutoff."""
    energy = np.sort(np.square(np.asarray(s, np.float64)))[::-1]
    total = energy.sum()
    frac = np.cumsum(energy) / (total if total > 0 else 1.0)
    out = {}
    for q in shares:
        # Rounding can leave the last cumulative share a hair below 1: cap at len(s).
        k = min(int(np.sum(frac < q)) + 1, len(energy)) if total > 0 else 0
        out[f"energy_rank_{round(q * 100)}"] = k
    return out


def _gram(x: np.ndarray) -> np.ndarray:
    # A general product: OpenBLAS's dsyrk (half the work on paper) measured 2x slower here.
    x = np.asarray(x, np.float64)
    return x.T @ x


def _sqrt_psd(g: np.ndarray) -> np.ndarray:
    lam, v = np.linalg.eigh(g)
    return (v * np.sqrt(np.clip(lam, 0.0, None))) @ v.T


def singular_values(lora_a: np.ndarray, lora_b: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Singular values of dW = scale * lora_a (in, r) @ lora_b (r, out), descending, float64,
    length r (zeros past dW's rank)."""
    h = _sqrt_psd(_gram(lora_a))
    m = h @ _gram(np.asarray(lora_b).T) @ h
    eig = np.linalg.eigvalsh(0.5 * (m + m.T))[::-1]
    return abs(float(scale)) * np.sqrt(np.clip(eig, 0.0, None))


def summarize(s: np.ndarray, rank: int, shape: tuple[int, int]) -> dict[str, float]:
    """Scalar summaries of singular values `s` (descending) of a rank-`rank` update of
    `shape` (in, out); every one 0 when dW = 0."""
    s = np.asarray(s, np.float64)
    out = dict.fromkeys(SUMMARY_KEYS, 0.0)
    if s.size == 0 or s[0] <= 0:
        return out
    energy = s**2
    total = energy.sum()
    p = s / s.sum()
    p = p[p > 0]
    out |= {
        "frobenius": float(np.sqrt(total)),
        "spectral": float(s[0]),
        "stable_rank": float(total / energy[0]),
        "effective_rank": float(np.exp(-np.sum(p * np.log(p)))),
        # float32 factors: singular values below this are rounding (numpy's matrix_rank rule)
        "numerical_rank": float(np.sum(s > max(shape) * np.finfo(np.float32).eps * s[0])),
    }
    out |= {name: float(k) for name, k in energy_ranks(s).items()}
    out["utilization"] = out["stable_rank"] / rank
    out["energy_utilization"] = out["energy_rank_90"] / rank
    return out


def _basis_in_gram(a: np.ndarray) -> np.ndarray:
    """V S⁻¹, so that a's left singular vectors (descending) are U = a V S⁻¹; directions with
    s below float32 rounding get 0 (they span nothing)."""
    lam, v = np.linalg.eigh(_gram(a))
    lam, v = lam[::-1], v[:, ::-1]
    s = np.sqrt(np.clip(lam, 0.0, None))
    keep = s > max(a.shape) * np.finfo(np.float32).eps * (s[0] if s.size else 0.0)
    return v * np.where(keep, 1.0 / np.where(keep, s, 1.0), 0.0)


def phi_grid(a1: np.ndarray, a2: np.ndarray) -> np.ndarray:
    """phi(i, j) = ||U1[:, :i]ᵀ U2[:, :j]||_F² / min(i, j) (Eq. 4) for the left singular
    vectors of a1 (n, r1) and a2 (n, r2): (r1, r2) float64. For lora_a (in, r) that is the
    input side (the paper's A); for lora_bᵀ (out, r) the output side (its B)."""
    a1, a2 = np.asarray(a1, np.float64), np.asarray(a2, np.float64)
    w1, w2 = _basis_in_gram(a1), _basis_in_gram(a2)
    overlap = np.square(w1.T @ (a1.T @ a2) @ w2)
    cum = overlap.cumsum(0).cumsum(1)
    i, j = np.arange(1, cum.shape[0] + 1), np.arange(1, cum.shape[1] + 1)
    return cum / np.minimum.outer(i, j)


def expected_random_phi(n: int, r1: int, r2: int) -> np.ndarray:
    """Exact E phi(i, j) = max(i, j) / n for independent uniformly random subspaces of R^n."""
    i = np.arange(1, r1 + 1)[:, None]
    j = np.arange(1, r2 + 1)[None, :]
    return np.maximum(i, j) / n

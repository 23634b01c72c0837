"""The LoRA scale of dW = scale * A @ B for each scaling rule, in plain Python: the adapter
reader and the audit use it without importing JAX (`lora_jax.lora` re-exports it)."""

from __future__ import annotations

import math

# The scalings of dW = scale * A @ B that rank studies compare (they confound rank otherwise).
SCALINGS = {
    "alpha_over_r": lambda alpha, r: alpha / r,  # Hu et al. 2021
    "alpha_over_sqrt_r": lambda alpha, r: alpha / math.sqrt(r),  # rsLoRA, Kalajdzievski 2023
    "none": lambda alpha, r: 1.0,  # flax.nnx.LoRA
}


def lora_scale(rank: int, alpha: float, scaling: str = "alpha_over_r") -> float:
    """The factor multiplying A @ B. Raises for an unknown `scaling` name."""
    if scaling not in SCALINGS:
        raise ValueError(
            f"scaling={scaling!r} is not valid; allowed: {', '.join(SCALINGS)}. Pick one with "
            "e.g. `scaling=alpha_over_r`."
        )
    return float(SCALINGS[scaling](alpha, rank)) if rank > 0 else 0.0

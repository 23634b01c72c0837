"""Rank measurements of LoRA updates: pure, jit-friendly functions on arrays.

Layouts follow `lora_jax.lora.LoRADense`: kernel (in, out), lora_a (in, r), lora_b (r, out),
dW = scale * lora_a @ lora_b (in, out). The paper's A, B, W are lora_a.T, lora_b.T, kernel.T;
each module docstring says how its orientation maps onto the paper's. Plots live in
`lora_jax.analysis.figures` (imported on demand: it pulls in matplotlib).
"""

from __future__ import annotations

from lora_jax.lazy import lazy_getattr

# name -> module, grouped by what a researcher reaches for; imported on first use, so
# `import lora_jax.peft_adapter` (the audit) loads no JAX.
_EXPORTS = {
    # Dense updates W_ft - W_0 (full fine-tuning): spectrum, truncation, phi against LoRA's.
    "energy_ranks": "full_update",
    "random_like": "full_update",
    "truncate": "full_update",
    "update_phi": "full_update",
    "update_svd": "full_update",
    # Intruder dimensions (Shuttleworth et al. 2024) and their mitigation.
    "count_intruders": "intruders",
    "intruder_cosines": "intruders",
    "intruder_curve": "intruders",
    "scale_intruders": "intruders",
    # dW against the frozen W (Table 7, Fig. 8).
    "DW_VS_W_KEYS": "projection",
    "KernelSVD": "projection",
    "dw_vs_w": "projection",
    "kernel_svd": "projection",
    "random_projection_norm": "projection",
    "w_dw_phi_grid": "projection",
    # Subspace similarity phi (Hu et al. 2021, Eq. 4) and its random baseline.
    "expected_random_phi": "similarity",
    "input_subspace": "similarity",
    "output_subspace": "similarity",
    "phi_grid_a": "similarity",
    "phi_grid_b": "similarity",
    "random_baseline": "similarity",
    "random_mean_phi": "similarity",
    "subspace_similarity": "similarity",
    # Spectrum of dW from the factors (exact, without forming dW) and its summaries.
    "SUMMARY_KEYS": "spectrum",
    "dw_svd": "spectrum",
    "spectrum": "spectrum",
    "spectrum_summary": "spectrum",
    "summarize_spectrum": "spectrum",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)

"""Rank measurements of LoRA updates: pure, jit-friendly functions on arrays.

Layouts follow `lora_jax.lora.LoRADense`: kernel (in, out), lora_a (in, r), lora_b (r, out),
dW = scale * lora_a @ lora_b (in, out). The paper's A, B, W are lora_a.T, lora_b.T, kernel.T;
each module docstring says how its orientation maps onto the paper's. Plots live in
`lora_jax.analysis.figures` (imported on demand: it pulls in matplotlib).
"""

# Dense updates W_ft - W_0 (full fine-tuning): spectrum, truncation, phi against LoRA's.
from lora_jax.analysis.full_update import (
    random_like,
    truncate,
    update_phi,
    update_svd,
)

# Intruder dimensions (Shuttleworth et al. 2024) and their mitigation.
from lora_jax.analysis.intruders import (
    count_intruders,
    intruder_cosines,
    intruder_curve,
    scale_intruders,
)

# dW against the frozen W (Table 7, Fig. 8).
from lora_jax.analysis.projection import (
    DW_VS_W_KEYS,
    KernelSVD,
    dw_vs_w,
    kernel_svd,
    random_projection_norm,
    w_dw_phi_grid,
)

# Subspace similarity phi (Hu et al. 2021, Eq. 4) and its random baseline.
from lora_jax.analysis.similarity import (
    expected_random_phi,
    input_subspace,
    output_subspace,
    phi_grid_a,
    phi_grid_b,
    random_baseline,
    random_mean_phi,
    subspace_similarity,
)

# Spectrum of dW from the factors (exact, without forming dW) and its summaries.
from lora_jax.analysis.spectrum import (
    SUMMARY_KEYS,
    dw_svd,
    spectrum,
    spectrum_summary,
    summarize_spectrum,
)

# Energy ranks of any spectrum (numpy; shared with the base-free audit).
from lora_jax.audit.cores import energy_ranks

__all__ = [
    "DW_VS_W_KEYS",
    "SUMMARY_KEYS",
    "KernelSVD",
    "count_intruders",
    "dw_svd",
    "dw_vs_w",
    "energy_ranks",
    "expected_random_phi",
    "input_subspace",
    "intruder_cosines",
    "intruder_curve",
    "kernel_svd",
    "output_subspace",
    "phi_grid_a",
    "phi_grid_b",
    "random_baseline",
    "random_like",
    "random_mean_phi",
    "random_projection_norm",
    "scale_intruders",
    "spectrum",
    "spectrum_summary",
    "subspace_similarity",
    "summarize_spectrum",
    "truncate",
    "update_phi",
    "update_svd",
    "w_dw_phi_grid",
]

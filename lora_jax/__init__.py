"""lora_jax: research on the rank of LoRA updates, in JAX/Flax.

The verbs a researcher uses, in small groups (each module's docstring has the details):

    >>> from lora_jax import LoRADense, LoRAConfig, merge, label_params, split, phi_grid_a, dw_vs_w
"""

# ruff: noqa: I001 (the groups below are ordered by what a researcher reaches for)

# The layer and the weight math (dW = scale * lora_a @ lora_b; lora_a is the paper's A^T);
# mixed_dot: the bf16 x bf16 -> float32 product of `LoRADense(dtype="bfloat16")`.
from lora_jax.lora import (
    LoRAConfig,
    LoRADense,
    adapters,
    delta_w,
    lora_scale,
    merge,
    mixed_dot,
    unmerge,
)

# Freezing: label every leaf trainable or frozen, split/combine, the optimizer over trainables.
from lora_jax.partition import combine, count_params, label_params, make_optimizer, split

# Rank measurements on arrays: phi (Eq. 4), spectra of dW, dW against W (Table 7).
from lora_jax.analysis import (
    dw_svd,
    dw_vs_w,
    expected_random_phi,
    kernel_svd,
    phi_grid_a,
    phi_grid_b,
    random_baseline,
    spectrum,
    spectrum_summary,
    subspace_similarity,
    w_dw_phi_grid,
)

# The analysis over files: run folders, any PEFT LoRA adapter, W from the base checkpoint.
from lora_jax.analysis.updates import analyze_adapters, analyze_runs
from lora_jax.weights.base_kernels import read_kernels
from lora_jax.run_record import RunRecord, read_runs

# PEFT adapters, out and in.
from lora_jax.adapter_io import Adapter, export_adapter, read_adapter

__all__ = [
    "Adapter",
    "LoRAConfig",
    "LoRADense",
    "RunRecord",
    "adapters",
    "analyze_adapters",
    "analyze_runs",
    "combine",
    "count_params",
    "delta_w",
    "dw_svd",
    "dw_vs_w",
    "expected_random_phi",
    "export_adapter",
    "kernel_svd",
    "label_params",
    "lora_scale",
    "make_optimizer",
    "merge",
    "mixed_dot",
    "phi_grid_a",
    "phi_grid_b",
    "random_baseline",
    "read_adapter",
    "read_kernels",
    "read_runs",
    "spectrum",
    "spectrum_summary",
    "split",
    "subspace_similarity",
    "unmerge",
    "w_dw_phi_grid",
]

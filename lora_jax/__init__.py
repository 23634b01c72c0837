"""lora_jax: research on the rank of LoRA updates, in JAX/Flax.

The verbs a researcher uses, in small groups (each module's docstring has the details):

    >>> from lora_jax import LoRADense, LoRAConfig, merge, label_params, split, phi_grid_a, dw_vs_w
"""

from __future__ import annotations

from lora_jax.lazy import lazy_getattr

# name -> module, grouped by what a researcher reaches for; imported on first use, so
# `import lora_jax.peft_adapter` (the audit) loads no JAX.
_EXPORTS = {
    # The layer and the weight math (dW = scale * lora_a @ lora_b; lora_a is the paper's A^T);
    # mixed_dot: the bf16 x bf16 -> float32 product of `LoRADense(dtype="bfloat16")`.
    "LoRAConfig": "lora",
    "LoRADense": "lora",
    "adapters": "lora",
    "delta_w": "lora",
    "lora_scale": "lora",
    "merge": "lora",
    "mixed_dot": "lora",
    "unmerge": "lora",
    # Freezing: label every leaf trainable or frozen, split/combine, the optimizer over trainables.
    "combine": "partition",
    "count_params": "partition",
    "label_params": "partition",
    "make_optimizer": "partition",
    "split": "partition",
    # Rank measurements on arrays: phi (Eq. 4), spectra of dW, dW against W (Table 7).
    "dw_svd": "analysis",
    "dw_vs_w": "analysis",
    "expected_random_phi": "analysis",
    "kernel_svd": "analysis",
    "phi_grid_a": "analysis",
    "phi_grid_b": "analysis",
    "random_baseline": "analysis",
    "spectrum": "analysis",
    "spectrum_summary": "analysis",
    "subspace_similarity": "analysis",
    "w_dw_phi_grid": "analysis",
    # The analysis over files: run folders, any PEFT LoRA adapter, W from the base checkpoint.
    "analyze_adapters": "analysis.updates",
    "analyze_runs": "analysis.updates",
    "read_kernels": "weights.base_kernels",
    "RunRecord": "runs.record",
    "read_runs": "runs.record",
    # PEFT adapters, out and in.
    "Adapter": "peft_adapter",
    "export_adapter": "adapter_io",
    "read_adapter": "peft_adapter",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)

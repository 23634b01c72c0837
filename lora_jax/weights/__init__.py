"""Checkpoint readers (HF folders, safetensors, GGUF) and the HF/GGUF name maps, below the models.

Nothing here imports `lora_jax.models` (the analysis reads W through these modules without
building a model); import the submodule you need, this package face loads none of them.
"""

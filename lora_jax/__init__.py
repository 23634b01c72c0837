"""lora_jax: research on the rank of LoRA updates, in JAX/Flax."""

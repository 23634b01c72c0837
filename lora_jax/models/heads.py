"""What an encoder puts on top of its hidden states: masked mean pooling and the new task head
(shared by every encoder family; the head's params are the ones `HEAD_RULES` trains fully).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def mean_pool(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Masked mean over tokens, as sentence-transformers (count clamped at 1e-9)."""
    m = attention_mask[..., None].astype(hidden.dtype)
    return (hidden * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1e-9)


class ClassificationHead(nn.Module):
    """[dropout -> dense -> tanh ->] dropout -> out. `hidden_size=0` skips the dense layer."""

    num_labels: int
    hidden_size: int = 0
    dropout: float = 0.1
    initializer_range: float = 0.02

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        init = nn.initializers.normal(self.initializer_range)
        drop = nn.Dropout(self.dropout)
        if self.hidden_size:
            x = drop(x, deterministic=deterministic)
            x = jnp.tanh(nn.Dense(self.hidden_size, kernel_init=init, name="dense")(x))
        x = drop(x, deterministic=deterministic)
        return nn.Dense(self.num_labels, kernel_init=init, name="out")(x)

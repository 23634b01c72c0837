"""The decoder code GPT-2 and Llama share: the KV cache, causal attention, the layer loop and
the LM head (`CausalLM`: logits, `init_cache`).

A family subclasses `DecoderStack` (its embeddings, layers, final norm) and `CausalLM` (which
stack it runs); the param tree is theirs, the control flow is written once here.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from lora_jax.lora import LoRAConfig, LoRADense, check_dtype, mixed_dot

# Decoders have no task head: every base weight is frozen, only adapters train.
HEAD_RULES: tuple[str, ...] = ()


class KVCache(NamedTuple):
    """Keys and values of every layer for a fixed-size window of `max_length` slots (a pytree).

    Attributes:
        keys, values: one (B, T, num_kv_heads, head_dim) array per layer.
        mask: (B, T) int32, 1 where a slot holds a real (non-padding) token.
        length: (B,) int32, real tokens seen so far per row (= the next position id).
        index: () int32, the next slot to write (shared by all rows).
    """

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]
    mask: jax.Array
    length: jax.Array
    index: jax.Array

    @classmethod
    def zeros(
        cls,
        num_layers: int,
        batch: int,
        max_length: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: Any = jnp.float32,
    ) -> KVCache:
        shape = (batch, max_length, num_kv_heads, head_dim)
        return cls(
            keys=tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)),
            values=tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)),
            mask=jnp.zeros((batch, max_length), jnp.int32),
            length=jnp.zeros((batch,), jnp.int32),
            index=jnp.zeros((), jnp.int32),
        )

    @property
    def max_length(self) -> int:
        return self.mask.shape[1]

    def gather(self, rows: jax.Array) -> KVCache:
        """The cache of rows `rows` (B',) of this one (beam search reorders beams with it)."""
        take = lambda a: jnp.take(a, rows, axis=0)  # noqa: E731
        return KVCache(
            tuple(map(take, self.keys)),
            tuple(map(take, self.values)),
            take(self.mask),
            take(self.length),
            self.index,
        )


def chunk_positions(
    attention_mask: jax.Array, cache: KVCache | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Position ids (B, L), the key mask (B, T) and the write slot of a chunk of L tokens.

    Without a cache the keys are the chunk itself (T = L, slot 0); with one, the chunk's mask
    is written into `cache.mask` at `cache.index`.
    """
    mask = attention_mask.astype(jnp.int32)
    if cache is None:
        start, kv_mask, index = jnp.zeros(mask.shape[:1], jnp.int32), mask, jnp.zeros((), jnp.int32)
    else:
        start, index = cache.length, cache.index
        kv_mask = jax.lax.dynamic_update_slice(cache.mask, mask, (0, index))
    positions = jnp.maximum(start[:, None] + jnp.cumsum(mask, axis=1) - 1, 0)
    return positions, kv_mask, index


def next_cache(
    cache: KVCache, keys: list, values: list, kv_mask: jax.Array, attention_mask: jax.Array
) -> KVCache:
    """The cache after a chunk of `attention_mask.shape[1]` tokens was written."""
    return KVCache(
        tuple(keys),
        tuple(values),
        kv_mask,
        cache.length + attention_mask.astype(jnp.int32).sum(axis=1),
        cache.index + attention_mask.shape[1],
    )


def causal_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    kv_mask: jax.Array,
    index: jax.Array,
    dropout: nn.Module | None = None,
    deterministic: bool = True,
) -> jax.Array:
    """Softmax attention of queries (B, L, H, D) over keys/values (B, T, Hkv, D), H % Hkv == 0.

    Query i sits at slot `index + i`; it attends key slot j iff j <= index + i and
    `kv_mask[:, j]`. Scores and softmax run in float32. Returns (B, L, H * D).
    """
    b, length, h, d = q.shape
    t, hkv = k.shape[1], k.shape[2]
    q = q.reshape(b, length, hkv, h // hkv, d)
    scores = jnp.einsum("bqkgd,btkd->bkgqt", q, k).astype(jnp.float32) / jnp.sqrt(jnp.float32(d))
    allowed = (jnp.arange(t)[None, :] <= index + jnp.arange(length)[:, None])[None] & (
        kv_mask[:, None, :] > 0
    )  # (B, L, T)
    scores = jnp.where(allowed[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    if dropout is not None:
        probs = dropout(probs, deterministic=deterministic)
    out = jnp.einsum("bkgqt,btkd->bqkgd", probs, v)
    return out.reshape(b, length, h * d)


def tied_logits(embed: nn.Embed, x: jax.Array, dtype: str) -> jax.Array:
    """The tied LM head x @ table.T: `embed.attend` in float32; in bfloat16 a `mixed_dot`
    (the table may be stored in bfloat16: `attend` would cast all of it to float32)."""
    if check_dtype(dtype) == "float32":
        return embed.attend(x)
    return mixed_dot(x, embed.embedding, dtype, w_out_in=True)


def write_cache(cache_arr: jax.Array, new: jax.Array, index: jax.Array) -> jax.Array:
    """`cache_arr` (B, T, H, D) with this chunk's keys or values `new` written at slot `index`."""
    return jax.lax.dynamic_update_slice(cache_arr, new.astype(cache_arr.dtype), (0, index, 0, 0))


def cached_attention(q, k, v, kv, kv_mask, index, dropout_rate, deterministic):
    """`causal_attention` of this chunk, its keys/values first written into the layer's cache
    `kv` (None: no cache). Returns (context (B, L, H * D), (keys, values) to cache)."""
    if kv is not None:
        k, v = write_cache(kv[0], k, index), write_cache(kv[1], v, index)
    drop = nn.Dropout(dropout_rate) if dropout_rate else None  # on the probabilities
    return causal_attention(q, k, v, kv_mask, index, drop, deterministic), (k, v)


class DecoderStack(nn.Module):
    """Embeddings, layers, final norm -> hidden states (B, L, d), and the cache after them.

    A family's subclass sets up `layers` (each called as `layer(x, positions, kv_mask, index,
    kv, deterministic)` -> `(x, (k, v))`) and defines `embed(input_ids, positions,
    deterministic)`, `final_norm(x)` and `attend(x)` (the tied LM head).
    """

    def __call__(self, input_ids, attention_mask, cache=None, deterministic=True):
        positions, kv_mask, index = chunk_positions(attention_mask, cache)
        x = self.embed(input_ids, positions, deterministic)
        keys, values = [], []
        for i, layer in enumerate(self.layers):
            kv = None if cache is None else (cache.keys[i], cache.values[i])
            x, (k, v) = layer(x, positions, kv_mask, index, kv, deterministic)
            keys.append(k)
            values.append(v)
        new_cache = (
            None if cache is None else next_cache(cache, keys, values, kv_mask, attention_mask)
        )
        return self.final_norm(x), new_cache


class CausalLM(nn.Module):
    """A decoder stack with its LM head: ids (B, L) -> logits (B, L, V), float32.

    With `cache=` (from `init_cache`) returns `(logits, new_cache)` instead. A subclass names
    its stack (`stack`); the head is the stack's embeddings unless the config unties it
    (`tie_word_embeddings=False`: an `lm_head` Dense). `learned_positions` caps the cache at
    `max_position_embeddings` (GPT-2's position table ends there; RoPE does not).
    """

    config: Any
    lora: LoRAConfig

    head_rules = HEAD_RULES
    # Class attributes, not fields (no annotation): the family's DecoderStack subclass.
    stack = None
    learned_positions = False

    def setup(self) -> None:
        self.decoder = self.stack(self.config, self.lora)
        if not self.config.tie_word_embeddings:
            # rank 0: exactly nn.Dense's params and float32 product, plus `dtype`'s mixed one
            self.lm_head = LoRADense(
                self.config.vocab_size,
                use_bias=False,
                kernel_init=nn.initializers.normal(self.config.initializer_range),
                dtype=self.config.dtype,
            )

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        deterministic: bool = True,
        cache: KVCache | None = None,
    ) -> jax.Array | tuple[jax.Array, KVCache]:
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        x, new_cache = self.decoder(input_ids, attention_mask, cache, deterministic)
        logits = self.decoder.attend(x) if self.config.tie_word_embeddings else self.lm_head(x)
        logits = logits.astype(jnp.float32)
        return logits if cache is None else (logits, new_cache)

    def init_cache(self, batch: int, max_length: int, dtype: Any = jnp.float32) -> KVCache:
        """An empty `KVCache` for `batch` rows and `max_length` slots (needs no params)."""
        cfg = self.config
        if self.learned_positions and max_length > cfg.max_position_embeddings:
            raise ValueError(
                f"max_length={max_length} exceeds max_position_embeddings="
                f"{cfg.max_position_embeddings} of {type(cfg).__name__} (learned positions)."
            )
        return KVCache.zeros(
            cfg.num_layers, batch, max_length, cfg.num_kv_heads, cfg.head_dim, dtype
        )

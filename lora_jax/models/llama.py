"""Llama-family decoders (Llama 2/3, SmolLM, Mistral-style GQA) in Flax linen, with LoRA.

Pre-RMSNorm decoder layers with rotary positions (HF's "rotate-half" layout), grouped-query
attention (`num_kv_heads` <= `num_heads`), a SwiGLU MLP, and tied or untied embeddings.
Every projection is a `LoRADense` named by its LoRA target, so the parameter tree reads

    decoder/embed_tokens/embedding                     (V, d)
    decoder/layer_<i>/attention_norm/scale             (d,)
    decoder/layer_<i>/attention/{q,k,v,o}/kernel[,bias][,lora_a,lora_b]
    decoder/layer_<i>/ffn_norm/scale                   (d,)
    decoder/layer_<i>/ffn/{ffn_gate,ffn_in,ffn_out}/kernel[,lora_a,lora_b]
    decoder/norm/scale                                 (d,)
    lm_head/kernel                                     (d, V)   only if not tied

(`ffn_gate` = HF's gate_proj, `ffn_in` = up_proj, `ffn_out` = down_proj.)

The model is a causal LM: `__call__(input_ids, attention_mask=None, deterministic=True)`
returns logits (B, L, V). Position ids count the real tokens of each row (`cumsum(mask) - 1`),
so left-padded batches decode correctly. Passing `cache=` (a `KVCache`, see `init_cache`)
writes this chunk's keys/values into the cache at `cache.index` and returns
`(logits, new_cache)`; the same code path does prefill and one-token steps, and it jits.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from lora_jax.lora import LoRAConfig
    >>> model = LlamaForCausalLM(LlamaConfig.tiny(), LoRAConfig(rank=2, targets="qv"))
    >>> ids = jnp.ones((1, 5), jnp.int32)
    >>> params = model.init(jax.random.key(0), ids)["params"]
    >>> params["decoder"]["layer_0"]["attention"]["q"]["lora_a"].shape
    (32, 2)
    >>> cache = model.init_cache(batch=1, max_length=8)
    >>> logits, cache = model.apply({"params": params}, ids, cache=cache)
    >>> int(cache.index)
    5
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from lora_jax.lora import LoRAConfig

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


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Architecture of a Llama-family decoder (the fields of a HF `config.json` we need).

    Attributes:
        num_kv_heads: key/value heads (GQA); equal to `num_heads` for plain multi-head.
        head_dim: per-head width; None = hidden_size // num_heads.
        tie_word_embeddings: the LM head reuses `embed_tokens` (no `lm_head` param).
        attention_bias: q/k/v/o have biases (Qwen2-style); False for Llama.
    """

    vocab_size: int = 32000
    hidden_size: int = 4096
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    intermediate_size: int = 11008
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    head_dim: int | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}."
            )
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(
                    f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}."
                )
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], **overrides: Any) -> LlamaConfig:
        """Read a Hugging Face `config.json` dict (model_type llama, mistral without sliding
        window, qwen2)."""
        model_type = hf.get("model_type", "llama")
        if model_type not in ("llama", "mistral", "qwen2"):
            raise ValueError(
                f"model_type={model_type!r} is not a Llama-family decoder; allowed: llama, "
                "mistral, qwen2."
            )
        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"hidden_act={act!r} is not supported; allowed: silu (SwiGLU).")
        scaling = hf.get("rope_scaling")
        if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
            raise ValueError(
                f"rope_scaling={scaling!r} is not supported; allowed: none (plain RoPE)."
            )
        theta = hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta")
        eos = hf.get("eos_token_id", 2)
        kw = dict(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            intermediate_size=hf["intermediate_size"],
            max_position_embeddings=hf.get("max_position_embeddings", 4096),
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta or 10000.0),
            head_dim=hf.get("head_dim"),
            tie_word_embeddings=hf.get("tie_word_embeddings", False),
            attention_bias=hf.get("attention_bias", model_type == "qwen2"),
            attention_dropout=hf.get("attention_dropout", 0.0),
            initializer_range=hf.get("initializer_range", 0.02),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=eos[0] if isinstance(eos, list) else eos,
            pad_token_id=hf.get("pad_token_id"),
        )
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def tiny(cls, **overrides: Any) -> LlamaConfig:
        """2 layers, hidden 32, 4 query / 2 KV heads, FFN 64, vocab 100: for tests."""
        kw = dict(
            vocab_size=100,
            hidden_size=32,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
            rms_norm_eps=1e-5,
            bos_token_id=2,
            eos_token_id=3,
            pad_token_id=0,
        )
        kw.update(overrides)
        return cls(**kw)


def lora_shapes(config: LlamaConfig) -> dict[str, tuple[int, int]]:
    """The LoRA targets of a Llama layer and each one's kernel shape (in, out)."""
    d, i = config.hidden_size, config.intermediate_size
    hq, hkv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    return {
        "q": (d, hq),
        "k": (d, hkv),
        "v": (d, hkv),
        "o": (hq, d),
        "ffn_gate": (d, i),
        "ffn_in": (d, i),
        "ffn_out": (i, d),
    }


# ---- pieces shared with GPT-2 -----------------------------------------------------------------


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


def run_layers(layers, x, cache, kv_mask, attention_mask, call):
    """Run decoder `layers` over `x`, each as `call(layer, x, kv)` -> (x, (k, v)), where `kv` is
    the layer's cached keys/values (None without a cache). Returns (x, the updated cache)."""
    keys, values = [], []
    for i, layer in enumerate(layers):
        x, (k, v) = call(layer, x, None if cache is None else (cache.keys[i], cache.values[i]))
        keys.append(k)
        values.append(v)
    return x, None if cache is None else next_cache(cache, keys, values, kv_mask, attention_mask)


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


def write_cache(cache_arr: jax.Array, new: jax.Array, index: jax.Array) -> jax.Array:
    return jax.lax.dynamic_update_slice(cache_arr, new.astype(cache_arr.dtype), (0, index, 0, 0))


# ---- Llama --------------------------------------------------------------------------------------


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding, HF layout: pairs (i, i + D/2) rotate together. x: (B, L, H, D)."""
    d = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # (B, L, D/2)
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(emb).astype(x.dtype), jnp.sin(emb).astype(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * scale, computed in float32 (as HF's LlamaRMSNorm)."""

    eps: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones_init(), (x.shape[-1],))
        h = x.astype(jnp.float32)
        h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + self.eps)
        return scale * h.astype(x.dtype)


class LlamaAttention(nn.Module):
    config: LlamaConfig
    lora: LoRAConfig
    layer: int

    @nn.compact
    def __call__(self, x, positions, kv_mask, index, kv=None, deterministic=True):
        cfg, lora, i = self.config, self.lora, self.layer
        init = nn.initializers.normal(cfg.initializer_range)
        b, length, _ = x.shape
        hd, bias = cfg.head_dim, cfg.attention_bias

        def proj(name, heads):
            y = lora.dense(name, i, heads * hd, use_bias=bias, kernel_init=init)(x, deterministic)
            return y.reshape(b, length, heads, hd)

        q = rope(proj("q", cfg.num_heads), positions, cfg.rope_theta)
        k = rope(proj("k", cfg.num_kv_heads), positions, cfg.rope_theta)
        v = proj("v", cfg.num_kv_heads)
        if kv is not None:
            k, v = write_cache(kv[0], k, index), write_cache(kv[1], v, index)
        drop = nn.Dropout(cfg.attention_dropout) if cfg.attention_dropout else None
        ctx = causal_attention(q, k, v, kv_mask, index, drop, deterministic)
        out = lora.dense("o", i, cfg.hidden_size, use_bias=bias, kernel_init=init)
        return out(ctx, deterministic), (k, v)


class LlamaMLP(nn.Module):
    config: LlamaConfig
    lora: LoRAConfig
    layer: int

    @nn.compact
    def __call__(self, x, deterministic=True):
        cfg, lora, i = self.config, self.lora, self.layer
        init = nn.initializers.normal(cfg.initializer_range)
        width = cfg.intermediate_size
        gate = lora.dense("ffn_gate", i, width, use_bias=False, kernel_init=init)(x, deterministic)
        up = lora.dense("ffn_in", i, width, use_bias=False, kernel_init=init)(x, deterministic)
        down = lora.dense("ffn_out", i, cfg.hidden_size, use_bias=False, kernel_init=init)
        return down(nn.silu(gate) * up, deterministic)


class LlamaLayer(nn.Module):
    config: LlamaConfig
    lora: LoRAConfig
    layer: int

    @nn.compact
    def __call__(self, x, positions, kv_mask, index, kv=None, deterministic=True):
        cfg = self.config
        h = RMSNorm(cfg.rms_norm_eps, name="attention_norm")(x)
        attn = LlamaAttention(cfg, self.lora, self.layer, name="attention")
        h, kv = attn(h, positions, kv_mask, index, kv, deterministic)
        x = x + h
        h = RMSNorm(cfg.rms_norm_eps, name="ffn_norm")(x)
        return x + LlamaMLP(cfg, self.lora, self.layer, name="ffn")(h, deterministic), kv


class LlamaDecoder(nn.Module):
    """Embeddings + layers + final norm -> hidden states (B, L, d)."""

    config: LlamaConfig
    lora: LoRAConfig

    def setup(self) -> None:
        cfg = self.config
        self.lora.check_layers(cfg.num_layers)
        self.embed_tokens = nn.Embed(
            cfg.vocab_size, cfg.hidden_size, embedding_init=nn.initializers.normal(0.02)
        )
        self.layers = [
            LlamaLayer(cfg, self.lora, i, name=f"layer_{i}") for i in range(cfg.num_layers)
        ]
        self.norm = RMSNorm(cfg.rms_norm_eps)

    def __call__(self, input_ids, attention_mask, cache=None, deterministic=True):
        positions, kv_mask, index = chunk_positions(attention_mask, cache)
        x = self.embed_tokens(input_ids)
        x, new_cache = run_layers(
            self.layers,
            x,
            cache,
            kv_mask,
            attention_mask,
            lambda layer, x, kv: layer(x, positions, kv_mask, index, kv, deterministic),
        )
        return self.norm(x), new_cache

    def attend(self, x: jax.Array) -> jax.Array:
        return self.embed_tokens.attend(x)


class LlamaForCausalLM(nn.Module):
    """A Llama decoder with its LM head: ids (B, L) -> logits (B, L, V), float32.

    With `cache=` (from `init_cache`) returns `(logits, new_cache)` instead.
    """

    config: LlamaConfig
    lora: LoRAConfig

    head_rules = HEAD_RULES

    def setup(self) -> None:
        self.decoder = LlamaDecoder(self.config, self.lora)
        if not self.config.tie_word_embeddings:
            self.lm_head = nn.Dense(
                self.config.vocab_size,
                use_bias=False,
                kernel_init=nn.initializers.normal(self.config.initializer_range),
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
        return KVCache.zeros(
            cfg.num_layers, batch, max_length, cfg.num_kv_heads, cfg.head_dim, dtype
        )

"""Llama-family decoders (Llama 2/3, SmolLM, Mistral, Qwen2) in Flax linen, with LoRA.

Pre-RMSNorm decoder layers with rotary positions (HF's "rotate-half" layout; Llama 3.1's
`llama3` frequency scaling), grouped-query attention (`num_kv_heads` <= `num_heads`), q/k/v
biases (Qwen2), a SwiGLU MLP, and tied or untied embeddings.
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

import functools
from collections.abc import Collection, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lora_jax.lora import LoRAConfig
from lora_jax.models.decoder import CausalLM, DecoderStack, cached_attention, tied_logits
from lora_jax.models.llama_config import MODEL_TYPES as MODEL_TYPES
from lora_jax.models.llama_config import LlamaConfig
from lora_jax.weights.params import Place, fill_params, llama_source

# The family contract (see `lora_jax.models.registry`): HF model types (`MODEL_TYPES`, imported
# above from `llama_config`), name map. GGUF files (llama architecture) are read with HF's names
# by `lora_jax.weights.gguf`.
DECODER = True
hf_source = llama_source


# ---- Llama --------------------------------------------------------------------------------------


def rope_frequencies(
    head_dim: int, theta: float, llama3: tuple[float, ...] | None = None
) -> jax.Array:
    """RoPE's inverse frequencies (head_dim / 2,), rescaled as Llama 3.1's `llama3` type when
    given (transformers' `_compute_llama3_parameters`): wavelengths longer than the original
    context / low_freq_factor slow down by `factor`, shorter than context / high_freq_factor
    stay, and those between blend the two smoothly."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    if llama3 is None:
        return inv_freq
    factor, low, high, original = llama3
    wavelen = 2 * jnp.pi / inv_freq
    scaled = jnp.where(wavelen > original / low, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= original / high) & (wavelen <= original / low)
    return jnp.where(medium, blended, scaled)


def rope(
    x: jax.Array, positions: jax.Array, theta: float, llama3: tuple[float, ...] | None = None
) -> jax.Array:
    """Rotary embedding, HF layout: pairs (i, i + D/2) rotate together. x: (B, L, H, D)."""
    d = x.shape[-1]
    freqs = positions.astype(jnp.float32)[..., None] * rope_frequencies(d, theta, llama3)
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
            y = lora.dense(name, i, heads * hd, use_bias=bias, kernel_init=init, dtype=cfg.dtype)(
                x, deterministic
            )
            return y.reshape(b, length, heads, hd)

        q = rope(proj("q", cfg.num_heads), positions, cfg.rope_theta, cfg.rope_llama3)
        k = rope(proj("k", cfg.num_kv_heads), positions, cfg.rope_theta, cfg.rope_llama3)
        v = proj("v", cfg.num_kv_heads)
        ctx, kv = cached_attention(
            q, k, v, kv, kv_mask, index, cfg.attention_dropout, deterministic
        )
        out = lora.dense(
            "o", i, cfg.hidden_size, use_bias=cfg.o_bias, kernel_init=init, dtype=cfg.dtype
        )
        return out(ctx, deterministic), kv


class LlamaMLP(nn.Module):
    config: LlamaConfig
    lora: LoRAConfig
    layer: int

    @nn.compact
    def __call__(self, x, deterministic=True):
        cfg, lora, i = self.config, self.lora, self.layer
        init = nn.initializers.normal(cfg.initializer_range)
        dense = functools.partial(
            lora.dense, layer=i, use_bias=False, kernel_init=init, dtype=cfg.dtype
        )
        gate = dense("ffn_gate", features=cfg.intermediate_size)(x, deterministic)
        up = dense("ffn_in", features=cfg.intermediate_size)(x, deterministic)
        down = dense("ffn_out", features=cfg.hidden_size)
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


class LlamaDecoder(DecoderStack):
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

    def embed(self, input_ids, positions, deterministic):
        # positions enter through RoPE in each layer; a float32 lookup (the table may be
        # stored in bfloat16: a frozen base, model.dtype)
        return self.embed_tokens(input_ids).astype(jnp.float32)

    def final_norm(self, x: jax.Array) -> jax.Array:
        return self.norm(x)

    def attend(self, x: jax.Array) -> jax.Array:
        return tied_logits(self.embed_tokens, x, self.config.dtype)


class LlamaForCausalLM(CausalLM):
    """A Llama decoder with its LM head (tied, or `lm_head`): ids (B, L) -> logits (B, L, V),
    float32. With `cache=` (from `init_cache`) returns `(logits, new_cache)` instead.
    """

    config: LlamaConfig
    lora: LoRAConfig

    stack = LlamaDecoder


# ---- the rest of the family contract ----------------------------------------------------------


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


def build(config: LlamaConfig, lora: LoRAConfig, **head: Any) -> LlamaForCausalLM:
    """The causal LM of `config` (`head` options are for encoders; a decoder has no head)."""
    return LlamaForCausalLM(config, lora)


def config_for(hf: Mapping[str, Any], names: Collection[str]) -> LlamaConfig:
    """The config of a HF `config.json` dict, tied when the checkpoint has no `lm_head`."""
    config = LlamaConfig.from_hf(hf)
    if not config.tie_word_embeddings and "lm_head.weight" not in names:
        config = LlamaConfig.from_hf(hf, tie_word_embeddings=True)
    return config


def load_base(
    reader: Mapping[str, Any], template: Mapping[str, Any], where: Any, place: Place | None = None
) -> dict:
    """Every non-LoRA leaf of `template` from the checkpoint (HF names, no prefix), each put on
    its device(s) by `place` (`fill_params`)."""
    return fill_params(reader, template, hf_source, "", where, place)


Config = LlamaConfig

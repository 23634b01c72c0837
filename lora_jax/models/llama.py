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

import dataclasses
import functools
from collections.abc import Collection, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lora_jax.lora import LoRAConfig
from lora_jax.models.decoder import CausalLM, DecoderStack, cached_attention, tied_logits
from lora_jax.weights.params import Place, fill_params, llama_source

# The family contract (see `lora_jax.models.registry`): HF model types, name map. GGUF files
# (llama architecture) are read with HF's names by `lora_jax.weights.gguf`.
MODEL_TYPES = ("llama", "mistral", "qwen2")
DECODER = True
hf_source = llama_source


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Architecture of a Llama-family decoder (the fields of a HF `config.json` we need).

    Attributes:
        num_kv_heads: key/value heads (GQA); equal to `num_heads` for plain multi-head.
        head_dim: per-head width; None = hidden_size // num_heads.
        tie_word_embeddings: the LM head reuses `embed_tokens` (no `lm_head` param).
        attention_bias: q/k/v have biases (Qwen2; Llama with `attention_bias: true`).
        o_bias: o has a bias; None = as `attention_bias` (Llama). Qwen2 has none on o.
        rope_llama3: Llama 3.1's RoPE frequency scaling, (factor, low_freq_factor,
            high_freq_factor, original_max_position_embeddings); None = plain RoPE.
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
    o_bias: bool | None = None
    rope_llama3: tuple[float, float, float, float] | None = None
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    pad_token_id: int | None = None
    # The projections' compute dtype (`LoRADense.dtype`): float32, or bfloat16 (bf16 x bf16
    # -> float32 dots, the LM head too); the residual stream and norms stay float32.
    dtype: str = "float32"

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
        if self.o_bias is None:
            object.__setattr__(self, "o_bias", self.attention_bias)

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], **overrides: Any) -> LlamaConfig:
        """Read a Hugging Face `config.json` dict: model_type llama (Llama 2/3, SmolLM),
        mistral, qwen2; RoPE as transformers 4 writes it (`rope_theta`, `rope_scaling`) or 5
        (`rope_parameters`). What we cannot compute exactly (another RoPE scaling, a sliding
        window shorter than the model's positions, MLP biases) raises naming the value."""
        model_type = hf.get("model_type", "llama")
        if model_type not in MODEL_TYPES:
            raise ValueError(
                f"model_type={model_type!r} is not a Llama-family decoder; allowed: "
                f"{', '.join(MODEL_TYPES)}."
            )
        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"hidden_act={act!r} is not supported; allowed: silu (SwiGLU).")
        if hf.get("mlp_bias"):
            raise ValueError(
                "mlp_bias=true is not supported (gate/up/down without biases); allowed: false."
            )
        max_pos = hf.get("max_position_embeddings", 4096)
        _check_sliding_window(hf, model_type, max_pos)
        theta, llama3 = _rope(hf)
        if model_type == "qwen2":  # Qwen2Attention: biases on q/k/v always, never on o
            bias, o_bias = True, False
        else:
            bias = o_bias = bool(hf.get("attention_bias") or False)
        eos = hf.get("eos_token_id", 2)
        kw = dict(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            intermediate_size=hf["intermediate_size"],
            max_position_embeddings=max_pos,
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=theta,
            rope_llama3=llama3,
            head_dim=hf.get("head_dim"),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=bias,
            o_bias=o_bias,
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


# Llama 3.1's scaling: the four fields of its `rope_scaling` / `rope_parameters`, in order.
LLAMA3_ROPE_FIELDS = (
    "factor",
    "low_freq_factor",
    "high_freq_factor",
    "original_max_position_embeddings",
)


def _rope(hf: Mapping[str, Any]) -> tuple[float, tuple[float, ...] | None]:
    """(rope_theta, Llama 3 scaling or None) of a config.json: transformers 4 writes
    `rope_theta` + `rope_scaling`, transformers 5 one `rope_parameters` dict."""
    params = {**(hf.get("rope_parameters") or {}), **(hf.get("rope_scaling") or {})}
    theta = float(hf.get("rope_theta") or params.get("rope_theta") or 10000.0)
    kind = params.get("rope_type", params.get("type")) or "default"
    if kind == "default":
        return theta, None
    if kind != "llama3":
        raise ValueError(
            f"rope_scaling rope_type={kind!r} is not supported; allowed: default (plain RoPE), "
            "llama3. Positions beyond the original context need that scaling, so the model "
            "would be wrong; use a checkpoint without it."
        )
    missing = [k for k in LLAMA3_ROPE_FIELDS if k not in params]
    if missing:
        raise ValueError(
            f"rope_scaling of type 'llama3' lacks {', '.join(missing)}; it needs all of "
            f"{', '.join(LLAMA3_ROPE_FIELDS)} (as Llama 3.1's config.json has them)."
        )
    return theta, tuple(float(params[k]) for k in LLAMA3_ROPE_FIELDS)


def _check_sliding_window(hf: Mapping[str, Any], model_type: str, max_pos: int) -> None:
    """Raise if attention is windowed within the model's positions: we attend to all of them.
    A window >= max_position_embeddings never masks anything, so it reads as full attention."""
    window = hf.get("sliding_window")
    if model_type == "qwen2" and not hf.get("use_sliding_window", False):
        return  # Qwen2 keeps sliding_window in its config but uses it only with this flag
    if model_type == "llama" or window is None or window >= max_pos:
        return
    raise ValueError(
        f"sliding_window={window} < max_position_embeddings={max_pos} ({model_type}); allowed: "
        "null or >= max_position_embeddings (we compute full causal attention). If your "
        f'sequences are at most {window} tokens the two agree: set "sliding_window": null '
        "in the folder's config.json."
    )


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

"""GPT-2 in Flax linen, with LoRA on q, k, v (independently), o and the MLP.

Pre-LayerNorm decoder with learned positions, tanh-GELU, and an LM head tied to `wte`.
HF's fused `c_attn` (d -> 3d) is built as three `LoRADense` layers `q`, `k`, `v` whose kernels
are the column slices of `c_attn` when loading (see `lora_jax.weights.params.gpt2_source`):
the same function, and each slice gets its own `lora_a`/`lora_b` exactly as loralib's
`MergedLinear(enable_lora=[True, True, True])`, while the analysis sees plain (d, d) matrices.
The parameter tree reads

    decoder/wte/embedding, decoder/wpe/embedding         (V, d), (P, d)
    decoder/layer_<i>/ln_1/{scale,bias}
    decoder/layer_<i>/attention/{q,k,v,o}/{kernel,bias[,lora_a,lora_b]}
    decoder/layer_<i>/ln_2/{scale,bias}
    decoder/layer_<i>/ffn/{ffn_in,ffn_out}/{kernel,bias[,lora_a,lora_b]}   (c_fc, mlp.c_proj)
    decoder/ln_f/{scale,bias}

`__call__(input_ids, attention_mask=None, deterministic=True, cache=None)` is the shared
`models.decoder.CausalLM`'s (logits, or `(logits, cache)` with a `KVCache`); positions count
real tokens, so left padding works.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from lora_jax.lora import LoRAConfig
    >>> model = GPT2LMHeadModel(GPT2Config.tiny(), LoRAConfig(rank=2, targets="qv"))
    >>> params = model.init(jax.random.key(0), jnp.ones((1, 4), jnp.int32))["params"]
    >>> params["decoder"]["layer_1"]["attention"]["v"]["lora_b"].shape
    (2, 32)
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
from lora_jax.weights.params import GPT2_ANCHOR, Place, fill_params, find_prefix, gpt2_source

# The family contract (see `lora_jax.models.registry`): HF model types, name map.
MODEL_TYPES = ("gpt2",)
DECODER = True
hf_source = gpt2_source


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """Architecture of a GPT-2 model (the fields of a HF `config.json` we need)."""

    vocab_size: int = 50257
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 1024
    layer_norm_eps: float = 1e-5
    embd_dropout: float = 0.1
    attention_dropout: float = 0.1
    resid_dropout: float = 0.1
    initializer_range: float = 0.02
    bos_token_id: int | None = 50256
    eos_token_id: int | None = 50256
    pad_token_id: int | None = None
    # The projections' compute dtype (`LoRADense.dtype`): float32, or bfloat16 (bf16 x bf16
    # -> float32 dots, the LM head too); the residual stream and norms stay float32.
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}."
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def num_kv_heads(self) -> int:
        return self.num_heads

    @property
    def tie_word_embeddings(self) -> bool:
        return True  # GPT-2's LM head is always `wte`

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], **overrides: Any) -> GPT2Config:
        """Read a Hugging Face GPT-2 `config.json` dict."""
        if hf.get("model_type", "gpt2") != "gpt2":
            raise ValueError(f"model_type={hf.get('model_type')!r} is not gpt2.")
        act = hf.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"activation_function={act!r} is not supported; allowed: gelu_new.")
        for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
            if hf.get(flag):
                raise ValueError(f"{flag}=True is not supported; allowed: False.")
        d = hf.get("n_embd", 768)
        kw = dict(
            vocab_size=hf.get("vocab_size", 50257),
            hidden_size=d,
            num_layers=hf.get("n_layer", 12),
            num_heads=hf.get("n_head", 12),
            intermediate_size=hf.get("n_inner") or 4 * d,
            max_position_embeddings=hf.get("n_positions", 1024),
            layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            embd_dropout=hf.get("embd_pdrop", 0.1),
            attention_dropout=hf.get("attn_pdrop", 0.1),
            resid_dropout=hf.get("resid_pdrop", 0.1),
            initializer_range=hf.get("initializer_range", 0.02),
            bos_token_id=hf.get("bos_token_id", 50256),
            eos_token_id=hf.get("eos_token_id", 50256),
            pad_token_id=hf.get("pad_token_id"),
        )
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def tiny(cls, **overrides: Any) -> GPT2Config:
        """2 layers, hidden 32, 4 heads, FFN 128, vocab 100, 64 positions: for tests."""
        kw = dict(
            vocab_size=100,
            hidden_size=32,
            num_layers=2,
            num_heads=4,
            intermediate_size=128,
            max_position_embeddings=64,
            bos_token_id=2,
            eos_token_id=3,
            pad_token_id=0,
        )
        kw.update(overrides)
        return cls(**kw)


def lora_shapes(config: GPT2Config) -> dict[str, tuple[int, int]]:
    """The LoRA targets of a GPT-2 layer and each one's kernel shape (in, out)."""
    d, i = config.hidden_size, config.intermediate_size
    return {"q": (d, d), "k": (d, d), "v": (d, d), "o": (d, d), "ffn_in": (d, i), "ffn_out": (i, d)}


def _ln(cfg: GPT2Config, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, use_fast_variance=False, name=name)


class GPT2Attention(nn.Module):
    config: GPT2Config
    lora: LoRAConfig
    layer: int

    @nn.compact
    def __call__(self, x, kv_mask, index, kv=None, deterministic=True):
        cfg, lora, i = self.config, self.lora, self.layer
        init = nn.initializers.normal(cfg.initializer_range)
        b, length, d = x.shape

        def proj(name):
            y = lora.dense(name, i, d, kernel_init=init, dtype=cfg.dtype)(x, deterministic)
            return y.reshape(b, length, cfg.num_heads, cfg.head_dim)

        q, k, v = proj("q"), proj("k"), proj("v")
        ctx, kv = cached_attention(
            q, k, v, kv, kv_mask, index, cfg.attention_dropout, deterministic
        )
        out = lora.dense("o", i, d, kernel_init=init, dtype=cfg.dtype)(ctx, deterministic)
        return nn.Dropout(cfg.resid_dropout)(out, deterministic=deterministic), kv


class GPT2MLP(nn.Module):
    config: GPT2Config
    lora: LoRAConfig
    layer: int

    @nn.compact
    def __call__(self, x, deterministic=True):
        cfg, lora, i = self.config, self.lora, self.layer
        init = nn.initializers.normal(cfg.initializer_range)
        dense = functools.partial(lora.dense, layer=i, kernel_init=init, dtype=cfg.dtype)
        h = dense("ffn_in", features=cfg.intermediate_size)(x, deterministic)
        h = nn.gelu(h, approximate=True)
        h = dense("ffn_out", features=cfg.hidden_size)(h, deterministic)
        return nn.Dropout(cfg.resid_dropout)(h, deterministic=deterministic)


class GPT2Layer(nn.Module):
    config: GPT2Config
    lora: LoRAConfig
    layer: int

    @nn.compact
    def __call__(self, x, positions, kv_mask, index, kv=None, deterministic=True):
        del positions  # learned positions are added to the embeddings, not here
        cfg = self.config
        attn = GPT2Attention(cfg, self.lora, self.layer, name="attention")
        h, kv = attn(_ln(cfg, "ln_1")(x), kv_mask, index, kv, deterministic)
        x = x + h
        x = x + GPT2MLP(cfg, self.lora, self.layer, name="ffn")(_ln(cfg, "ln_2")(x), deterministic)
        return x, kv


class GPT2Decoder(DecoderStack):
    """Token + position embeddings, layers, final LayerNorm -> hidden states (B, L, d)."""

    config: GPT2Config
    lora: LoRAConfig

    def setup(self) -> None:
        cfg = self.config
        self.lora.check_layers(cfg.num_layers)
        init = nn.initializers.normal(cfg.initializer_range)
        self.wte = nn.Embed(cfg.vocab_size, cfg.hidden_size, embedding_init=init)
        self.wpe = nn.Embed(
            cfg.max_position_embeddings,
            cfg.hidden_size,
            embedding_init=nn.initializers.normal(0.01),
        )
        self.drop = nn.Dropout(cfg.embd_dropout)
        self.layers = [
            GPT2Layer(cfg, self.lora, i, name=f"layer_{i}") for i in range(cfg.num_layers)
        ]
        self.ln_f = _ln(cfg, "ln_f")

    def embed(self, input_ids, positions, deterministic):
        # float32 lookups: the tables may be stored in bfloat16 (a frozen base, model.dtype).
        x = self.wte(input_ids).astype(jnp.float32) + self.wpe(positions).astype(jnp.float32)
        return self.drop(x, deterministic=deterministic)

    def final_norm(self, x: jax.Array) -> jax.Array:
        return self.ln_f(x)

    def attend(self, x: jax.Array) -> jax.Array:
        return tied_logits(self.wte, x, self.config.dtype)


class GPT2LMHeadModel(CausalLM):
    """GPT-2 with its tied LM head: ids (B, L) -> logits (B, L, V), float32.

    With `cache=` (from `init_cache`) returns `(logits, new_cache)` instead.
    """

    config: GPT2Config
    lora: LoRAConfig

    stack = GPT2Decoder
    learned_positions = True


# ---- the rest of the family contract ----------------------------------------------------------


def build(config: GPT2Config, lora: LoRAConfig, **head: Any) -> GPT2LMHeadModel:
    """The causal LM of `config` (`head` options are for encoders; a decoder has no head)."""
    return GPT2LMHeadModel(config, lora)


def config_for(hf: Mapping[str, Any], names: Collection[str]) -> GPT2Config:
    """The config of a HF `config.json` dict (GPT-2's fits any of its checkpoints' tensors)."""
    return GPT2Config.from_hf(hf)


def load_base(
    reader: Mapping[str, Any], template: Mapping[str, Any], where: Any, place: Place | None = None
) -> dict:
    """Every non-LoRA leaf of `template` from the checkpoint (`transformer.` prefix or none),
    each put on its device(s) by `place` (`fill_params`)."""
    prefix = find_prefix(set(reader), GPT2_ANCHOR, "GPT-2", where)
    return fill_params(reader, template, hf_source, prefix, where, place)


Config = GPT2Config

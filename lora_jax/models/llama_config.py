"""The typed config of a Llama-family decoder (Llama 2/3, SmolLM, Mistral, Qwen2), read from a
Hugging Face `config.json` (transformers 4 or 5 layout) and checked: RoPE and its Llama 3.1
scaling, sliding windows; the Flax modules that use it are in `lora_jax.models.llama`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

# The HF model types the family reads (its `MODEL_TYPES` in the family contract).
MODEL_TYPES = ("llama", "mistral", "qwen2")


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

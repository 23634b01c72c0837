"""What `benchmarks.gpu_versus` measures, shared by both sides (no JAX, no torch): the shapes
(HF config.json fields, written here: nothing is downloaded), the modes, the batch both sides
train on and the one model-FLOPs formula (the formula is in `benchmarks/gpu_versus.py`'s
docstring).
"""

from __future__ import annotations

import dataclasses

MODES = {
    "lora_r8": {"rank": 8, "full_finetune": False},
    "lora_r16": {"rank": 16, "full_finetune": False},
    "full_ft": {"rank": 0, "full_finetune": True},
}
FUSED_RANKS = (1, 2, 4, 8)  # the default sweep's; --tiny: (4, 8)
LORA_ALPHA = 8.0
NUM_LABELS = 2


@dataclasses.dataclass(frozen=True)
class Shape:
    """A model shape: its HF config.json fields, the batch (sequences x tokens) per mode kind."""

    hf: dict
    batch: int
    length: int
    batch_full_ft: int | None = None  # None: as `batch`

    @property
    def family(self) -> str:
        return self.hf["model_type"]

    def batch_of(self, mode: str) -> int:
        full = MODES.get(mode, {}).get("full_finetune")
        return self.batch_full_ft if full and self.batch_full_ft else self.batch


ROBERTA_BASE = {
    "model_type": "roberta",
    "vocab_size": 50265,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 514,
    "type_vocab_size": 1,
    "layer_norm_eps": 1e-5,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}
GPT2_MEDIUM = {
    "model_type": "gpt2",
    "vocab_size": 50257,
    "n_embd": 1024,
    "n_layer": 24,
    "n_head": 16,
    "n_positions": 1024,
    "activation_function": "gelu_new",
    "layer_norm_epsilon": 1e-5,
    "embd_pdrop": 0.0,
    "attn_pdrop": 0.0,
    "resid_pdrop": 0.0,
    "bos_token_id": 50256,
    "eos_token_id": 50256,
}
LLAMA_1B = {  # meta-llama/Llama-3.2-1B's config.json
    "model_type": "llama",
    "vocab_size": 128256,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    "tie_word_embeddings": True,
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
}
SHAPES = {
    "roberta_base": Shape(ROBERTA_BASE, 16, 128),
    "gpt2_medium": Shape(GPT2_MEDIUM, 8, 512),
    "llama_1b": Shape(LLAMA_1B, 4, 2048, batch_full_ft=2),
}
# --tiny: the same families, 2 layers, width 64, a 512-token vocabulary, short sequences.
TINY = {
    "roberta_base": Shape(
        {**ROBERTA_BASE, "vocab_size": 512, "hidden_size": 64, "num_hidden_layers": 2}
        | {"num_attention_heads": 4, "intermediate_size": 128, "max_position_embeddings": 66},
        4,
        32,
    ),
    "gpt2_medium": Shape(
        {**GPT2_MEDIUM, "vocab_size": 512, "n_embd": 64, "n_layer": 2, "n_head": 4}
        | {"n_positions": 64, "bos_token_id": 2, "eos_token_id": 2},
        2,
        64,
    ),
    "llama_1b": Shape(
        {**LLAMA_1B, "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128}
        | {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
        | {"head_dim": 16, "max_position_embeddings": 128, "bos_token_id": 1, "eos_token_id": 2},
        2,
        64,
        batch_full_ft=1,
    ),
}


def shapes(tiny: bool) -> dict[str, Shape]:
    return TINY if tiny else SHAPES


def fused_ranks(tiny: bool) -> tuple[int, ...]:
    return (4, 8) if tiny else FUSED_RANKS


def dims(hf: dict) -> dict:
    """layers, d (hidden), d_attn (heads x head_dim), d_kv, ffn, vocab of a config dict."""
    if hf["model_type"] == "gpt2":
        d = hf["n_embd"]
        return dict(layers=hf["n_layer"], d=d, d_attn=d, d_kv=d, ffn=4 * d, vocab=hf["vocab_size"])
    d, heads = hf["hidden_size"], hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or d // heads
    kv = hf.get("num_key_value_heads") or heads
    return dict(
        layers=hf["num_hidden_layers"],
        d=d,
        d_attn=heads * head_dim,
        d_kv=kv * head_dim,
        ffn=hf["intermediate_size"],
        vocab=hf["vocab_size"],
    )


def model_flops(shape: Shape, mode: str, batch: int, length: int) -> float:
    """Model FLOPs of one train step (the module docstring's formula; the same for both sides)."""
    g = dims(shape.hf)
    d, d_attn, d_kv = g["d"], g["d_attn"], g["d_kv"]
    per_layer = 2 * d * d_attn + 2 * d * d_kv  # q, o; k, v
    per_layer += (3 if shape.family == "llama" else 2) * d * g["ffn"]  # SwiGLU: gate, up, down
    n_base = g["layers"] * per_layer + (g["vocab"] * d if shape.family != "roberta" else 0)
    rank, full = MODES[mode]["rank"], MODES[mode]["full_finetune"]
    n_lora = g["layers"] * rank * ((d + d_attn) + (d + d_kv))  # q (d -> d_attn), v (d -> d_kv)
    attention = 12 * g["layers"] * length * d_attn
    per_token = (6 if full else 4) * n_base + 6 * n_lora + attention
    head = 6 * (d * d + d * NUM_LABELS) if shape.family == "roberta" else 0  # dense + out
    return float(batch * length * per_token + batch * head)


def make_batch(shape: Shape, batch: int, seed: int = 0) -> dict:
    """Random token ids (above the special ids), a full mask; labels or the LM's loss mask."""
    import numpy as np

    rng = np.random.default_rng(seed)
    vocab = shape.hf["vocab_size"]
    out = {
        "input_ids": rng.integers(3, vocab, (batch, shape.length)).astype(np.int32),
        "attention_mask": np.ones((batch, shape.length), np.int32),
    }
    if shape.family == "roberta":
        out["token_type_ids"] = np.zeros((batch, shape.length), np.int32)
        out["labels"] = rng.integers(0, NUM_LABELS, batch).astype(np.int32)
    else:
        out["loss_mask"] = np.ones((batch, shape.length), np.int32)
    return out

"""The typed config of a BERT-family encoder (BERT, MiniLM, RoBERTa), read from a Hugging Face
`config.json` and checked; the Flax modules that use it are in `lora_jax.models.bert`.

The three families share one architecture; their differences are all in `BertConfig`:

| family  | position ids                              | token types | layer-norm eps |
|---------|-------------------------------------------|-------------|----------------|
| BERT    | 0..L-1                                    | 2           | 1e-12          |
| MiniLM  | as BERT (all-MiniLM-L6-v2 is a BertModel) | 2           | 1e-12          |
| RoBERTa | pad+1.. over non-pad tokens, pad elsewhere | 1           | 1e-5           |
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

FAMILIES = ("bert", "roberta")
# The HF model types the family reads (its `MODEL_TYPES` in the family contract).
MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "camembert")


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Architecture of a BERT-family encoder (the fields of a HF `config.json` we need).

    Attributes:
        family: "bert" (BERT, MiniLM) or "roberta"; decides position ids.
        add_pooler: whether the encoder has the pretrained [CLS] pooler (dense + tanh).
        dtype: compute dtype of every projection, "float32" or "bfloat16" (mixed precision).
        position_offset: RoBERTa's padding_idx + 1 (positions start there); 0 for BERT.
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    initializer_range: float = 0.02
    pad_token_id: int = 0
    family: str = "bert"
    add_pooler: bool = True
    # The projections' compute dtype (`LoRADense.dtype`): float32, or bfloat16 (bf16 x bf16
    # -> float32 dots); the residual stream, LayerNorm and softmax stay float32 either way.
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(
                f"family={self.family!r} is not valid; allowed: {', '.join(FAMILIES)}."
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}."
            )

    @property
    def position_offset(self) -> int:
        return self.pad_token_id + 1 if self.family == "roberta" else 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], **overrides: Any) -> BertConfig:
        """Read a Hugging Face `config.json` dict (model_type "bert" or "roberta")."""
        model_type = hf.get("model_type", "bert")
        family = "roberta" if model_type in ("roberta", "xlm-roberta", "camembert") else "bert"
        if model_type not in MODEL_TYPES:
            raise ValueError(
                f"model_type={model_type!r} is not a BERT-family encoder; allowed: bert, roberta."
            )
        act = hf.get("hidden_act", "gelu")
        if act != "gelu":
            raise ValueError(f"hidden_act={act!r} is not supported; allowed: gelu (exact, erf).")
        pet = hf.get("position_embedding_type", "absolute")
        if pet != "absolute":
            raise ValueError(
                f"position_embedding_type={pet!r} is not supported; allowed: absolute."
            )
        kw = dict(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            intermediate_size=hf["intermediate_size"],
            max_position_embeddings=hf["max_position_embeddings"],
            type_vocab_size=hf.get("type_vocab_size", 2),
            layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
            hidden_dropout=hf.get("hidden_dropout_prob", 0.1),
            attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
            initializer_range=hf.get("initializer_range", 0.02),
            pad_token_id=hf.get("pad_token_id", 1 if family == "roberta" else 0) or 0,
            family=family,
            # HF's RobertaForSequenceClassification drops the pooler; BertFor... uses it.
            add_pooler=family == "bert",
        )
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def tiny(cls, family: str = "bert", **overrides: Any) -> BertConfig:
        """2 layers, hidden 32, 4 heads, FFN 64, vocab 100: for tests.

        Weights are drawn with std 0.3, not BERT's 0.02: at 0.02 a width-32 model has uniform
        attention and a linear GELU, which hides most of a LoRA update from the loss (the
        planted-rank test could not recover its subspace).
        """
        kw = dict(
            initializer_range=0.3,
            vocab_size=100,
            hidden_size=32,
            num_layers=2,
            num_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
            family=family,
        )
        if family == "roberta":
            kw.update(type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1, add_pooler=False)
        kw.update(overrides)
        return cls(**kw)

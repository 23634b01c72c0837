"""BERT-family encoders (BERT, MiniLM, RoBERTa) in Flax linen, with LoRA on every projection.

The three families share one architecture (post-LayerNorm Transformer encoder, exact GELU);
their differences are all in `BertConfig`:

| family  | position ids                              | token types | layer-norm eps |
|---------|-------------------------------------------|-------------|----------------|
| BERT    | 0..L-1                                    | 2           | 1e-12          |
| MiniLM  | as BERT (all-MiniLM-L6-v2 is a BertModel) | 2           | 1e-12          |
| RoBERTa | pad+1.. over non-pad tokens, pad elsewhere | 1           | 1e-5           |

Every attention projection and both FFN projections are `LoRADense` layers named by their
LoRA target name, so the parameter tree reads

    encoder/embeddings/{word_embeddings,position_embeddings,token_type_embeddings}/embedding
    encoder/embeddings/layer_norm/{scale,bias}
    encoder/layer_<i>/attention/{q,k,v,o}/{kernel,bias[,lora_a,lora_b]}
    encoder/layer_<i>/attention/layer_norm/{scale,bias}
    encoder/layer_<i>/ffn/{ffn_in,ffn_out}/{kernel,bias[,lora_a,lora_b]}
    encoder/layer_<i>/ffn/layer_norm/{scale,bias}
    encoder/pooler/{kernel,bias}                (BERT checkpoints only)
    head/...                                    (the new task head; see `HEAD_RULES`)

Adapters are found by a path element `layer_<i>` and the target name as the dict key.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from lora_jax.lora import LoRAConfig
    >>> model = BertEncoder(BertConfig.tiny(), LoRAConfig(rank=2, targets="qv"))
    >>> ids = jnp.ones((1, 5), jnp.int32)
    >>> params = model.init(jax.random.key(0), ids, jnp.ones_like(ids))["params"]
    >>> params["layer_0"]["attention"]["q"]["lora_a"].shape
    (32, 2)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lora_jax.lora import LoRAConfig
from lora_jax.models.heads import ClassificationHead, mean_pool
from lora_jax.weights.params import (
    ENCODER_ANCHOR,
    Place,
    encoder_source,
    fill_params,
    find_prefix,
    find_tensor,
)

# Parameter-path prefixes of the freshly initialised task head: train these fully (with LoRA).
# The pretrained BERT pooler (`encoder/pooler/`) is NOT in here: it stays frozen, as in PEFT's
# sequence-classification setting, which trains only `classifier`.
HEAD_RULES: tuple[str, ...] = ("head/",)
POOLINGS = ("cls", "mean")
FAMILIES = ("bert", "roberta")
# The family contract: HF model types read, name map of our param paths (under `encoder/`).
MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "camembert")
DECODER = False
hf_source = encoder_source


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


def position_ids(input_ids: jax.Array, config: BertConfig) -> jax.Array:
    """BERT: 0..L-1. RoBERTa: as HF's `create_position_ids_from_input_ids` (pad tokens get pad)."""
    if config.family == "roberta":
        mask = (input_ids != config.pad_token_id).astype(jnp.int32)
        return jnp.cumsum(mask, axis=-1) * mask + config.pad_token_id
    return jnp.broadcast_to(jnp.arange(input_ids.shape[-1]), input_ids.shape)


def _layer_norm(config: BertConfig, name: str) -> nn.LayerNorm:
    # Two-pass variance (as PyTorch) keeps parity with HF within 1e-5.
    return nn.LayerNorm(epsilon=config.layer_norm_eps, use_fast_variance=False, name=name)


class Embeddings(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, input_ids, token_type_ids, deterministic: bool = True):
        cfg = self.config
        init = nn.initializers.normal(cfg.initializer_range)
        words = nn.Embed(
            cfg.vocab_size, cfg.hidden_size, embedding_init=init, name="word_embeddings"
        )
        positions = nn.Embed(
            cfg.max_position_embeddings,
            cfg.hidden_size,
            embedding_init=init,
            name="position_embeddings",
        )
        types = nn.Embed(
            cfg.type_vocab_size, cfg.hidden_size, embedding_init=init, name="token_type_embeddings"
        )
        # float32 lookups: the tables may be stored in bfloat16 (a frozen base, model.dtype).
        x = (
            words(input_ids).astype(jnp.float32)
            + positions(position_ids(input_ids, cfg)).astype(jnp.float32)
            + types(token_type_ids).astype(jnp.float32)
        )
        x = _layer_norm(cfg, "layer_norm")(x)
        return nn.Dropout(cfg.hidden_dropout)(x, deterministic=deterministic)


class SelfAttention(nn.Module):
    config: BertConfig
    lora: LoRAConfig
    layer: int

    @nn.compact
    def __call__(self, x, mask_bias, deterministic: bool = True):
        cfg, lora = self.config, self.lora
        init = nn.initializers.normal(cfg.initializer_range)
        b, length, _ = x.shape

        def proj(name, h):
            return lora.dense(name, self.layer, cfg.hidden_size, kernel_init=init, dtype=cfg.dtype)(
                h, deterministic
            )

        def heads(name):
            return proj(name, x).reshape(b, length, cfg.num_heads, cfg.head_dim)

        q, k, v = heads("q"), heads("k"), heads("v")
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.float32(cfg.head_dim)).astype(
            q.dtype
        )
        probs = jax.nn.softmax(scores + mask_bias, axis=-1)
        probs = nn.Dropout(cfg.attention_dropout)(probs, deterministic=deterministic)
        ctx = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, length, cfg.hidden_size)
        out = proj("o", ctx)
        out = nn.Dropout(cfg.hidden_dropout)(out, deterministic=deterministic)
        return _layer_norm(cfg, "layer_norm")(out + x)


class FeedForward(nn.Module):
    config: BertConfig
    lora: LoRAConfig
    layer: int

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        cfg, lora = self.config, self.lora
        init = nn.initializers.normal(cfg.initializer_range)
        h = lora.dense(
            "ffn_in", self.layer, cfg.intermediate_size, kernel_init=init, dtype=cfg.dtype
        )(x, deterministic)
        h = nn.gelu(h, approximate=False)
        h = lora.dense("ffn_out", self.layer, cfg.hidden_size, kernel_init=init, dtype=cfg.dtype)(
            h, deterministic
        )
        h = nn.Dropout(cfg.hidden_dropout)(h, deterministic=deterministic)
        return _layer_norm(cfg, "layer_norm")(h + x)


class Layer(nn.Module):
    config: BertConfig
    lora: LoRAConfig
    layer: int

    @nn.compact
    def __call__(self, x, mask_bias, deterministic: bool = True):
        x = SelfAttention(self.config, self.lora, self.layer, name="attention")(
            x, mask_bias, deterministic
        )
        return FeedForward(self.config, self.lora, self.layer, name="ffn")(x, deterministic)


class BertEncoder(nn.Module):
    """Embeddings + `num_layers` Transformer layers -> last hidden states (B, L, H).

    The pretrained pooler (if `config.add_pooler`) is built here too, so it loads from the
    checkpoint; call `pool_cls` to apply it.
    """

    config: BertConfig
    lora: LoRAConfig

    def setup(self) -> None:
        cfg = self.config
        self.lora.check_layers(cfg.num_layers)
        self.embeddings = Embeddings(cfg)
        self.layers = [Layer(cfg, self.lora, i, name=f"layer_{i}") for i in range(cfg.num_layers)]
        if cfg.add_pooler:
            self.pooler = nn.Dense(
                cfg.hidden_size, kernel_init=nn.initializers.normal(cfg.initializer_range)
            )

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        token_type_ids: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids, deterministic)
        # Additive mask as HF: 0 where attended, the dtype's minimum where masked.
        mask_bias = (1.0 - attention_mask[:, None, None, :].astype(x.dtype)) * jnp.finfo(
            x.dtype
        ).min
        for layer in self.layers:
            x = layer(x, mask_bias, deterministic)
        if self.is_initializing() and self.config.add_pooler:
            self.pool_cls(x)  # create the pooler's params
        return x

    def pool_cls(self, hidden: jax.Array) -> jax.Array:
        """The pretrained pooler: tanh(dense(hidden[:, 0]))."""
        return jnp.tanh(self.pooler(hidden[:, 0]))


class BertForSequenceClassification(nn.Module):
    """Encoder + pooling + a fresh task head -> logits (B, num_labels); num_labels=1 regresses.

    Heads (all new params live under `head/`, the trainable-head rule `HEAD_RULES`):
      * pooling="cls" with a pretrained pooler (BERT): pooler (frozen, under `encoder/pooler`)
        -> dropout -> `head/out` (as HF's BertForSequenceClassification).
      * pooling="cls" without one (RoBERTa): [CLS]/<s> -> dropout -> `head/dense` -> tanh ->
        dropout -> `head/out` (as HF's RobertaClassificationHead, dense + out_proj).
      * pooling="mean" (sentence-transformers, MiniLM): masked mean -> dropout -> `head/out`.
    """

    config: BertConfig
    lora: LoRAConfig
    num_labels: int
    pooling: str = "cls"
    head_dropout: float = 0.1

    head_rules = HEAD_RULES

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        token_type_ids: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        if self.pooling not in POOLINGS:
            raise ValueError(
                f"pooling={self.pooling!r} is not valid; allowed: {', '.join(POOLINGS)}."
            )
        if self.num_labels < 1:
            raise ValueError(f"num_labels={self.num_labels} must be >= 1 (1 = regression).")
        cfg = self.config
        encoder = BertEncoder(cfg, self.lora, name="encoder")
        hidden = encoder(input_ids, attention_mask, token_type_ids, deterministic)
        if self.pooling == "mean":
            pooled, dense = mean_pool(hidden, attention_mask), False
        elif cfg.add_pooler:
            pooled, dense = encoder.pool_cls(hidden), False
        else:
            pooled, dense = hidden[:, 0], True
        head = ClassificationHead(
            self.num_labels,
            cfg.hidden_size if dense else 0,
            self.head_dropout,
            cfg.initializer_range,
            name="head",
        )
        return head(pooled, deterministic)


# ---- the rest of the family contract (see `lora_jax.models.registry`) ----------------------


def lora_shapes(config: BertConfig) -> dict[str, tuple[int, int]]:
    """The LoRA targets of a BERT layer and each one's kernel shape (in, out)."""
    h, i = config.hidden_size, config.intermediate_size
    return {"q": (h, h), "k": (h, h), "v": (h, h), "o": (h, h), "ffn_in": (h, i), "ffn_out": (i, h)}


def build(
    config: BertConfig,
    lora: LoRAConfig,
    *,
    num_labels: int,
    pooling: str = "cls",
    head_dropout: float = 0.1,
) -> BertForSequenceClassification:
    """The classifier of `config`: encoder, pooling and a fresh head of `num_labels` outputs."""
    return BertForSequenceClassification(config, lora, num_labels, pooling, head_dropout)


def config_for(hf: Mapping[str, Any], names: Collection[str]) -> BertConfig:
    """The config of a HF `config.json` dict, without the pooler if the checkpoint lacks one."""
    config = BertConfig.from_hf(hf)
    prefix = find_prefix(names, ENCODER_ANCHOR, "BERT-family")
    if config.add_pooler and find_tensor(names, prefix, "pooler.dense.weight") is None:
        config = BertConfig.from_hf(hf, add_pooler=False)
    return config


def load_base(
    reader: Mapping[str, Any], template: Mapping[str, Any], where: Any, place: Place | None = None
) -> dict:
    """Every non-LoRA leaf under `encoder/` of `template` from the checkpoint (the head is new),
    each put on its device(s) by `place` (`fill_params`)."""
    prefix = find_prefix(set(reader), ENCODER_ANCHOR, "BERT-family", where)
    flat = fill_params(reader, template["encoder"], hf_source, prefix, where, place)
    return {("encoder", *path): leaf for path, leaf in flat.items()}


Config = BertConfig

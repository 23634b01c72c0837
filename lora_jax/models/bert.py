"""BERT-family encoders (BERT, MiniLM, RoBERTa) in Flax linen, with LoRA on every projection.

The three families share one architecture (post-LayerNorm Transformer encoder, exact GELU);
their differences are all in `BertConfig` (read from a HF `config.json` in
`lora_jax.models.bert_config`, with the table of what differs).

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

from collections.abc import Collection, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lora_jax.lora import LoRAConfig
from lora_jax.models.bert_config import MODEL_TYPES as MODEL_TYPES
from lora_jax.models.bert_config import BertConfig
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
# The family contract: HF model types read (`MODEL_TYPES`, imported above from `bert_config`),
# name map of our param paths (under `encoder/`).
DECODER = False
hf_source = encoder_source


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

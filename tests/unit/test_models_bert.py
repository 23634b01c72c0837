"""BERT-family encoders: param-tree specs, LoRA placement, heads, position ids, dropout."""

from __future__ import annotations

import flax.traverse_util as tu
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerance import reordered_atol

from lora_jax.lora import LoRAConfig
from lora_jax.models import BertConfig, BertEncoder, BertForSequenceClassification
from lora_jax.models.bert import HEAD_RULES, position_ids
from lora_jax.models.heads import mean_pool

IDS = jnp.array([[2, 10, 11, 12, 3, 0], [2, 20, 3, 0, 0, 0]], jnp.int32)
MASK = (IDS != 0).astype(jnp.int32)


def _init(module, ids=IDS, mask=MASK):
    return module.init(jax.random.key(0), ids, mask)["params"]


def _shapes(module) -> dict[str, tuple[int, ...]]:
    tree = jax.eval_shape(lambda: _init(module))
    return {"/".join(p): v.shape for p, v in tu.flatten_dict(tree).items()}


def _lora_paths(shapes, leaf="lora_a"):
    return {p for p in shapes if p.endswith("/" + leaf)}


def test_tiny_encoder_whole_tree_spec():
    shapes = _shapes(BertEncoder(BertConfig.tiny(), LoRAConfig(rank=0)))
    expected = {
        "embeddings/word_embeddings/embedding": (100, 32),
        "embeddings/position_embeddings/embedding": (64, 32),
        "embeddings/token_type_embeddings/embedding": (2, 32),
        "embeddings/layer_norm/scale": (32,),
        "embeddings/layer_norm/bias": (32,),
        "pooler/kernel": (32, 32),
        "pooler/bias": (32,),
    }
    for i in range(2):
        for t in "qkvo":
            expected[f"layer_{i}/attention/{t}/kernel"] = (32, 32)
            expected[f"layer_{i}/attention/{t}/bias"] = (32,)
        expected[f"layer_{i}/ffn/ffn_in/kernel"] = (32, 64)
        expected[f"layer_{i}/ffn/ffn_in/bias"] = (64,)
        expected[f"layer_{i}/ffn/ffn_out/kernel"] = (64, 32)
        expected[f"layer_{i}/ffn/ffn_out/bias"] = (32,)
        for ln in ("attention", "ffn"):
            expected[f"layer_{i}/{ln}/layer_norm/scale"] = (32,)
            expected[f"layer_{i}/{ln}/layer_norm/bias"] = (32,)
    assert shapes == expected


def test_lora_only_at_configured_targets_and_layers():
    model = BertForSequenceClassification(
        BertConfig.tiny(), LoRAConfig(rank=4, targets="qv", layers=(1,)), num_labels=2
    )
    shapes = _shapes(model)
    assert _lora_paths(shapes) == {
        "encoder/layer_1/attention/q/lora_a",
        "encoder/layer_1/attention/v/lora_a",
    }
    assert _lora_paths(shapes, "lora_b") == {
        "encoder/layer_1/attention/q/lora_b",
        "encoder/layer_1/attention/v/lora_b",
    }
    assert shapes["encoder/layer_1/attention/q/lora_a"] == (32, 4)
    assert shapes["encoder/layer_1/attention/q/lora_b"] == (4, 32)


def test_all_targets_every_layer_and_ffn_shapes():
    shapes = _shapes(BertEncoder(BertConfig.tiny(), LoRAConfig(rank=2, targets="all")))
    expected = {f"layer_{i}/attention/{t}/lora_a" for i in range(2) for t in "qkvo"}
    expected |= {f"layer_{i}/ffn/{t}/lora_a" for i in range(2) for t in ("ffn_in", "ffn_out")}
    # ffn_gate is a valid target name for gated FFNs, but BERT has none: it matches nothing.
    assert _lora_paths(shapes) == expected
    assert shapes["layer_0/ffn/ffn_in/lora_a"] == (32, 2)
    assert shapes["layer_0/ffn/ffn_in/lora_b"] == (2, 64)
    assert shapes["layer_0/ffn/ffn_out/lora_a"] == (64, 2)


def test_rank_pattern_gives_per_target_ranks():
    lora = LoRAConfig(rank=8, targets="qkv", rank_pattern={"q": 2, "k": 1})
    shapes = _shapes(BertEncoder(BertConfig.tiny(), lora))
    for i in range(2):
        assert shapes[f"layer_{i}/attention/q/lora_a"] == (32, 2)
        assert shapes[f"layer_{i}/attention/k/lora_a"] == (32, 1)
        assert shapes[f"layer_{i}/attention/v/lora_a"] == (32, 8)


def test_rank_zero_gives_no_lora_params():
    shapes = _shapes(
        BertForSequenceClassification(BertConfig.tiny(), LoRAConfig(rank=0, targets="all"), 2)
    )
    assert not [p for p in shapes if "lora" in p]


def test_unknown_target_raises_with_valid_names():
    with pytest.raises(ValueError, match=r"ffn_in"):
        LoRAConfig(rank=2, targets="q,query")


def test_bad_layer_raises_with_valid_range():
    model = BertEncoder(BertConfig.tiny(), LoRAConfig(rank=2, layers=(0, 5)))
    with pytest.raises(ValueError, match=r"0\.\.1"):
        _init(model)


@pytest.mark.parametrize(
    ("family", "pooling", "num_labels", "head"),
    [
        ("bert", "cls", 3, {"head/out/kernel": (32, 3), "head/out/bias": (3,)}),
        ("bert", "mean", 1, {"head/out/kernel": (32, 1), "head/out/bias": (1,)}),
        (
            "roberta",
            "cls",
            2,
            {
                "head/dense/kernel": (32, 32),
                "head/dense/bias": (32,),
                "head/out/kernel": (32, 2),
                "head/out/bias": (2,),
            },
        ),
    ],
)
def test_head_shapes(family, pooling, num_labels, head):
    cfg = BertConfig.tiny(family)
    model = BertForSequenceClassification(cfg, LoRAConfig(rank=2), num_labels, pooling)
    shapes = _shapes(model)
    assert {p: s for p, s in shapes.items() if p.startswith(HEAD_RULES)} == head
    assert set(p.split("/")[0] for p in shapes) == {"encoder", "head"}
    assert ("encoder/pooler/kernel" in shapes) == (family == "bert")
    params = _init(model)
    logits = model.apply({"params": params}, IDS, MASK)
    assert logits.shape == (2, num_labels)


def test_lora_model_at_init_equals_rank0_model():
    cfg = BertConfig.tiny()
    lora_model = BertForSequenceClassification(cfg, LoRAConfig(rank=4, targets="all"), 2)
    base_model = BertForSequenceClassification(cfg, LoRAConfig(rank=0), 2)
    params = _init(lora_model)
    flat = tu.flatten_dict(params)
    base = tu.unflatten_dict({p: v for p, v in flat.items() if p[-1] not in ("lora_a", "lora_b")})
    assert jax.tree_util.tree_structure(base) == jax.tree_util.tree_structure(_init(base_model))
    # lora_b = 0 adds exact zeros; what may differ is the order XLA fuses the rest in.
    base_logits = base_model.apply({"params": base}, IDS, MASK)
    np.testing.assert_allclose(
        lora_model.apply({"params": params}, IDS, MASK),
        base_logits,
        rtol=0,
        atol=reordered_atol(base_logits, ops=cfg.num_layers * cfg.intermediate_size),
    )
    # ... and a nonzero lora_b changes the output.
    bumped = jax.tree_util.tree_map_with_path(
        lambda p, v: v + 0.1 if p[-1].key == "lora_b" else v, params
    )
    assert not np.allclose(
        lora_model.apply({"params": bumped}, IDS, MASK),
        lora_model.apply({"params": params}, IDS, MASK),
    )


def test_dropout_only_when_not_deterministic():
    model = BertForSequenceClassification(BertConfig.tiny(), LoRAConfig(rank=2, dropout=0.5), 2)
    params = _init(model)
    a = model.apply({"params": params}, IDS, MASK)
    np.testing.assert_array_equal(a, model.apply({"params": params}, IDS, MASK))
    b = model.apply(
        {"params": params}, IDS, MASK, deterministic=False, rngs={"dropout": jax.random.key(1)}
    )
    assert not np.allclose(a, b)


def test_grads_reach_lora_b_under_jit():
    model = BertForSequenceClassification(BertConfig.tiny(), LoRAConfig(rank=2), 2)
    params = _init(model)

    @jax.jit
    def loss(p):
        return model.apply({"params": p}, IDS, MASK).sum()

    g = jax.grad(loss)(params)
    assert float(jnp.abs(g["encoder"]["layer_0"]["attention"]["v"]["lora_b"]).sum()) > 0


def test_roberta_position_ids_skip_padding():
    cfg = BertConfig.tiny("roberta")  # pad_token_id = 1, positions start at 2
    ids = jnp.array([[0, 5, 6, 2, 1, 1], [0, 7, 2, 1, 1, 1]])
    np.testing.assert_array_equal(position_ids(ids, cfg), [[2, 3, 4, 5, 1, 1], [2, 3, 4, 1, 1, 1]])
    assert cfg.position_offset == 2
    np.testing.assert_array_equal(position_ids(ids, BertConfig.tiny()), [list(range(6))] * 2)


def test_mean_pool_ignores_padding():
    h = jnp.arange(12.0).reshape(2, 3, 2)
    m = jnp.array([[1, 1, 0], [1, 0, 0]])
    np.testing.assert_allclose(mean_pool(h, m), [[1.0, 2.0], [6.0, 7.0]])


def test_from_hf_reads_bert_and_roberta_configs():
    bert = BertConfig.from_hf(
        {
            "model_type": "bert",
            "vocab_size": 30522,
            "hidden_size": 384,
            "num_hidden_layers": 6,
            "num_attention_heads": 12,
            "intermediate_size": 1536,
            "max_position_embeddings": 512,
        }
    )
    assert (bert.family, bert.position_offset, bert.add_pooler, bert.head_dim) == (
        "bert",
        0,
        True,
        32,
    )
    roberta = BertConfig.from_hf(
        {
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
        }
    )
    assert (roberta.family, roberta.position_offset, roberta.add_pooler) == ("roberta", 2, False)
    with pytest.raises(ValueError, match="gpt2"):
        BertConfig.from_hf({"model_type": "gpt2"})

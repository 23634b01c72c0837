"""GPT-2: tree spec, q/k/v as slices of c_attn, KV cache, HF parity, registry."""

from __future__ import annotations

import flax.traverse_util as tu
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FIXTURES

from lora_jax.lora import LoRAConfig
from lora_jax.models import DECODER_MODELS, get_spec, load_decoder, lora_shapes_of
from lora_jax.models.gpt2 import GPT2Config, GPT2LMHeadModel, lora_shapes
from lora_jax.weights.hf_folder import load_hf_folder

PARITY = FIXTURES / "parity"
IDS = jnp.array([[5, 6, 7, 8, 9], [10, 11, 12, 13, 14]], jnp.int32)


def _init(model, ids=IDS):
    return model.init(jax.random.key(0), ids)["params"]


def test_tiny_whole_tree_spec():
    tree = jax.eval_shape(lambda: _init(GPT2LMHeadModel(GPT2Config.tiny(), LoRAConfig(rank=0))))
    shapes = {"/".join(p): v.shape for p, v in tu.flatten_dict(tree).items()}
    expected = {
        "decoder/wte/embedding": (100, 32),
        "decoder/wpe/embedding": (64, 32),
        "decoder/ln_f/scale": (32,),
        "decoder/ln_f/bias": (32,),
    }
    for i in range(2):
        p = f"decoder/layer_{i}"
        for ln in ("ln_1", "ln_2"):
            expected |= {f"{p}/{ln}/scale": (32,), f"{p}/{ln}/bias": (32,)}
        for t in "qkvo":
            expected |= {f"{p}/attention/{t}/kernel": (32, 32), f"{p}/attention/{t}/bias": (32,)}
        expected |= {
            f"{p}/ffn/ffn_in/kernel": (32, 128),
            f"{p}/ffn/ffn_in/bias": (128,),
            f"{p}/ffn/ffn_out/kernel": (128, 32),
            f"{p}/ffn/ffn_out/bias": (32,),
        }
    assert shapes == expected
    assert lora_shapes(GPT2Config.tiny())["ffn_out"] == (128, 32)


def test_lora_on_q_and_v_slices_independently():
    model = GPT2LMHeadModel(GPT2Config.tiny(), LoRAConfig(rank=2, targets="qv"))
    params = _init(model)
    attn = params["decoder"]["layer_0"]["attention"]
    assert set(attn["q"]) == set(attn["v"]) == {"kernel", "bias", "lora_a", "lora_b"}
    assert set(attn["k"]) == {"kernel", "bias"}
    # A non-zero lora_b on v changes the output; the q adapter is a separate matrix.
    bumped = jax.tree_util.tree_map_with_path(
        lambda p, x: x + 0.5 if "v" in str(p) and p[-1].key == "lora_b" else x, params
    )
    assert not np.allclose(
        model.apply({"params": bumped}, IDS), model.apply({"params": params}, IDS)
    )


def test_loader_splits_c_attn_into_q_k_v_kernels():
    pre = load_decoder(PARITY / "tiny_gpt2", LoRAConfig(rank=1, targets="qkv"), tokenizer=False)
    _, reader = load_hf_folder(PARITY / "tiny_gpt2")
    w, b = reader["transformer.h.1.attn.c_attn.weight"], reader["transformer.h.1.attn.c_attn.bias"]
    attn = pre.params["decoder"]["layer_1"]["attention"]
    for j, t in enumerate("qkv"):
        np.testing.assert_array_equal(
            attn[t]["kernel"], w[:, 32 * j : 32 * (j + 1)]
        )  # Conv1D (in, out)
        np.testing.assert_array_equal(attn[t]["bias"], b[32 * j : 32 * (j + 1)])
    np.testing.assert_array_equal(attn["o"]["kernel"], reader["transformer.h.1.attn.c_proj.weight"])


def test_parity_with_transformers_tiny_gpt2():
    ref = np.load(PARITY / "tiny_gpt2.npz")
    pre = load_decoder(PARITY / "tiny_gpt2", LoRAConfig(rank=2, targets="all"), tokenizer=False)
    logits = pre.module.apply({"params": pre.params}, ref["input_ids"], ref["attention_mask"])
    real = ref["attention_mask"].astype(bool)
    assert np.abs(ref["logits"]).max() > 3
    np.testing.assert_allclose(np.asarray(logits)[real], ref["logits"][real], atol=1e-4, rtol=0)


def test_kv_cache_equals_full_forward_and_dropout_only_when_training():
    model = GPT2LMHeadModel(GPT2Config.tiny(), LoRAConfig(rank=2, dropout=0.1))
    params = _init(model)
    full = model.apply({"params": params}, IDS)
    cache = model.init_cache(2, 8)
    a, cache = model.apply({"params": params}, IDS[:, :2], cache=cache)
    b, cache = model.apply({"params": params}, IDS[:, 2:], cache=cache)
    np.testing.assert_allclose(jnp.concatenate([a, b], 1), full, atol=1e-5)
    train = model.apply(
        {"params": params}, IDS, deterministic=False, rngs={"dropout": jax.random.key(1)}
    )
    assert not np.allclose(train, full)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.init_cache(1, 65)


def test_registry_and_tiny_loading():
    assert {"smollm2", "gpt2", "gpt2_medium", "gpt2_large", "tiny_gpt2", "tiny_llama"} <= set(
        DECODER_MODELS
    )
    assert get_spec("gpt2_medium").location == "openai-community/gpt2-medium"
    with pytest.raises(ValueError, match="tiny_gpt2"):
        get_spec("gpt3")
    assert lora_shapes_of("tiny_gpt2")["q"] == (32, 32)
    assert lora_shapes_of("tiny_llama")["k"] == (32, 16)
    pre = load_decoder("tiny_gpt2", LoRAConfig(rank=2))
    ids = jnp.asarray([pre.tokenizer.encode("the movie was good").ids])
    assert pre.module.apply({"params": pre.params}, ids).shape == (1, 4, 100)
    assert pre.head_rules == ()

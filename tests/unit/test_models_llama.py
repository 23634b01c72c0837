"""Llama-family decoder: tree spec, LoRA placement, RoPE/GQA, KV cache, HF parity (SmolLM2's
real weights: tests/e2e/test_smollm2.py)."""

from __future__ import annotations

import flax.traverse_util as tu
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FIXTURES
from tolerance import reordered_atol

from lora_jax.lora import LoRAConfig
from lora_jax.models.llama import LlamaForCausalLM, lora_shapes, rope
from lora_jax.models.llama_config import LlamaConfig
from lora_jax.models.pretrained import load_decoder, model_from_tensors
from lora_jax.weights.gguf import permute_qk, unpermute_qk
from lora_jax.weights.params import CheckpointError

PARITY = FIXTURES / "parity"
IDS = jnp.array([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]], jnp.int32)


def _init(model, ids=IDS):
    return model.init(jax.random.key(0), ids)["params"]


def _shapes(model):
    tree = jax.eval_shape(lambda: _init(model))
    return {"/".join(p): v.shape for p, v in tu.flatten_dict(tree).items()}


def test_tiny_whole_tree_spec_untied_and_tied():
    shapes = _shapes(LlamaForCausalLM(LlamaConfig.tiny(), LoRAConfig(rank=0)))
    expected = {
        "decoder/embed_tokens/embedding": (100, 32),
        "decoder/norm/scale": (32,),
        "lm_head/kernel": (32, 100),
    }
    for i in range(2):
        p = f"decoder/layer_{i}"
        expected |= {
            f"{p}/attention_norm/scale": (32,),
            f"{p}/ffn_norm/scale": (32,),
            f"{p}/attention/q/kernel": (32, 32),
            f"{p}/attention/k/kernel": (32, 16),  # 2 KV heads x 8
            f"{p}/attention/v/kernel": (32, 16),
            f"{p}/attention/o/kernel": (32, 32),
            f"{p}/ffn/ffn_gate/kernel": (32, 64),
            f"{p}/ffn/ffn_in/kernel": (32, 64),
            f"{p}/ffn/ffn_out/kernel": (64, 32),
        }
    assert shapes == expected
    tied = _shapes(LlamaForCausalLM(LlamaConfig.tiny(tie_word_embeddings=True), LoRAConfig()))
    assert "lm_head/kernel" not in tied and len(tied) == len(expected) - 1


def test_lora_at_every_target_and_only_requested_layers():
    shapes = _shapes(LlamaForCausalLM(LlamaConfig.tiny(), LoRAConfig(rank=2, targets="all")))
    lora = {p for p in shapes if p.endswith("lora_a")}
    assert len(lora) == 2 * 7
    spec = lora_shapes(LlamaConfig.tiny())
    for i in range(2):
        for t, (n_in, n_out) in spec.items():
            group = "attention" if t in "qkvo" else "ffn"
            assert shapes[f"decoder/layer_{i}/{group}/{t}/lora_a"] == (n_in, 2)
            assert shapes[f"decoder/layer_{i}/{group}/{t}/lora_b"] == (2, n_out)
    shapes = _shapes(
        LlamaForCausalLM(LlamaConfig.tiny(), LoRAConfig(rank=3, targets="qv", layers=(1,)))
    )
    assert {p for p in shapes if "lora" in p} == {
        f"decoder/layer_1/attention/{t}/{leaf}" for t in "qv" for leaf in ("lora_a", "lora_b")
    }
    with pytest.raises(ValueError, match=r"0\.\.1"):
        _init(LlamaForCausalLM(LlamaConfig.tiny(), LoRAConfig(rank=2, layers=(2,))))


def test_lora_at_init_equals_base_and_grads_reach_lora_b():
    cfg = LlamaConfig.tiny()
    model = LlamaForCausalLM(cfg, LoRAConfig(rank=2, targets="all"))
    base = LlamaForCausalLM(cfg, LoRAConfig(rank=0))
    params = _init(model)
    flat = tu.flatten_dict(params)
    base_params = tu.unflatten_dict({p: v for p, v in flat.items() if "lora" not in p[-1]})
    # lora_b = 0 adds exact zeros; what may differ is the order XLA fuses the rest in.
    base_logits = jax.jit(base.apply)({"params": base_params}, IDS)
    np.testing.assert_allclose(
        jax.jit(model.apply)({"params": params}, IDS),
        base_logits,
        rtol=0,
        atol=reordered_atol(base_logits, ops=cfg.num_layers * cfg.intermediate_size),
    )
    g = jax.jit(jax.grad(lambda p: model.apply({"params": p}, IDS).sum()))(params)
    assert float(jnp.abs(g["decoder"]["layer_0"]["ffn"]["ffn_gate"]["lora_b"]).sum()) > 0


def test_from_hf_reads_smollm2_like_config_and_rejects_others():
    cfg = LlamaConfig.from_hf(
        {
            "model_type": "llama",
            "vocab_size": 49152,
            "hidden_size": 576,
            "num_hidden_layers": 30,
            "num_attention_heads": 9,
            "num_key_value_heads": 3,
            "intermediate_size": 1536,
            "rope_theta": 100000,
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": True,
        }
    )
    assert (cfg.head_dim, cfg.num_kv_heads, cfg.rope_theta, cfg.tie_word_embeddings) == (
        64,
        3,
        1e5,
        True,
    )
    assert lora_shapes(cfg)["k"] == (576, 192)
    with pytest.raises(ValueError, match="llama"):
        LlamaConfig.from_hf({"model_type": "gpt2"})
    with pytest.raises(ValueError, match="num_kv_heads"):
        LlamaConfig.tiny(num_kv_heads=3)


def test_gguf_unpermute_inverts_llama_cpp_and_maps_interleaved_to_rotate_half_rope():
    rng = np.random.default_rng(0)
    heads, d = 2, 8
    w = rng.normal(size=(heads * d, 5)).astype(np.float32)  # HF (out, in)
    np.testing.assert_array_equal(unpermute_qk(permute_qk(w, heads), heads), w)
    # Semantics: llama.cpp applies interleaved RoPE (pairs 2i, 2i+1) to the permuted rows; HF
    # applies rotate-half RoPE (pairs i, i + d/2) to the original rows. Same result per head,
    # up to the same row permutation, so dot products q.k are equal.
    x = rng.normal(size=(1, 3, 5)).astype(np.float32)
    pos = jnp.arange(3)[None]
    hf = rope(jnp.asarray(x @ w.T).reshape(1, 3, heads, d), pos, 10000.0)
    y = (x @ permute_qk(w, heads).T).reshape(1, 3, heads, d // 2, 2)
    ang = pos[..., None, None].astype(jnp.float32) * (1.0 / 10000.0 ** (jnp.arange(0, d, 2) / d))
    c, s = jnp.cos(ang), jnp.sin(ang)
    inter = jnp.stack([y[..., 0] * c - y[..., 1] * s, y[..., 0] * s + y[..., 1] * c], -1)
    inter = inter.reshape(1, 3, heads, d)
    np.testing.assert_allclose(
        unpermute_qk(np.asarray(inter).reshape(3, heads * d).T, heads).T.reshape(1, 3, heads, d),
        hf,
        atol=1e-5,
    )


def test_kv_cache_chunks_equal_full_forward_and_left_padding_is_transparent():
    model = LlamaForCausalLM(LlamaConfig.tiny(), LoRAConfig(rank=2))
    params = _init(model)
    apply = jax.jit(model.apply)
    full = apply({"params": params}, IDS)
    cache = model.init_cache(2, 10)
    parts = []
    for lo, hi in ((0, 3), (3, 4), (4, 6)):
        logits, cache = apply({"params": params}, IDS[:, lo:hi], cache=cache)
        parts.append(logits)
    np.testing.assert_allclose(jnp.concatenate(parts, 1), full, atol=1e-5)
    assert int(cache.index) == 6 and cache.length.tolist() == [6, 6]
    padded = jnp.concatenate([jnp.zeros((2, 3), jnp.int32), IDS], 1)
    mask = (padded != 0).astype(jnp.int32)
    np.testing.assert_allclose(apply({"params": params}, padded, mask)[:, 3:], full, atol=1e-5)


def test_parity_with_transformers_tiny_llama():
    ref = np.load(PARITY / "tiny_llama.npz")
    pre = load_decoder(PARITY / "tiny_llama", LoRAConfig(rank=2, targets="all"), tokenizer=False)
    assert pre.config.num_kv_heads == 2 and not pre.config.tie_word_embeddings
    logits = pre.module.apply({"params": pre.params}, ref["input_ids"], ref["attention_mask"])
    real = ref["attention_mask"].astype(bool)
    assert np.abs(ref["logits"]).max() > 3  # the fixture is not trivially small
    np.testing.assert_allclose(np.asarray(logits)[real], ref["logits"][real], atol=1e-4, rtol=0)


def test_checkpoint_shape_mismatch_names_the_tensor():
    from lora_jax.weights.hf_folder import load_hf_folder

    hf, reader = load_hf_folder(PARITY / "tiny_llama")
    with pytest.raises(
        CheckpointError,
        match=r"model\.layers\.0\.self_attn\.k_proj\.weight.*\(16, 32\).*\(32, 32\)",
    ):
        model_from_tensors({**hf, "num_key_value_heads": 4}, reader, LoRAConfig())

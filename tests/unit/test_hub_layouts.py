"""Llama-family checkpoints in the hub layout (sharded bfloat16 safetensors + index.json):
Llama 2, Llama 3 (rope_scaling llama3), Mistral, Qwen2 (q/k/v biases, tied embeddings),
against transformers' logits (fixtures: scripts/make_hub_layout_fixtures.py)."""

from __future__ import annotations

import json
import shutil
import weakref

import flax.traverse_util as tu
import jax
import numpy as np
import pytest
from conftest import FIXTURES

from lora_jax.lora import LoRAConfig
from lora_jax.models.llama_config import LlamaConfig
from lora_jax.models.pretrained import load_decoder, model_from_tensors
from lora_jax.partition import label_params, split
from lora_jax.weights.hf_folder import load_hf_folder
from lora_jax.weights.safetensors import SafetensorsReader

HUB = FIXTURES / "hub_layouts"
LAYOUTS = ("llama2", "llama3", "mistral", "qwen2")
LORA = LoRAConfig(rank=2, targets="q+k+v+o")


def _logits(pre, ids):
    return np.asarray(pre.module.apply({"params": pre.params}, ids))


@pytest.mark.parametrize("name", LAYOUTS)
def test_hub_folder_matches_transformers_logits(name):
    folder, ref = HUB / name, np.load(HUB / f"{name}.npz")
    assert len(list(folder.glob("model-0000*-of-0000*.safetensors"))) >= 2  # sharded
    pre = load_decoder(folder, LORA, tokenizer=False)
    assert np.abs(ref["logits"]).max() > 1  # the fixture is not trivially small
    # LoRA at init (lora_b = 0) is the base model; bfloat16 weights computed in float32.
    np.testing.assert_allclose(_logits(pre, ref["input_ids"]), ref["logits"], atol=1e-5, rtol=0)


def test_configs_read_as_each_family_defines_them():
    configs = {n: load_decoder(HUB / n, LORA, tokenizer=False).config for n in LAYOUTS}
    assert configs["llama2"].rope_llama3 is None and configs["llama2"].rope_theta == 1e4
    assert configs["llama3"].rope_theta == 5e5
    assert configs["llama3"].rope_llama3 == (4.0, 1.0, 4.0, 16.0)
    assert configs["mistral"].num_kv_heads == 2 and not configs["mistral"].attention_bias
    qwen = configs["qwen2"]
    assert (qwen.attention_bias, qwen.o_bias, qwen.tie_word_embeddings) == (True, False, True)
    assert not configs["llama2"].tie_word_embeddings


def test_llama3_scaling_changes_the_logits():
    """Without its rope_scaling the Llama 3 fixture gives other logits: the parity test above
    checks the scaling, not only plain RoPE."""
    hf, reader = load_hf_folder(HUB / "llama3")
    plain = {**hf, "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}
    module, params, _ = model_from_tensors(plain, reader, LORA)
    ref = np.load(HUB / "llama3.npz")
    wrong = np.asarray(module.apply({"params": params}, ref["input_ids"]))
    assert np.abs(wrong - ref["logits"]).max() > 1e-2


def test_transformers_4_rope_keys_read_as_transformers_5_ones():
    hf = json.loads((HUB / "llama3" / "config.json").read_text())
    v4 = {k: v for k, v in hf.items() if k != "rope_parameters"}
    v4["rope_theta"] = 5e5
    v4["rope_scaling"] = {k: v for k, v in hf["rope_parameters"].items() if k != "rope_theta"}
    assert LlamaConfig.from_hf(v4) == LlamaConfig.from_hf(hf)


@pytest.mark.parametrize("name", LAYOUTS)
def test_lora_targets_resolve_and_base_is_frozen(name):
    pre = load_decoder(HUB / name, LORA, tokenizer=False)
    flat = {"/".join(p): v for p, v in tu.flatten_dict(pre.params).items()}
    parts = split(pre.params, label_params(pre.params))
    trainable = {"/".join(p) for p in tu.flatten_dict(parts.trainable)}
    frozen = {"/".join(p) for p in tu.flatten_dict(parts.frozen)}
    for i in range(2):
        for t in "qkvo":
            scope = f"decoder/layer_{i}/attention/{t}"
            assert {f"{scope}/lora_a", f"{scope}/lora_b"} <= trainable
            assert f"{scope}/kernel" in frozen
    assert all(p.rsplit("/", 1)[1] in ("lora_a", "lora_b") for p in trainable)
    biases = sorted(p for p in flat if p.endswith("/bias"))
    if name != "qwen2":
        assert biases == []
        return
    # Qwen2: q/k/v biases loaded from the checkpoint and frozen; o has none.
    reader = SafetensorsReader(HUB / name)
    assert biases == [f"decoder/layer_{i}/attention/{t}/bias" for i in range(2) for t in "kqv"]
    assert set(biases) <= frozen
    for i in range(2):
        for t in "qkv":
            want = reader[f"model.layers.{i}.self_attn.{t}_proj.bias"].astype(np.float32)
            np.testing.assert_array_equal(flat[f"decoder/layer_{i}/attention/{t}/bias"], want)
    assert "lm_head" not in pre.params  # tied


def _folder_with(tmp_path, name, **changes):
    folder = tmp_path / name
    shutil.copytree(HUB / name, folder)
    hf = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**hf, **changes}))
    return folder


@pytest.mark.parametrize(
    "name, changes, message",
    [
        (
            "llama3",
            {"rope_parameters": {"rope_type": "yarn", "rope_theta": 5e5, "factor": 4.0}},
            r"rope_type='yarn' is not supported; allowed: default \(plain RoPE\), llama3",
        ),
        (
            "llama3",
            {"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}},
            "lacks low_freq_factor, high_freq_factor, original_max_position_embeddings",
        ),
        (
            "mistral",
            {"sliding_window": 16},
            r"sliding_window=16 < max_position_embeddings=64 \(mistral\); allowed: null or "
            r">= max_position_embeddings.*\"sliding_window\": null",
        ),
        (
            "qwen2",
            {"use_sliding_window": True, "sliding_window": 32},
            r"sliding_window=32 < max_position_embeddings=64 \(qwen2\)",
        ),
        ("llama2", {"mlp_bias": True}, "mlp_bias=true is not supported"),
        ("llama2", {"hidden_act": "gelu"}, "hidden_act='gelu' is not supported; allowed: silu"),
    ],
)
def test_unsupported_config_fields_raise_naming_the_value(tmp_path, name, changes, message):
    with pytest.raises(ValueError, match=message):
        load_decoder(_folder_with(tmp_path, name, **changes), LORA, tokenizer=False)


def test_windows_that_never_mask_load(tmp_path):
    """A window as long as the model's positions masks nothing: full attention, as ours."""
    folder = _folder_with(tmp_path, "mistral", sliding_window=64)
    pre = load_decoder(folder, LORA, tokenizer=False)
    ref = np.load(HUB / "mistral.npz")
    np.testing.assert_allclose(_logits(pre, ref["input_ids"]), ref["logits"], atol=1e-5, rtol=0)
    # Qwen2 configs carry a sliding_window that only use_sliding_window turns on.
    folder = _folder_with(tmp_path, "qwen2", sliding_window=4, use_sliding_window=False)
    load_decoder(folder, LORA, tokenizer=False)


class _Tracked(SafetensorsReader):
    """Records every host array it hands out, to see how many are alive at each read."""

    def __init__(self, folder):
        super().__init__(folder)
        self.handed: list[weakref.ref] = []
        self.alive_at_read: list[int] = []

    def __getitem__(self, name):
        self.alive_at_read.append(sum(r() is not None for r in self.handed))
        array = super().__getitem__(name)
        self.handed.append(weakref.ref(array))
        return array


def test_loader_holds_one_tensor_on_host_at_a_time():
    """Each tensor goes to the device as it is read and its host copy is dropped before the
    next read: the host never holds the model, only its largest tensor."""
    hf, _ = load_hf_folder(HUB / "llama2")
    reader = _Tracked(HUB / "llama2")
    _, params, _ = model_from_tensors(hf, reader, LORA)
    assert len(reader.alive_at_read) == len(reader) == 2 + 2 * 9 + 1  # embed, norm, layers, head
    assert max(reader.alive_at_read) == 0
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(params))

"""PEFT adapters out and in, without torch: our export read back, adapters PEFT itself saved
(tests/fixtures/peft_*, from scripts/make_peft_fixtures.py, with the dW of PEFT's own
`get_delta_weight`), and every refusal. `tests/unit/test_interop.py` loads them in PEFT itself."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FIXTURES
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from lora_jax.adapter_io import export_adapter, init_adapters
from lora_jax.lora import LoRAConfig, layer_index, lora_scale
from lora_jax.models import Pretrained, load_decoder
from lora_jax.models.bert import HEAD_RULES, BertForSequenceClassification
from lora_jax.models.bert_config import BertConfig
from lora_jax.partition import label_params, split
from lora_jax.peft_adapter import ADAPTER_FILE, CONFIG_FILE, HEAD_FILE, OURS_FILE, read_adapter

PEFT_SAVED = ["peft_bert", "peft_roberta", "peft_llama", "peft_gpt2"]


def _nonzero_b(params: dict) -> dict:
    """B starts at zero; give it values, as after training."""
    key = iter(jax.random.split(jax.random.key(7), 1000))
    return jax.tree_util.tree_map_with_path(
        lambda p, x: jax.random.normal(next(key), x.shape) if p[-1].key == "lora_b" else x, params
    )


def _encoder(lora: LoRAConfig, family: str = "bert", pooling: str = "cls", source="tiny_bert"):
    """A tiny encoder as `load_pretrained` returns it, and its trainable part (LoRA + head)."""
    config = BertConfig.tiny(family)
    module = BertForSequenceClassification(config, lora, num_labels=3, pooling=pooling)
    ids = jnp.ones((1, 4), jnp.int32)
    params = _nonzero_b(module.init(jax.random.key(0), ids, jnp.ones_like(ids))["params"])
    pre = Pretrained(module, params, None, config, HEAD_RULES, pooling, str(source))
    return pre, split(params, label_params(params, trainable=HEAD_RULES)).trainable


def _factors(params: dict) -> dict:
    flat = traverse_util.flatten_dict(params)
    return {
        (layer_index(p), p[-2]): (np.asarray(v), np.asarray(flat[(*p[:-1], "lora_b")]))
        for p, v in flat.items()
        if p[-1] == "lora_a"
    }


def _assert_round_trip(folder: Path, params: dict, lora: LoRAConfig) -> None:
    adapter = read_adapter(folder)
    want = _factors(params)
    assert list(adapter.factors) == sorted(want)
    for key, (a, b) in adapter.factors.items():
        np.testing.assert_array_equal(a, want[key][0])
        np.testing.assert_array_equal(b, want[key][1])
        assert adapter.scales[key] == lora_scale(a.shape[1], lora.alpha, lora.scaling)


# ---- out, and back in ------------------------------------------------------------------------


def test_bert_with_pooler_exports_seq_cls_with_the_classifier(tmp_path: Path) -> None:
    lora = LoRAConfig(rank=2, targets="qv")
    pre, trainable = _encoder(lora)
    export_adapter(tmp_path, trainable, lora, pre)
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert "lora_jax" not in config  # PEFT warns on unknown keys: ours live in lora_jax.json
    assert config["task_type"] == "SEQ_CLS" and config["modules_to_save"] == ["classifier"]
    assert config["base_model_name_or_path"] == "tiny_bert"  # a random model: its registry name
    tensors = load_file(tmp_path / ADAPTER_FILE)
    head = trainable["head"]["out"]
    # BertForSequenceClassification's classifier: Linear (num_labels, hidden), as PEFT saves it.
    np.testing.assert_array_equal(tensors["base_model.model.classifier.weight"], head["kernel"].T)
    np.testing.assert_array_equal(tensors["base_model.model.classifier.bias"], head["bias"])
    key = "base_model.model.bert.encoder.layer.1.attention.self.value.lora_A.weight"
    assert tensors[key].shape == (2, 32)
    assert sorted(load_file(tmp_path / HEAD_FILE)) == ["head/out/bias", "head/out/kernel"]
    _assert_round_trip(tmp_path, pre.params, lora)
    adapter = read_adapter(tmp_path)
    assert (adapter.family, adapter.base, adapter.model) == ("bert", "tiny_bert", "tiny_bert")
    assert adapter.folder == tmp_path and adapter.config["lora_jax"]["pooling"] == "cls"


def test_mean_pooling_exports_feature_extraction_on_a_bare_model(tmp_path: Path) -> None:
    lora = LoRAConfig(
        rank=2, targets="qkvo,ffn_in,ffn_out", layers=(1,), alpha=4, scaling="alpha_over_sqrt_r"
    )
    pre, trainable = _encoder(lora, pooling="mean", source=tmp_path / "my_model")
    export_adapter(tmp_path / "run" / "adapter", trainable, lora, pre)
    folder = tmp_path / "run" / "adapter"
    config = json.loads((folder / CONFIG_FILE).read_text())
    assert config["task_type"] == "FEATURE_EXTRACTION" and config["modules_to_save"] is None
    assert config["base_model_name_or_path"] == str(tmp_path / "my_model")
    assert config["use_rslora"] and config["layers_to_transform"] == [1]
    keys = load_file(folder / ADAPTER_FILE)
    assert "base_model.model.encoder.layer.1.intermediate.dense.lora_B.weight" in keys
    assert not any("classifier" in k or ".layer.0." in k for k in keys)
    _assert_round_trip(tmp_path / "run", pre.params, lora)  # the run folder works too


def test_roberta_exports_its_classification_head(tmp_path: Path) -> None:
    lora = LoRAConfig(rank=2, targets="qkvo")
    pre, trainable = _encoder(lora, family="roberta", source=tmp_path)
    export_adapter(tmp_path, trainable, lora, pre)
    tensors = load_file(tmp_path / ADAPTER_FILE)
    head = trainable["head"]
    # RobertaClassificationHead: dense -> tanh -> out_proj.
    for ours, theirs in (("dense", "dense"), ("out", "out_proj")):
        got = tensors[f"base_model.model.classifier.{theirs}.weight"]
        np.testing.assert_array_equal(got, head[ours]["kernel"].T)
    assert (
        "base_model.model.roberta.encoder.layer.0.attention.output.dense.lora_A.weight" in tensors
    )
    _assert_round_trip(tmp_path, pre.params, lora)
    assert read_adapter(tmp_path).family == "roberta"


@pytest.mark.parametrize(
    ("model", "targets", "key", "loadable"),
    [
        ("tiny_llama", "all", "model.layers.1.mlp.gate_proj", True),
        ("tiny_gpt2", "o,ffn_in,ffn_out", "transformer.h.0.mlp.c_fc", True),
        ("tiny_gpt2", "qkv", "transformer.h.0.attn.c_attn_k", False),
    ],
)
def test_decoders_round_trip(tmp_path: Path, model, targets, key, loadable) -> None:
    lora = LoRAConfig(rank=2, targets=targets, rank_pattern={"o": 1} if "o" in targets else {})
    pre = load_decoder(model, lora, tokenizer=False)
    params = _nonzero_b(pre.params)
    export_adapter(tmp_path, params, lora, pre)
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert config["task_type"] == "CAUSAL_LM" and config["fan_in_fan_out"] == (model == "tiny_gpt2")
    assert f"base_model.model.{key}.lora_A.weight" in load_file(tmp_path / ADAPTER_FILE)
    assert json.loads((tmp_path / OURS_FILE).read_text())["peft_loadable"] is loadable
    _assert_round_trip(tmp_path, params, lora)


@pytest.mark.parametrize("scaling", ["alpha_over_r", "alpha_over_sqrt_r", "none"])
def test_peft_computes_our_scales_from_adapter_config(tmp_path: Path, scaling) -> None:
    """Without lora_jax.json, PEFT's rule (r, lora_alpha, rank_pattern, alpha_pattern,
    use_rslora) must give the scale we trained with, for every scaling."""
    lora = LoRAConfig(rank=2, alpha=6, targets="qv", rank_pattern={"v": 4}, scaling=scaling)
    pre, trainable = _encoder(lora)
    export_adapter(tmp_path, trainable, lora, pre)
    ours = read_adapter(tmp_path).scales
    (tmp_path / OURS_FILE).unlink()
    theirs = read_adapter(tmp_path)
    assert theirs.model is None and theirs.scales == pytest.approx(ours, rel=1e-12)
    assert ours[(0, "v")] == lora_scale(4, 6, scaling) and ours[(0, "q")] == lora_scale(
        2, 6, scaling
    )


def test_adapters_exported_with_the_block_in_adapter_config_still_read(tmp_path: Path) -> None:
    lora = LoRAConfig(rank=2, alpha=3, targets="q", scaling="none")
    pre, trainable = _encoder(lora)
    export_adapter(tmp_path, trainable, lora, pre)
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    config["lora_jax"] = json.loads((tmp_path / OURS_FILE).read_text())
    (tmp_path / CONFIG_FILE).write_text(json.dumps(config))
    (tmp_path / OURS_FILE).unlink()
    assert read_adapter(tmp_path).model == "tiny_bert"
    _assert_round_trip(tmp_path, pre.params, lora)


# ---- adapters that PEFT saved ------------------------------------------------------------------


@pytest.mark.parametrize("case", PEFT_SAVED)
def test_peft_saved_adapter_gives_peft_delta_weights(case: str) -> None:
    adapter = read_adapter(FIXTURES / case)
    expected = load_file(FIXTURES / case / "expected_dw.safetensors")
    got = {f"{layer}.{t}": s for (layer, t), s in adapter.scales.items()}
    assert sorted(got) == sorted(expected)
    for (layer, target), (a, b) in adapter.factors.items():
        assert a.dtype == b.dtype == np.float32
        dw = adapter.scales[(layer, target)] * a @ b
        np.testing.assert_allclose(dw, expected[f"{layer}.{target}"], rtol=1e-6, atol=1e-6)
    assert adapter.family == case.removeprefix("peft_") and adapter.model is None
    assert adapter.base == f"tiny-random-{adapter.family}"


def test_peft_patterns_and_rslora_as_peft_applies_them() -> None:
    bert = read_adapter(FIXTURES / "peft_bert").scales
    # r=2, alpha 8; rank_pattern {"layer.1.attention.self.query": 1}; alpha_pattern {"value": 4}
    assert bert == {(0, "q"): 4.0, (0, "v"): 2.0, (1, "q"): 8.0, (1, "v"): 2.0}
    roberta = read_adapter(FIXTURES / "peft_roberta")  # rsLoRA, layers_to_transform=[1]
    assert set(roberta.scales.values()) == {6 / np.sqrt(3)}
    assert {layer for layer, _ in roberta.factors} == {1}
    assert {t for _, t in roberta.factors} == {"q", "k", "v", "o", "ffn_in", "ffn_out"}
    gpt2 = read_adapter(FIXTURES / "peft_gpt2")  # a fused c_attn: q, k, v share one A
    assert gpt2.factors[(0, "q")][0] is gpt2.factors[(0, "v")][0]


def test_init_from_a_peft_adapter_starts_at_its_delta(tmp_path: Path) -> None:
    """PEFT's RoBERTa (rsLoRA, alpha 6, r=3) initialises our run (alpha 8 over r): B is
    rescaled, so our dW equals PEFT's."""
    lora = LoRAConfig(rank=3, alpha=8, targets="qkvo,ffn_in,ffn_out", layers=(1,))
    config = BertConfig.tiny("roberta", hidden_size=16, intermediate_size=32)
    module = BertForSequenceClassification(config, lora, num_labels=2)
    ids = jnp.ones((1, 4), jnp.int32)
    params = module.init(jax.random.key(0), ids, jnp.ones_like(ids))["params"]
    trainable = split(params, label_params(params, trainable=HEAD_RULES)).trainable
    loaded = _factors(init_adapters(trainable, FIXTURES / "peft_roberta", lora))
    expected = load_file(FIXTURES / "peft_roberta" / "expected_dw.safetensors")
    assert len(loaded) == len(expected) == 6
    for (layer, target), (a, b) in loaded.items():
        dw = lora_scale(3, 8, "alpha_over_r") * a @ b
        np.testing.assert_allclose(dw, expected[f"{layer}.{target}"], rtol=1e-5, atol=1e-6)
    # Without the run's config the factors are copied as they are.
    raw = _factors(init_adapters(trainable, FIXTURES / "peft_roberta"))
    np.testing.assert_array_equal(
        raw[(1, "q")][1], read_adapter(FIXTURES / "peft_roberta").factors[(1, "q")][1]
    )


# ---- refusals -----------------------------------------------------------------------------------


def _copy(case: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / case, tmp_path / case))


def _edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / CONFIG_FILE).read_text())
    (folder / CONFIG_FILE).write_text(json.dumps({**config, **changes}))


def _edit_tensors(folder: Path, edit) -> None:
    tensors = load_file(folder / ADAPTER_FILE)
    save_file(edit(tensors), folder / ADAPTER_FILE)


def test_missing_folder_and_files_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(
        FileNotFoundError, match=r"adapter='.*nowhere' does not exist; allowed: a PEFT"
    ):
        read_adapter(tmp_path / "nowhere")
    with pytest.raises(
        FileNotFoundError, match=r"holds no adapter_model.safetensors.*save_pretrained"
    ):
        read_adapter(tmp_path)
    folder = _copy("peft_bert", tmp_path)
    (folder / CONFIG_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"no adapter_config.json; allowed: both"):
        read_adapter(folder)


def test_other_peft_methods_and_dora_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"peft_type='LOHA'; allowed: LORA\. Only LoRA adapters"):
        read_adapter(FIXTURES / "peft_loha")
    with pytest.raises(ValueError, match=r"use_dora=True; allowed: use_dora=False\. DoRA"):
        read_adapter(FIXTURES / "peft_dora")
    folder = _copy("peft_llama", tmp_path)
    _edit_config(folder, peft_type="IA3")
    with pytest.raises(ValueError, match=r"peft_type='IA3'"):
        read_adapter(folder)
    _edit_config(folder, peft_type="LORA", lora_bias=True)
    with pytest.raises(ValueError, match=r"lora_bias=True; allowed: lora_bias=False"):
        read_adapter(folder)


def test_unknown_modules_and_lonely_factors_are_refused(tmp_path: Path) -> None:
    folder = _copy("peft_bert", tmp_path)
    pooler = "base_model.model.bert.pooler.dense.lora_A.weight"
    _edit_tensors(folder, lambda t: {**t, pooler: np.zeros((2, 16), np.float32)})
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"tensor {pooler!r} is on a module lora_jax does not know; allowed: LoRA on bert/roberta"
        ),
    ):
        read_adapter(folder)
    folder = _copy("peft_gpt2", tmp_path / "b")
    lonely = "base_model.model.transformer.h.1.mlp.c_fc.lora_B.weight"
    _edit_tensors(folder, lambda t: {k: v for k, v in t.items() if k != lonely})
    with pytest.raises(
        ValueError, match=r"h\.1\.mlp\.c_fc\.lora_A\.weight has no lora_B\.weight; allowed: both"
    ):
        read_adapter(folder)


def test_config_that_disagrees_with_the_tensors_is_refused(tmp_path: Path) -> None:
    folder = _copy("peft_llama", tmp_path)
    _edit_config(folder, rank_pattern={})
    with pytest.raises(
        ValueError, match=r"mlp.gate_proj has rank 4, but adapter_config.json gives it r=2"
    ):
        read_adapter(folder)
    folder = _copy("peft_roberta", tmp_path / "b")
    _edit_config(folder, layers_to_transform=[0])
    with pytest.raises(ValueError, match=r"is in layer 1, but layers_to_transform=\[0\]"):
        read_adapter(folder)


def test_adapter_io_imports_only_the_reader_lora_and_hf_names_of_ours() -> None:
    """The analysis imports adapter_io: at module level it must not pull in the models."""
    import ast

    import lora_jax.adapter_io as module

    tree = ast.parse(Path(module.__file__).read_text())
    ours = {
        node.module
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lora_jax")
    } | {
        alias.name
        for node in tree.body
        if isinstance(node, ast.Import)
        for alias in node.names
        if alias.name.startswith("lora_jax")
    }
    assert ours == {"lora_jax.lora", "lora_jax.peft_adapter", "lora_jax.weights.hf_names"}

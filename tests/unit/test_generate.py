"""Greedy and beam search: cache vs recompute, beam=1 vs greedy, no-repeat-ngram, beam scores."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lora_jax.lora import LoRAConfig
from lora_jax.models.generate import ban_repeated_ngrams, beam_search, greedy_search
from lora_jax.models.gpt2 import GPT2Config, GPT2LMHeadModel
from lora_jax.models.llama import LlamaForCausalLM
from lora_jax.models.llama_config import LlamaConfig

EOS = 3
# Left-padded prompts (pad = 0).
PROMPTS = jnp.array([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]], jnp.int32)
MASK = (PROMPTS != 0).astype(jnp.int32)


def _model(kind):
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig.tiny(), LoRAConfig(rank=0))
    else:
        model = GPT2LMHeadModel(GPT2Config.tiny(), LoRAConfig(rank=0))
    params = model.init(jax.random.key(1), jnp.ones((1, 2), jnp.int32))["params"]
    # Larger weights: peaked, input-dependent distributions (and some EOS) in a random model.
    return model, jax.tree.map(lambda x: 3 * x, params)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request):
    return _model(request.param)


def test_greedy_with_cache_equals_recomputing_the_prefix(model):
    module, params = model
    kw = dict(max_new_tokens=10, eos_token_id=EOS)
    cached = greedy_search(module, params, PROMPTS, MASK, **kw)
    full = greedy_search(module, params, PROMPTS, MASK, use_cache=False, **kw)
    np.testing.assert_array_equal(cached.sequences, full.sequences)
    np.testing.assert_allclose(cached.scores, full.scores, atol=1e-4)
    # The left-padded row decodes as it would alone, unpadded.
    alone = greedy_search(module, params, PROMPTS[:1, 2:], None, **kw)
    np.testing.assert_array_equal(alone.sequences[0], cached.sequences[0])


def test_beam_one_equals_greedy(model):
    module, params = model
    greedy = greedy_search(module, params, PROMPTS, MASK, max_new_tokens=10, eos_token_id=EOS)
    beam = beam_search(
        module, params, PROMPTS, MASK, max_new_tokens=10, num_beams=1, eos_token_id=EOS
    )
    np.testing.assert_array_equal(beam.sequences, greedy.sequences)
    np.testing.assert_array_equal(beam.lengths, greedy.lengths)
    np.testing.assert_allclose(beam.scores, greedy.scores / greedy.lengths, atol=1e-4)


def test_ban_repeated_ngrams_on_a_constructed_case():
    tokens = jnp.array([[1, 2, 3, 1, 2, 0, 0], [0, 0, 1, 2, 3, 1, 2]])
    valid = jnp.array([[1, 1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 1]])
    logp = jnp.zeros((2, 6))
    # Row 0 generates slot 5 after "1 2"; "1 2 3" occurred, so 3 is banned (and only 3).
    out = ban_repeated_ngrams(logp, tokens, valid, 5, 3)
    assert np.flatnonzero(np.asarray(out[0]) < -1e8).tolist() == [3]
    # Row 1 at slot 5 sees "2 3" as its suffix... window "2 3 1" occurred? No: the suffix is
    # tokens[3:5] = "2 3", and "2 3 1" appears only from slot 3, which ends at slot 5: not past.
    assert np.asarray(out[1]).min() == 0
    # n = 2 with padding: row 1 at slot 7 has suffix "2"; "2 3" occurred, so 3 is banned.
    out = ban_repeated_ngrams(logp, tokens, valid, 7, 2)
    assert np.flatnonzero(np.asarray(out[1]) < -1e8).tolist() == [3]
    assert ban_repeated_ngrams(logp, tokens, valid, 5, 0) is logp


def _ngrams(seq, n):
    return [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]


def test_no_repeat_ngram_blocks_repeats_in_decoding():
    module, params = _model("llama")
    kw = dict(max_new_tokens=16)  # no EOS: long outputs
    plain = greedy_search(module, params, PROMPTS, MASK, **kw)
    full = [list(np.asarray(PROMPTS[1])) + list(np.asarray(plain.sequences[1]))]
    assert len(set(_ngrams(full[0], 2))) < len(_ngrams(full[0], 2))  # it does repeat
    for out in (
        greedy_search(module, params, PROMPTS, MASK, no_repeat_ngram_size=2, **kw),
        beam_search(module, params, PROMPTS, MASK, num_beams=3, no_repeat_ngram_size=2, **kw),
    ):
        for row in range(2):
            seq = [
                t for t, m in zip(np.asarray(PROMPTS[row]), np.asarray(MASK[row]), strict=True) if m
            ]
            seq += list(np.asarray(out.sequences[row]))
            assert len(set(_ngrams(seq, 2))) == len(_ngrams(seq, 2)), seq


def test_beam_score_is_the_normalised_log_prob_of_its_sequence():
    module, params = _model("gpt2")
    lp = 0.9
    out = beam_search(
        module,
        params,
        PROMPTS,
        MASK,
        max_new_tokens=8,
        num_beams=4,
        length_penalty=lp,
        eos_token_id=EOS,
    )
    greedy = greedy_search(module, params, PROMPTS, MASK, max_new_tokens=8, eos_token_id=EOS)
    for row in range(2):
        n = int(out.lengths[row])
        seq = jnp.concatenate([PROMPTS[row : row + 1], out.sequences[row : row + 1, :n]], 1)
        m = jnp.concatenate([MASK[row : row + 1], jnp.ones((1, n), jnp.int32)], 1)
        logp = jax.nn.log_softmax(module.apply({"params": params}, seq, m))[0]
        p = PROMPTS.shape[1]
        total = sum(float(logp[p - 1 + i, seq[0, p + i]]) for i in range(n))
        np.testing.assert_allclose(out.scores[row], total / n**lp, rtol=1e-4)
        # Beam search finds at least as good a hypothesis as greedy here.
        g = float(greedy.scores[row]) / float(greedy.lengths[row]) ** lp
        assert float(out.scores[row]) >= g - 1e-5

"""Jitted decoding for our causal LMs: greedy and beam search over a KV cache.

Works with any module that takes `(input_ids, attention_mask, cache=KVCache)` and returns
`(logits, cache)`, and has `init_cache(batch, max_length)` (`LlamaForCausalLM`,
`GPT2LMHeadModel`). Prompts are LEFT-padded (B, P) with a mask; the model's position ids count
only real tokens, so padding does not shift them. The cache holds P + max_new_tokens slots.

Beam search follows Hugging Face's `num_beams` search (early_stopping=False): each step takes
the 2K best continuations of the K alive beams; an EOS continuation ranked among the top K
becomes a finished hypothesis scored `sum_logprobs / generated_len ** length_penalty`
(generated_len counts the generated tokens, EOS included); the K best non-EOS ones stay alive; a
row is done when it has K finished hypotheses and the best alive one, normalised at the current
length, cannot beat the worst finished. At the end, rows not done add their alive beams.
`no_repeat_ngram_size=n` forbids any n-gram that already occurs in prompt + generated tokens,
as HF's `NoRepeatNGramLogitsProcessor`. The paper decodes E2E with
`beam_search(..., num_beams=10, length_penalty=0.9, no_repeat_ngram_size=4)`.

Example:
    >>> out = greedy_search(model, params, ids, mask, max_new_tokens=20, eos_token_id=2)  # doctest: +SKIP
    >>> out.sequences.shape  # (B, 20): generated ids, pad after EOS  # doctest: +SKIP
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

NEG = -1e9  # banned tokens, dead beams
EMPTY = -1e30  # an empty slot among the finished hypotheses


class GenerateOutput(NamedTuple):
    """sequences: (B, max_new_tokens) int32 generated ids (pad after EOS); scores: (B,) the sum of
    log-probs (greedy) or the length-normalised beam score; lengths: (B,) generated tokens,
    EOS included."""

    sequences: jax.Array
    scores: jax.Array
    lengths: jax.Array


def ban_repeated_ngrams(
    logprobs: jax.Array, tokens: jax.Array, valid: jax.Array, cur: jax.Array | int, n: int
) -> jax.Array:
    """Set to `NEG` every token that would complete an n-gram already in `tokens[:, :cur]`.

    Args:
        logprobs: (N, V) scores of the token at slot `cur`.
        tokens: (N, T) ids; slots >= cur are ignored.
        valid: (N, T) 1 where a slot holds a real token (windows over padding never match).
        cur: the slot being generated (traced is fine).
        n: the n-gram size; 0 disables.
    """
    if n <= 0:
        return logprobs
    num, t = tokens.shape
    if t < n:
        return logprobs
    starts = jnp.arange(t - n + 1)
    idx = starts[:, None] + jnp.arange(n)[None]  # (S, n)
    win = tokens[:, idx]  # (N, S, n)
    win_ok = valid[:, idx].all(-1) & (starts + n - 1 < cur)[None]
    begin = jnp.maximum(cur - (n - 1), 0)
    suffix = jax.lax.dynamic_slice_in_dim(tokens, begin, n - 1, axis=1)  # (N, n-1)
    suffix_ok = jax.lax.dynamic_slice_in_dim(valid, begin, n - 1, axis=1).all(-1) & (cur >= n - 1)
    match = (win[:, :, : n - 1] == suffix[:, None]).all(-1) & win_ok & suffix_ok[:, None]
    rows = jnp.broadcast_to(jnp.arange(num)[:, None], match.shape)
    banned = jnp.zeros(logprobs.shape, bool).at[rows, win[:, :, n - 1]].max(match)
    return jnp.where(banned, NEG, logprobs)


def _prompt(input_ids, attention_mask):
    ids = jnp.asarray(input_ids, jnp.int32)
    mask = jnp.ones_like(ids) if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
    return ids, mask


# Compiled decoders, keyed by the module's value and the static options: runs with equal
# models (e.g. a sweep's ranks decoding with their adapters merged) share one program.
_COMPILED: dict[tuple, Any] = {}


def _compiled(kind: str, fn, module, **static):
    key = (kind, module, tuple(sorted(static.items())))
    if key not in _COMPILED:
        _COMPILED[key] = jax.jit(functools.partial(fn, module, **static))
    return _COMPILED[key]


def greedy_search(
    module: Any,
    params: Any,
    input_ids: jax.Array,
    attention_mask: jax.Array | None = None,
    *,
    max_new_tokens: int,
    eos_token_id: int | None = None,
    pad_token_id: int = 0,
    no_repeat_ngram_size: int = 0,
    use_cache: bool = True,
) -> GenerateOutput:
    """Greedy decoding of `max_new_tokens` tokens after left-padded prompts (jitted, cached).

    `use_cache=False` recomputes the whole prefix every step (slow; a reference for tests).
    """
    ids, mask = _prompt(input_ids, attention_mask)
    fn = _compiled(
        "greedy",
        _greedy,
        module,
        n_new=max_new_tokens,
        eos=eos_token_id,
        pad=pad_token_id,
        ngram=no_repeat_ngram_size,
        use_cache=use_cache,
    )
    return fn(params, ids, mask)


def _greedy(module, params, ids, mask, *, n_new, eos, pad, ngram, use_cache):
    b, p = ids.shape
    t_max = p + n_new
    tokens = jnp.concatenate([ids, jnp.full((b, n_new), pad, jnp.int32)], axis=1)
    valid = jnp.concatenate([mask, jnp.zeros((b, n_new), jnp.int32)], axis=1)
    variables = {"params": params}
    if use_cache:
        cache = module.init_cache(b, t_max)
        logits, cache = module.apply(variables, ids, mask, cache=cache)
    else:
        cache, logits = None, module.apply(variables, tokens, valid)[:, :p]
    state = (
        tokens,
        valid,
        cache,
        logits[:, -1],
        jnp.zeros(b, bool),
        jnp.zeros(b),
        jnp.zeros(b, jnp.int32),
    )

    def step(t, state):
        tokens, valid, cache, last, done, score, length = state
        slot = p + t
        logp = ban_repeated_ngrams(jax.nn.log_softmax(last, axis=-1), tokens, valid, slot, ngram)
        nxt = jnp.argmax(logp, axis=-1).astype(jnp.int32)
        live = ~done
        score = score + jnp.where(live, jnp.take_along_axis(logp, nxt[:, None], 1)[:, 0], 0.0)
        length = length + live
        nxt = jnp.where(live, nxt, pad)
        tokens = tokens.at[:, slot].set(nxt)
        valid = valid.at[:, slot].set(live.astype(jnp.int32))
        if eos is not None:
            done = done | (nxt == eos)
        if use_cache:
            logits, cache = module.apply(
                variables, nxt[:, None], live[:, None].astype(jnp.int32), cache=cache
            )
            last = logits[:, -1]
        else:
            logits = module.apply(variables, tokens, valid)
            last = jax.lax.dynamic_index_in_dim(logits, slot, axis=1, keepdims=False)
        return tokens, valid, cache, last, done, score, length

    tokens, _, _, _, _, score, length = jax.lax.fori_loop(0, n_new, step, state)
    return GenerateOutput(tokens[:, p:], score, length)


def beam_search(
    module: Any,
    params: Any,
    input_ids: jax.Array,
    attention_mask: jax.Array | None = None,
    *,
    max_new_tokens: int,
    num_beams: int,
    length_penalty: float = 1.0,
    eos_token_id: int | None = None,
    pad_token_id: int = 0,
    no_repeat_ngram_size: int = 0,
) -> GenerateOutput:
    """Beam search (see the module docstring) of up to `max_new_tokens` tokens (jitted, cached).

    Returns the best hypothesis per prompt; `scores` is its length-normalised score.
    """
    ids, mask = _prompt(input_ids, attention_mask)
    fn = _compiled(
        "beam",
        _beam,
        module,
        n_new=max_new_tokens,
        k=num_beams,
        lp=float(length_penalty),
        eos=eos_token_id,
        pad=pad_token_id,
        ngram=no_repeat_ngram_size,
    )
    return fn(params, ids, mask)


def _beam(module, params, ids, mask, *, n_new, k, lp, eos, pad, ngram):
    b, p = ids.shape
    t_max = p + n_new
    variables = {"params": params}
    unflat = lambda x: x.reshape(b, k, *x.shape[1:])  # noqa: E731
    ids_k, mask_k = jnp.repeat(ids, k, axis=0), jnp.repeat(mask, k, axis=0)
    cache = module.init_cache(b * k, t_max)
    logits, cache = module.apply(variables, ids_k, mask_k, cache=cache)
    tokens = jnp.concatenate([ids_k, jnp.full((b * k, n_new), pad, jnp.int32)], axis=1)
    valid = jnp.concatenate([mask_k, jnp.zeros((b * k, n_new), jnp.int32)], axis=1)
    alive = jnp.tile(jnp.array([0.0] + [NEG] * (k - 1)), (b, 1))
    fin_tokens = jnp.full((b, k, t_max), pad, jnp.int32)
    fin_scores = jnp.full((b, k), EMPTY)
    fin_lengths = jnp.zeros((b, k), jnp.int32)
    done = jnp.zeros(b, bool)
    state = (tokens, valid, cache, logits[:, -1], alive, fin_tokens, fin_scores, fin_lengths, done)

    def step(t, state):
        tokens, valid, cache, last, alive, fin_tokens, fin_scores, fin_lengths, done = state
        slot, gen_len = p + t, t + 1
        logp = ban_repeated_ngrams(jax.nn.log_softmax(last, axis=-1), tokens, valid, slot, ngram)
        vocab = logp.shape[-1]
        cand = (alive[..., None] + unflat(logp)).reshape(b, k * vocab)
        vals, idx = jax.lax.top_k(cand, 2 * k)  # (B, 2K), best first
        beam, tok = idx // vocab, (idx % vocab).astype(jnp.int32)
        rows = jnp.arange(b)[:, None] * k + beam  # (B, 2K) rows of the flat batch
        cand_tokens = tokens[rows].at[:, :, slot].set(tok)  # (B, 2K, T)
        is_eos = tok == eos if eos is not None else jnp.zeros_like(tok, bool)
        # Finished: EOS continuations ranked within the top K, in rows not done yet.
        finish = is_eos & (jnp.arange(2 * k) < k)[None] & ~done[:, None]
        new_scores = jnp.where(finish, vals / gen_len**lp, EMPTY)
        all_scores = jnp.concatenate([fin_scores, new_scores], axis=1)
        fin_scores, pick = jax.lax.top_k(all_scores, k)
        fin_tokens = jnp.take_along_axis(
            jnp.concatenate([fin_tokens, cand_tokens], axis=1), pick[..., None], axis=1
        )
        fin_lengths = jnp.take_along_axis(
            jnp.concatenate([fin_lengths, jnp.full((b, 2 * k), gen_len, jnp.int32)], axis=1),
            pick,
            axis=1,
        )
        # Alive: the K best non-EOS continuations.
        keep_vals, keep = jax.lax.top_k(jnp.where(is_eos, 2 * NEG, vals), k)
        alive = keep_vals
        keep_rows = jnp.take_along_axis(rows, keep, axis=1).reshape(-1)
        new_tok = jnp.take_along_axis(tok, keep, axis=1).reshape(-1)
        tokens = tokens[keep_rows].at[:, slot].set(new_tok)
        valid = valid[keep_rows].at[:, slot].set(1)
        cache = cache.gather(keep_rows)
        # Done when K hypotheses are finished and no alive beam can beat the worst of them.
        best_alive = alive.max(axis=1) / gen_len**lp
        done = done | ((fin_scores[:, -1] > EMPTY / 2) & (fin_scores[:, -1] >= best_alive))
        logits, cache = module.apply(
            variables, new_tok[:, None], jnp.ones((b * k, 1), jnp.int32), cache=cache
        )
        return tokens, valid, cache, logits[:, -1], alive, fin_tokens, fin_scores, fin_lengths, done

    tokens, _, _, _, alive, fin_tokens, fin_scores, fin_lengths, done = jax.lax.fori_loop(
        0, n_new, step, state
    )
    # Rows not done: their alive beams compete too, at the full length.
    alive_scores = jnp.where(done[:, None], EMPTY, alive / n_new**lp)
    scores = jnp.concatenate([fin_scores, alive_scores], axis=1)
    seqs = jnp.concatenate([fin_tokens, unflat(tokens)], axis=1)
    lengths = jnp.concatenate([fin_lengths, jnp.full((b, k), n_new, jnp.int32)], axis=1)
    best = jnp.argmax(scores, axis=1)
    take = lambda x: jnp.take_along_axis(x, best.reshape(b, *[1] * (x.ndim - 1)), axis=1)[:, 0]  # noqa: E731
    return GenerateOutput(take(seqs)[:, p:], take(scores), take(lengths))

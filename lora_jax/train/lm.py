"""Causal-LM fine-tuning objective for generation tasks (E2E table-to-text).

An example is one sequence ``prompt + target + EOS`` (``lora_jax.data.pipeline.
CausalLMTokenize``), right-padded for training; the prompt is the task's template filled with
the example's fields, by default ``"{meaning_representation} ||| "`` (plain text, the same for
every model: no chat template; ``data.prompt=...`` changes it, e.g. to SmolLM2-Instruct's
``"<|im_start|>user\\n{meaning_representation}<|im_end|>\\n<|im_start|>assistant\\n"``).

* **Loss**: next-token cross-entropy on the target and EOS tokens only (``loss_mask``), mean
  over those tokens; with ``optim.label_smoothing = eps`` each token's loss is optax's
  ``softmax_cross_entropy(logits, smooth_labels(one_hot(y), eps))`` = (1 - eps) NLL + eps
  mean_v(-log p_v) (the paper uses eps = 0.1).
* **Every eval**: unsmoothed ``loss`` per target token, ``perplexity`` = exp(loss) and
  ``token_accuracy`` (argmax = target) on the eval split.
* **End of the run** (``Objective.final``): decode the eval split's distinct prompts with
  ``generate.beam_search`` (``generate.num_beams`` = 1: greedy) on LEFT-padded prompts, cut at
  EOS, and score corpus ``bleu`` (sacrebleu, 13a tokenization, against ALL references of each
  meaning representation) and ``rouge_l`` (LCS F1 with rouge-score's tokenization, best
  reference per MR, averaged over MRs), both on a 0-100 scale. The decoded texts go to
  ``generations.jsonl`` in the run folder.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lora_jax.data.task_spec import LOCAL_TASK
from lora_jax.lora import LoRAConfig
from lora_jax.models import generate
from lora_jax.runs.layout import RunFolder
from lora_jax.train.steps import Objective

# ---- loss --------------------------------------------------------------------------------------


def token_losses(
    logits: jax.Array, input_ids: jax.Array, loss_mask: jax.Array, label_smoothing: float = 0.0
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-token (smoothed loss, NLL, mask) of predicting ``input_ids[:, 1:]``, each (B, L-1).

    ``loss_mask`` (B, L) marks the tokens whose prediction counts (target + EOS); position t's
    logits predict token t + 1, so the first token is never scored.
    """
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, input_ids[:, 1:, None], axis=-1)[..., 0]
    loss = (
        (1.0 - label_smoothing) * nll - label_smoothing * logp.mean(-1) if label_smoothing else nll
    )
    return loss, nll, loss_mask[:, 1:].astype(jnp.float32)


def causal_lm_loss(
    logits: jax.Array, input_ids: jax.Array, loss_mask: jax.Array, label_smoothing: float = 0.0
) -> jax.Array:
    """Mean (label-smoothed) cross-entropy over the scored tokens of a batch."""
    loss, _, mask = token_losses(logits, input_ids, loss_mask, label_smoothing)
    return (loss * mask).sum() / jnp.maximum(mask.sum(), 1.0)


# ---- text metrics ------------------------------------------------------------------------------


def _rouge_tokens(text: str) -> list[str]:
    # rouge-score's default tokenizer (no stemming): lower-case, non-alphanumerics split.
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(hypothesis: str, references: Sequence[str]) -> float:
    """ROUGE-L F1 of one hypothesis against its best reference (rouge-score's `rougeL`,
    `score_multi`), in [0, 1]."""
    hyp, best = _rouge_tokens(hypothesis), 0.0
    for ref in map(_rouge_tokens, references):
        lcs = _lcs(ref, hyp)
        if lcs:
            p, r = lcs / len(hyp), lcs / len(ref)
            best = max(best, 2 * p * r / (p + r))
    return best


def generation_metrics(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """Corpus BLEU (sacrebleu, every reference of each item) and mean ROUGE-L F1, 0-100."""
    import sacrebleu

    n_refs = max(len(r) for r in references)
    streams = [[r[i] if i < len(r) else None for r in references] for i in range(n_refs)]
    bleu = sacrebleu.corpus_bleu(list(hypotheses), streams)
    rouge = float(np.mean([rouge_l(h, r) for h, r in zip(hypotheses, references, strict=True)]))
    return {"bleu": float(bleu.score), "rouge_l": 100.0 * rouge}


# ---- decoding ----------------------------------------------------------------------------------


def references_by_prompt(
    source: Any, task: Any, prompt: str, limit: int | None = None, chat: Any = None
) -> list[tuple[str, list[str]]]:
    """(prompt text, all its references) per distinct prompt of `source`, in order of first
    appearance; a ``references`` field (GEM) adds its entries to the targets. The prompt text is
    what decoding starts from: without the template's trailing spaces (see `format_prompt`); a
    chat task's conversation up to its last reply, which is the reference (`chat`)."""
    # Grain: not for every step process.
    from lora_jax.data.prompts import prompt_and_target
    from lora_jax.data.tokenize import as_text

    refs: dict[str, list[str]] = {}
    for i in range(len(source)):
        element = source[i]
        key, target = prompt_and_target(task, element, prompt, chat)
        texts = [target, *(as_text(r) for r in element.get("references", ()))]
        if key not in refs and limit is not None and len(refs) >= limit:
            continue
        bucket = refs.setdefault(key, [])
        bucket += [t for t in texts if t not in bucket]
    return list(refs.items())


def decode_texts(
    module: Any,
    params: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    eos_id: int,
    pad_id: int,
    num_beams: int = 1,
    max_new_tokens: int = 64,
    length_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    batch_size: int = 8,
) -> list[str]:
    """Generate after each prompt (greedy for num_beams = 1, else beam search); returns the
    decoded continuations cut at EOS. Every call has one shape (prompts left-padded to the
    longest, the last batch filled up), so decoding compiles once."""
    encoded = [tokenizer.encode(p, add_special_tokens=False).ids for p in prompts]
    width = max(len(e) for e in encoded)
    ids = np.full((len(encoded), width), pad_id, np.int32)
    mask = np.zeros((len(encoded), width), np.int32)
    for i, e in enumerate(encoded):
        ids[i, width - len(e) :], mask[i, width - len(e) :] = e, 1
    options = dict(
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        no_repeat_ngram_size=no_repeat_ngram_size,
    )
    out = []
    for start in range(0, len(encoded), batch_size):
        rows = np.arange(start, start + batch_size).clip(max=len(encoded) - 1)
        if num_beams == 1:
            result = generate.greedy_search(module, params, ids[rows], mask[rows], **options)
        else:
            result = generate.beam_search(
                module,
                params,
                ids[rows],
                mask[rows],
                num_beams=num_beams,
                length_penalty=length_penalty,
                **options,
            )
        for seq in np.asarray(result.sequences)[: len(encoded) - start]:
            seq = seq.tolist()
            seq = seq[: seq.index(eos_id)] if eos_id in seq else seq
            out.append(tokenizer.decode(seq, skip_special_tokens=True).strip())
    return out


# ---- the objective -----------------------------------------------------------------------------


def special_ids(pre: Any) -> tuple[int, int]:
    """(eos, pad) ids of a decoder: its config's, pad falling back to EOS."""
    eos = pre.config.eos_token_id
    if eos is None:
        raise ValueError(f"model {pre.source!r} has no eos_token_id; generation needs one.")
    pad = pre.config.pad_token_id
    return int(eos), int(eos if pad is None else pad)


def loader_kwargs(pre: Any, prompt: str | None, chat: Any = None) -> dict[str, Any]:
    """The extra `make_loader` arguments of a generation task (prompt, EOS and pad ids, a chat
    task's template)."""
    eos, pad = special_ids(pre)
    return {"prompt": prompt, "eos_id": eos, "pad_id": pad, "chat": chat}


def chat_of(cfg: Any) -> Any:
    """The model's `ChatTemplate` for a chat task (`data=local data.kind=chat`), else None."""
    if cfg.data.task != LOCAL_TASK or cfg.data.kind != "chat":
        return None
    return chat_template_of(cfg.model.name)


def chat_template_of(model: str) -> Any:
    """The `ChatTemplate` of a model's tokenizer (`models.chat_template`); None without one."""
    from lora_jax import models
    from lora_jax.data.prompts import ChatTemplate

    template, special = models.chat_template(model)
    return ChatTemplate(template, tuple(sorted(special.items()))) if template else None


def objective(
    module: Any,
    task: Any,
    *,
    tokenizer: Any,
    eval_source: Any,
    prompt: str,
    eos_id: int,
    pad_id: int,
    label_smoothing: float = 0.0,
    decode: dict[str, Any] | None = None,
    eval_limit: int | None = None,
    out_dir: str | Path | None = None,
    chat: Any = None,
    merge_adapters: Callable[[dict], dict] | None = None,
) -> Objective:
    """The causal-LM objective (see the module docstring).

    Args:
        eval_source: the eval split (random access) whose prompts are decoded at the end.
        decode: `decode_texts` options (num_beams, max_new_tokens, length_penalty,
            no_repeat_ngram_size, batch_size).
        eval_limit: decode the first N distinct prompts only (None: all).
        out_dir: where `generations.jsonl` goes (None: not written).
        chat: a chat task's `ChatTemplate` (its prompts and references come from it).
        merge_adapters: params -> the same with the adapters folded into their kernels
            (`lora.merge`). Given, the evaluation (`Objective.merged_predict`) and the decoding
            run the model without adapters, so every rank of a sweep shares their programs;
            None (a bfloat16 base, which would round dW away) keeps the adapted model.
    """
    plain = module.clone(lora=LoRAConfig()) if merge_adapters is not None else None

    def loss_fn(params, batch, rng):
        logits = _logits(module, params, batch, False, rng)
        return causal_lm_loss(logits, batch["input_ids"], batch["loss_mask"], label_smoothing), {}

    def metrics(preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        nll, n, correct = preds.astype(np.float64).sum(0)
        loss = nll / max(n, 1.0)
        return {
            "loss": loss,
            "perplexity": math.exp(min(loss, 700.0)),
            "token_accuracy": correct / max(n, 1.0),
        }

    def final(params) -> dict[str, float]:
        items = references_by_prompt(eval_source, task, prompt, eval_limit, chat)
        prompts = [p for p, _ in items]
        decoder = module
        if merge_adapters is not None:
            decoder, params = plain, merge_adapters(params)
        hyps = decode_texts(
            decoder, params, tokenizer, prompts, eos_id=eos_id, pad_id=pad_id, **(decode or {})
        )
        if out_dir is not None:
            with open(RunFolder(out_dir).generations, "w") as f:
                for (p, refs), h in zip(items, hyps, strict=True):
                    f.write(json.dumps({"prompt": p, "generated": h, "references": refs}) + "\n")
        return {**generation_metrics(hyps, [r for _, r in items]), "decoded": len(hyps)}

    return Objective(
        loss_fn,
        functools.partial(_predict, module),
        metrics,
        final=final,
        merge_adapters=merge_adapters,
        merged_predict=None if plain is None else functools.partial(_predict_jit, plain),
    )


def _logits(module: Any, params: dict, batch: dict, deterministic: bool, rng: Any = None):
    return module.apply(
        {"params": params},
        batch["input_ids"],
        batch["attention_mask"],
        deterministic=deterministic,
        rngs={"dropout": rng} if rng is not None else None,
    )


def _predict(module: Any, params: dict, batch: dict) -> jax.Array:
    """Per example: summed NLL of its scored tokens, their count, and how many argmax got right."""
    logits = _logits(module, params, batch, True)
    _, nll, mask = token_losses(logits, batch["input_ids"], batch["loss_mask"])
    correct = (logits[:, :-1].argmax(-1) == batch["input_ids"][:, 1:]) * mask
    return jnp.stack([(nll * mask).sum(1), mask.sum(1), correct.sum(1)], axis=1)


# Keyed by the module's value: runs with equal models share the compiled programs.
_predict_jit = jax.jit(_predict, static_argnums=0)


__all__: list[str] = [
    "causal_lm_loss",
    "chat_of",
    "chat_template_of",
    "decode_texts",
    "generation_metrics",
    "loader_kwargs",
    "objective",
    "references_by_prompt",
    "rouge_l",
    "special_ids",
    "token_losses",
]

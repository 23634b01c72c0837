"""What a causal LM reads before it writes, for the two shapes of a generation example: a
prompt template filled with the example's fields (E2E, ``data.kind=completion``), or a
conversation rendered with the model's chat template (``data.kind=chat``: the loss on every
assistant turn, decoding after the last one), and the check that every prompt fits
``data.max_len``.

A chat template is Jinja, rendered as transformers' ``apply_chat_template`` renders it (a
sandbox, ``trim_blocks``, ``lstrip_blocks``, ``raise_exception``). The scored spans are found
by rendering the conversation's beginnings in turn: the text an assistant turn adds after the
generation prompt is scored (its content and end-of-turn tokens), the rest is not.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import grain
import numpy as np
import tokenizers

from lora_jax.data.tokenize import as_text, format_prompt


@dataclass(frozen=True)
class ChatTemplate:
    """A model's chat template and the special-token strings it may use (bos_token, ...)."""

    template: str
    special: tuple[tuple[str, str], ...] = ()

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        return _compiled(self.template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, **dict(self.special)
        )

    def spans(self, messages: list[dict]) -> list[tuple[str, bool]]:
        """(text, scored) spans whose concatenation is the rendered conversation."""
        out, done = [], ""
        for i, turn in enumerate(messages):
            if turn["role"] == "assistant":
                head = self.render(messages[:i], add_generation_prompt=True)
                out.append((_after(done, head), False))
                done = head
            full = self.render(messages[: i + 1])
            out.append((_after(done, full), turn["role"] == "assistant"))
            done = full
        return out

    def last_reply(self, messages: list[dict]) -> tuple[str, str]:
        """(the conversation up to its last assistant turn, with the generation prompt; that
        turn's content): what decoding starts from, and its reference."""
        last = max(i for i, t in enumerate(messages) if t["role"] == "assistant")
        return self.render(messages[:last], add_generation_prompt=True), messages[last]["content"]


@functools.cache
def _compiled(template: str) -> Any:
    from jinja2.exceptions import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)


def _after(prefix: str, text: str) -> str:
    if not text.startswith(prefix):
        raise ValueError(
            "the model's chat template does not render a conversation as the renderings of its "
            "beginnings in turn, so its assistant turns cannot be told apart; allowed: a "
            "template such as SmolLM2's. Use `data.kind=completion` with prompt/completion columns."
        )
    return text[len(prefix) :]


def prompt_and_target(
    task: Any, element: dict, prompt: str, chat: ChatTemplate | None = None
) -> tuple[str, str]:
    """(the prompt decoding starts from, the reference) of one example of a generation task."""
    if task.chat:
        return chat.last_reply(json.loads(as_text(element[task.label_key])))
    return format_prompt(prompt, element)[0], as_text(element[task.label_key])


class ChatTokenize(grain.transforms.Map):
    """One conversation -> its ids and a loss mask on the assistant turns, cut at ``max_len``."""

    def __init__(
        self, tokenizer: tokenizers.Tokenizer, task: Any, max_len: int, chat: ChatTemplate
    ):
        self._tokenizer = tokenizers.Tokenizer.from_str(tokenizer.to_str())
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self._key, self._max_len, self._chat = task.label_key, max_len, chat

    def map(self, element: dict[str, Any]) -> dict[str, np.ndarray]:
        ids, mask = [], []
        for text, scored in self._chat.spans(json.loads(as_text(element[self._key]))):
            piece = self._tokenizer.encode(text, add_special_tokens=False).ids
            ids += piece
            mask += [int(scored)] * len(piece)
        ids, mask = ids[: self._max_len], mask[: self._max_len]
        return {"input_ids": np.asarray(ids, np.int32), "loss_mask": np.asarray(mask, np.int32)}


def prompt_tokens(
    task: Any,
    element: dict,
    tokenizer: tokenizers.Tokenizer,
    prompt: str,
    chat: ChatTemplate | None,
) -> int:
    """The tokens before the first scored one: the prompt (a chat: up to its first reply)."""
    if task.chat:
        spans = chat.spans(json.loads(as_text(element[task.label_key])))
        text = "".join(t for t, _ in spans[: next(i for i, (_, s) in enumerate(spans) if s)])
    else:
        text = format_prompt(prompt, element)[0]
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


def check_prompt_lengths(
    task: Any,
    sources: dict[str, Any],
    tokenizer: tokenizers.Tokenizer,
    max_len: int,
    prompt: str,
    chat: ChatTemplate | None = None,
) -> None:
    """Every prompt must leave room for a target token within ``max_len`` (else its target, the
    thing trained, would be cut away). Raises ValueError naming the longest and the fix."""
    worst, first, count = 0, "", 0
    for split, source in sources.items():
        for i in range(len(source)):
            n = prompt_tokens(task, source[i], tokenizer, prompt, chat)
            worst = max(worst, n)
            if n >= max_len:
                count, first = count + 1, first or f"{split} example {i}, {n} tokens"
    if count:
        raise ValueError(
            f"data.max_len={max_len} is not valid: {count} prompt(s) leave no room for the "
            f"target (first: {first}); allowed: more than the longest prompt ({worst} tokens). "
            f"Use e.g. `data.max_len={worst + 32}`, or shorten the prompts."
        )

"""One example -> token ids: the per-example maps of the Grain pipeline (``pipeline``).

``Tokenize`` (classification and regression: text field(s) -> ids, segment ids, label) and
``CausalLMTokenize`` (generation: prompt template + target + EOS, the loss on the target);
chat conversations have theirs in ``prompts``.
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np
import tokenizers

from lora_jax.data.task_spec import TaskSpec


def as_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):  # 0-d object/bytes array
        return as_text(value.item())
    return str(value)


class Tokenize(grain.transforms.Map):
    """Text field(s) of one example -> variable-length ids, segment ids and label."""

    def __init__(self, tokenizer: tokenizers.Tokenizer, task: TaskSpec, max_len: int):
        # Own copy: truncation on, padding off, whatever tokenizer.json says.
        self._tokenizer = tokenizers.Tokenizer.from_str(tokenizer.to_str())
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=max_len, strategy="longest_first")
        self._text_keys = task.text_keys
        self._label_key = task.label_key
        self._label_dtype = np.float32 if task.is_regression else np.int32

    def map(self, element: dict[str, Any]) -> dict[str, np.ndarray]:
        texts = [as_text(element[k]) for k in self._text_keys]
        enc = self._tokenizer.encode(*texts)
        return {
            "input_ids": np.asarray(enc.ids, dtype=np.int32),
            "token_type_ids": np.asarray(enc.type_ids, dtype=np.int32),
            "labels": np.asarray(element[self._label_key], dtype=self._label_dtype),
        }


def format_prompt(template: str, element: dict[str, Any]) -> tuple[str, str]:
    """(prompt, carry): ``template.format(**fields)`` (bytes fields decoded), split so that its
    trailing spaces are ``carry``, which goes before the target. A byte-level BPE attaches a
    space to the word after it (" Blue"), so ``"MR ||| "`` trains and decodes as ``"MR |||"``
    followed by ``" Blue ..."``, as in running text, instead of a lone-space token."""
    text = template.format(**{k: as_text(element[k]) for k in _fields(template)})
    prompt = text.rstrip(" ")
    return prompt, text[len(prompt) :]


def _fields(template: str) -> set[str]:
    import string

    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


class CausalLMTokenize(grain.transforms.Map):
    """One example -> ``prompt + target + EOS`` ids and a loss mask on target + EOS.

    Truncation keeps the prompt and shortens the target (never below one token: a prompt
    that leaves no room is cut from its start). No special tokens are added besides EOS.
    """

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        task: TaskSpec,
        max_len: int,
        prompt: str,
        eos_id: int,
    ):
        self._tokenizer = tokenizers.Tokenizer.from_str(tokenizer.to_str())
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self._target_key, self._prompt = task.label_key, prompt
        self._max_len, self._eos = max_len, int(eos_id)

    def map(self, element: dict[str, Any]) -> dict[str, np.ndarray]:
        enc = lambda text: self._tokenizer.encode(text, add_special_tokens=False).ids  # noqa: E731
        prompt, carry = format_prompt(self._prompt, element)
        prompt = enc(prompt)
        target = [*enc(carry + as_text(element[self._target_key])), self._eos]
        prompt = prompt[max(0, len(prompt) - (self._max_len - 1)) :]
        target = target[: self._max_len - len(prompt)]
        ids = np.asarray(prompt + target, dtype=np.int32)
        loss_mask = np.zeros(len(ids), dtype=np.int32)
        loss_mask[len(prompt) :] = 1
        return {"input_ids": ids, "loss_mask": loss_mask}

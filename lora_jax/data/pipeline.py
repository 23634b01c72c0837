"""Grain input pipeline: random-access source -> tokenized, padded numpy batches.

``make_loader`` builds a ``grain.DataLoader`` from a source (``load_split``), a
``tokenizers.Tokenizer`` and a ``TaskSpec``. The operations are Grain transforms:

1. ``Tokenize`` (``data.tokenize``, a ``grain.transforms.Map``): text field(s) -> ``input_ids`` and
   ``token_type_ids`` (segment ids, 1 on the second sentence of a pair), truncated to
   ``max_len`` with the tokenizer's own special tokens (longest-first for pairs).
2. ``grain.transforms.Batch`` with a ``Collate`` batch_fn that pads to the batch's
   target length: ``"max_len"`` (always ``max_len``: one shape, one compile),
   ``"bucket"`` (the longest sequence rounded up to a multiple of ``pad_multiple``,
   at most ``max_len``: a handful of shapes), or ``"longest"`` (exact longest: many
   shapes, a JAX recompile for each).

Batches are dicts of numpy arrays: ``input_ids``, ``attention_mask``, ``token_type_ids``
(int32, (B, L)) and ``labels`` (int32 (B,) for classification, float32 for regression).

Generation tasks (``task.kind == "generation"``, a causal LM) use ``CausalLMTokenize`` and
``CausalLMCollate`` instead: ``prompt.format(**example) + example[label_key] + EOS`` as one
sequence (the prompt's trailing spaces are tokenized with the target, see ``format_prompt``),
RIGHT-padded (training only; ``lora_jax.lm`` left-pads prompts for decoding), with
``input_ids``, ``attention_mask`` and ``loss_mask`` (int32 (B, L), 1 on the target tokens and
EOS: the tokens whose prediction is scored) and ``labels`` (int32 (B,), the number of scored
tokens per example).

The loader is deterministic (same seed -> same batches) and checkpointable::

    it = iter(loader)
    batch = next(it)
    state = it.get_state()  # bytes; store with the model checkpoint
    it2 = iter(loader)
    it2.set_state(state)    # continues with exactly the batch after `batch`
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import grain
import numpy as np
import tokenizers

from lora_jax.data.shards import BlockSampler
from lora_jax.data.task_spec import TaskSpec
from lora_jax.data.tasks import get_task
from lora_jax.data.tokenize import CausalLMTokenize, Tokenize

PadMode = Literal["max_len", "bucket", "longest"]
# Grain's default read-ahead (16 threads, 500 elements) scans its whole buffer of futures for
# every element it hands out: at batch 1,024 that was 36 s of a 93 s tiny run (cProfile), the
# loader twice as slow as with none. Our records are local and small; 2 threads keep 64
# elements ahead, as fast as no read-ahead at batch 1,024 and at batch 16.
READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=64)
_PAD_TOKENS = ("[PAD]", "<pad>", "<|pad|>", "<|padding|>", "[pad]")


def pad_id_of(tokenizer: tokenizers.Tokenizer, pad_id: int | None = None) -> int:
    """The padding id: ``pad_id`` if given, else the tokenizer's pad token.

    Raises:
        ValueError: the tokenizer has no known pad token and none was passed.
    """
    if pad_id is not None:
        return int(pad_id)
    padding = tokenizer.padding
    if (
        padding
        and padding.get("pad_token")
        and tokenizer.token_to_id(padding["pad_token"]) == padding.get("pad_id")
    ):
        return int(padding["pad_id"])
    for token in _PAD_TOKENS:
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return int(token_id)
    raise ValueError(
        f"Tokenizer has none of the pad tokens {_PAD_TOKENS}; pass pad_id=... "
        "(for decoder-only models the EOS id is a common choice)."
    )


def bucket_length(length: int, max_len: int, multiple: int) -> int:
    """``length`` rounded up to a multiple of ``multiple``, capped at ``max_len``."""
    return min(max_len, max(multiple, math.ceil(length / multiple) * multiple))


class Collate:
    """Batch function: stacks labels and pads ids to the batch's target length."""

    def __init__(self, pad_id: int, max_len: int, pad: PadMode, pad_multiple: int = 16):
        if pad not in ("max_len", "bucket", "longest"):
            raise ValueError(f"pad must be 'max_len', 'bucket' or 'longest', got {pad!r}")
        self.pad_id, self.max_len, self.pad, self.pad_multiple = pad_id, max_len, pad, pad_multiple

    def target_length(self, longest: int) -> int:
        if self.pad == "max_len":
            return self.max_len
        if self.pad == "bucket":
            return bucket_length(longest, self.max_len, self.pad_multiple)
        return max(longest, 1)

    def pad_rows(
        self, examples: Sequence[dict[str, np.ndarray]], *fields: str
    ) -> dict[str, np.ndarray]:
        """Right-pad `input_ids` (with the pad id), an `attention_mask`, and `fields` (with 0)."""
        length = self.target_length(max(len(e["input_ids"]) for e in examples))
        out = {"input_ids": np.full((len(examples), length), self.pad_id, dtype=np.int32)}
        out.update(
            {
                f: np.zeros((len(examples), length), dtype=np.int32)
                for f in ("attention_mask", *fields)
            }
        )
        for i, e in enumerate(examples):
            k = len(e["input_ids"])
            out["input_ids"][i, :k] = e["input_ids"]
            out["attention_mask"][i, :k] = 1
            for f in fields:
                out[f][i, :k] = e[f]
        return out

    def __call__(self, examples: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        return {
            **self.pad_rows(examples, "token_type_ids"),
            "labels": np.stack([e["labels"] for e in examples]),
        }


class CausalLMCollate(Collate):
    """Batch function for ``CausalLMTokenize``: right-pads ids, attention and loss masks."""

    def __call__(self, examples: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        batch = self.pad_rows(examples, "loss_mask")
        return {**batch, "labels": batch["loss_mask"].sum(axis=1, dtype=np.int32)}


def _shard_options(
    shard_index: int | None, shard_count: int | None, drop_remainder: bool
) -> grain.sharding.ShardOptions:
    if shard_index is None or shard_count is None:
        import jax

        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    return grain.sharding.ShardOptions(
        shard_index=shard_index, shard_count=shard_count, drop_remainder=drop_remainder
    )


def _ensure_absl_flags_parsed() -> None:
    # Grain's worker processes read absl flags; outside an absl app they are unparsed
    # and the first batch raises UnparsedFlagAccessError. Defaults are what we want.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def tokenizer_map(
    tokenizer: tokenizers.Tokenizer,
    task: str | TaskSpec,
    max_len: int,
    prompt: str | None = None,
    eos_id: int | None = None,
    chat: Any = None,
) -> grain.transforms.Map:
    """The Grain transform that turns one example of `task` into its ids (``make_loader``'s
    first operation; the arguments as there)."""
    task = get_task(task)
    if task.chat:
        from lora_jax.data.prompts import ChatTokenize

        if chat is None:
            raise ValueError(f"task {task.name!r} is a chat task: pass chat=ChatTemplate(...)")
        return ChatTokenize(tokenizer, task, max_len, chat)
    if task.is_generation:
        if eos_id is None:
            raise ValueError(f"task {task.name!r} is a generation task: pass eos_id=...")
        return CausalLMTokenize(tokenizer, task, max_len, prompt or task.prompt, eos_id)
    return Tokenize(tokenizer, task, max_len)


def make_loader(
    source: Any,
    tokenizer: tokenizers.Tokenizer,
    task: str | TaskSpec,
    *,
    batch_size: int,
    max_len: int,
    seed: int | None = 0,
    shuffle: bool = True,
    num_epochs: int | None = 1,
    drop_remainder: bool = True,
    shard_index: int | None = None,
    shard_count: int | None = None,
    worker_count: int = 0,
    read_options: grain.ReadOptions = READ_OPTIONS,
    pad: PadMode = "bucket",
    pad_multiple: int = 16,
    pad_id: int | None = None,
    prompt: str | None = None,
    eos_id: int | None = None,
    chat: Any = None,
) -> grain.DataLoader:
    """Builds the Grain DataLoader for one split.

    Args:
        source: random-access source (``load_split(task, split)``; any sequence of dicts).
        tokenizer: a ``tokenizers.Tokenizer`` (e.g. from a checkpoint's tokenizer.json).
        task: task name or spec (text fields, label field, regression or not).
        batch_size: per-process batch size.
        max_len: maximum sequence length, special tokens included.
        seed: shuffle seed (non-negative 32-bit int); same seed -> same batches.
        shuffle: shuffle globally (reshuffled every epoch). Use False for evaluation.
        num_epochs: passes over the data; None repeats forever.
        drop_remainder: drop the last partial batch. Use True for training, False for
            evaluation (the last batch is then smaller: one more shape to compile).
        shard_index / shard_count: this process's shard; default
            ``jax.process_index()`` / ``jax.process_count()``. With several shards, shard i
            reads the i-th block of ``batch_size`` of every global batch of
            ``batch_size * shard_count`` (``lora_jax.data.shards``): side by side the shards'
            batches are one shard's batches of the global size. With ``drop_remainder=False``
            the last global batch is filled up with repeats of the last record, so every
            shard reads the same number of whole batches; the first ``len(source)`` rows of
            the gathered batches are the split in order.
        worker_count: Grain worker processes (0 = in-process).
        read_options: Grain's read-ahead (``READ_OPTIONS``: see its comment).
        pad: ``"bucket"`` (default), ``"max_len"`` or ``"longest"``; see the module doc.
        pad_multiple: bucket size for ``pad="bucket"``.
        pad_id: padding id; default from the tokenizer (``[PAD]``, ``<pad>``, ...).
        prompt: generation tasks: the prompt template (default ``task.prompt``).
        eos_id: generation tasks: the id appended after the target (required).
        chat: chat tasks (``task.chat``): the model's ``lora_jax.data.prompts.ChatTemplate``.

    Returns:
        A ``grain.DataLoader``; ``iter(loader)`` is a checkpointable DataLoaderIterator.
    """
    task = get_task(task)
    if batch_size < 1 or max_len < 2:
        raise ValueError(f"need batch_size >= 1 and max_len >= 2, got {batch_size}, {max_len}")
    if shuffle and seed is None:
        raise ValueError("shuffle=True needs an integer seed")
    if worker_count > 0:
        _ensure_absl_flags_parsed()
    shard_options = _shard_options(shard_index, shard_count, drop_remainder)
    sampler = grain.samplers.IndexSampler(
        num_records=len(source),
        shard_options=shard_options
        if shard_options.shard_count == 1
        else grain.sharding.NoSharding(),
        shuffle=shuffle,
        num_epochs=num_epochs,
        seed=seed,
    )
    if shard_options.shard_count > 1:  # each shard its block of every global batch
        sampler = BlockSampler(
            sampler, batch_size, shard_options.shard_count, fill=not drop_remainder
        )
    tokenize = tokenizer_map(tokenizer, task, max_len, prompt, eos_id, chat)
    pad_id = pad_id_of(tokenizer, pad_id)
    if task.is_generation:  # chat tasks too
        collate = CausalLMCollate(pad_id, max_len, pad, pad_multiple)
    else:
        collate = Collate(pad_id, max_len, pad, pad_multiple)
    operations = [
        tokenize,
        grain.transforms.Batch(
            batch_size=batch_size, drop_remainder=drop_remainder, batch_fn=collate
        ),
    ]
    return grain.DataLoader(
        data_source=source,
        sampler=sampler,
        operations=operations,
        worker_count=worker_count,
        shard_options=shard_options,
        read_options=read_options,
    )


def steps_per_epoch(
    num_records: int,
    batch_size: int,
    *,
    shard_count: int = 1,
    drop_remainder: bool = True,
) -> int:
    """Batches one shard yields per epoch from ``make_loader(..., num_epochs=1)``.

    ``num_records`` is ``len(source)``; every shard reads the same number: a block of each
    global batch of ``batch_size * shard_count`` records, the last partial global batch
    dropped (``drop_remainder``) or filled up (see ``make_loader``).
    """
    whole, rest = divmod(num_records, batch_size * shard_count)
    return whole + (0 if drop_remainder or rest == 0 else 1)

"""A run's data: the checkpointable train iterator (seeded by the run's seed) and fresh passes
over the eval split, both Grain loaders over the task's TFDS splits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax

from lora_jax import data as data_lib
from lora_jax.config import Config
from lora_jax.config_rules import check_batch_size


@dataclass
class Data:
    train_iter: Any  # a checkpointable Grain DataLoaderIterator
    eval_batches: Callable[[], Any]  # a fresh pass over the eval split
    train_size: int  # examples in the train split
    # Examples in the eval split: with several processes a pass is filled up to whole global
    # batches (`lora_jax.data.shards`), and the gathered rows past this are repeats.
    eval_size: int


def make_data(cfg: Config, task: Any, tokenizer: Any, **extra: Any) -> Data:
    """The loaders of `cfg.data` for `task`; `extra` goes to every `make_loader` call (e.g. a
    generation task's prompt and special ids)."""
    d = cfg.data
    common = dict(
        tokenizer=tokenizer,
        task=task,
        max_len=d.max_len,
        # Processes put their batches side by side into one array, so every process's batch
        # must have the same length: one fixed length, whatever each batch's longest.
        pad=d.pad if jax.process_count() == 1 else "max_len",
        worker_count=d.worker_count,
        **extra,
    )
    train_source = data_lib.load_split(task, "train")
    check_batch_size(d.batch_size, len(train_source), task.name)
    train = data_lib.make_loader(
        train_source,
        batch_size=d.batch_size,
        seed=cfg.seed,
        shuffle=True,
        num_epochs=None,
        drop_remainder=True,
        **common,
    )
    split_name = task.splits.get(d.eval_split, d.eval_split)
    source = data_lib.load_split(task, split_name)
    if d.eval_limit and d.eval_limit < len(source):  # TFDS rejects slices past the end
        source = data_lib.load_split(task, f"{split_name}[:{d.eval_limit}]")
    tokenize = data_lib.tokenizer_map(
        tokenizer,
        task,
        d.max_len,
        prompt=extra.get("prompt"),
        eos_id=extra.get("eos_id"),
        chat=extra.get("chat"),
    )
    source = shortest_first(source, lambda record: len(tokenize.map(record)["input_ids"]))

    def eval_batches():
        return data_lib.make_loader(
            source,
            batch_size=d.eval_batch_size,
            seed=0,
            shuffle=False,
            num_epochs=1,
            drop_remainder=False,
            **common,
        )

    return Data(iter(train), eval_batches, len(train_source), len(source))


def shortest_first(source: Any, length: Callable[[dict], int]) -> list[dict]:
    """The records of `source` in order of `length` (their token count; stable). An
    evaluation's batches then pad each to its own bucket instead of to the longest row of a
    random mix (MR's validation split: 39k padded tokens sorted by tokens, 47k by characters,
    for 28k real ones). Every eval metric is a function of (prediction, label) pairs, so their
    order does not change it."""
    records = [source[i] for i in range(len(source))]
    return sorted(records, key=length)

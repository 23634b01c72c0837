"""``data=local``: a sweep on a researcher's own JSONL, CSV/TSV or Parquet files.

``local_task(cfg.data)`` reads and checks the files named by ``data.path`` (and
``data.validation_path`` / ``data.test_path``), prepares them once with TFDS (``builder``) and
returns the ``TaskSpec`` the rest of the code trains on, as it does on MR or E2E. Go through
``lora_jax.data.get_task(cfg.data)``.

Example:
    >>> task = get_task(cfg.data)  # data=local data.path=my_reviews.jsonl  # doctest: +SKIP
    >>> task.num_labels, task.label_names, task.metrics  # doctest: +SKIP
    (2, ('negative', 'positive'), ('accuracy', 'f1'))
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from lora_jax.config_rules import value_error
from lora_jax.data.local.builder import (
    NAME,
    content_key,
    ensure_prepared,
    features_of,
    file_stamps,
    load_source,
)
from lora_jax.data.local.examples import (
    KIND_ROLES,
    VALIDATION_PERCENT,
    LocalOptions,
    canonical,
    in_validation,
    label_names,
    read_examples,
)
from lora_jax.data.local.read import FORMATS, split_files
from lora_jax.data.task_spec import LOCAL_TASK, TaskSpec

GENERATION_METRICS = ("bleu", "rouge_l", "loss", "perplexity", "token_accuracy")


def options_of(data: Any) -> LocalOptions:
    """The files, kind and columns of a data config (``cfg.data``), checked to exist."""
    if not data.path:
        raise value_error(
            "data.path",
            data.path,
            f"a {', '.join(sorted(FORMATS))} file, or a folder of them",
            "data.path=my_reviews.jsonl",
        )
    splits = split_files(data.path, data.validation_path, data.test_path)
    columns = tuple(
        (role, getattr(data.columns, role))
        for role in KIND_ROLES[data.kind]
        if getattr(data.columns, role) is not None
    )
    files = tuple((s, tuple(map(str, fs))) for s, fs in sorted(splits.items()))
    return LocalOptions(files, data.kind, columns)


def local_task(data: Any, data_dir: str | os.PathLike | None = None) -> TaskSpec:
    """The TaskSpec of ``data=local`` (prepared first if needed; see the module doc)."""
    from lora_jax.data import assets

    options = options_of(data)
    return _task(options, file_stamps(options), Path(data_dir or assets.data_dir()))


@functools.cache  # a sweep checks every job: read and hash unchanged files once per process
def _task(options: LocalOptions, stamps: tuple, data_dir: Path) -> TaskSpec:
    prepared = ensure_prepared(options, data_dir)
    sizes, labels = features_of(prepared)
    text_keys = tuple(r for r in ("text", "text_pair") if r in options.roles)
    common = dict(
        name=LOCAL_TASK,
        tfds_name=NAME,
        tfds_config=str(prepared),
        test_split="test" if "test" in sizes else "",
    )
    if options.kind in ("classification", "regression"):
        regression = options.kind == "regression"
        metrics = (
            ("pearson", "spearman") if regression else ("accuracy", "f1")[: 1 + (len(labels) == 2)]
        )
        return TaskSpec(
            text_keys=text_keys,
            label_key="label",
            num_labels=1 if regression else len(labels),
            metrics=metrics,
            main_metric=metrics[0],
            label_names=labels,
            **common,
        )
    chat = options.kind == "chat"
    return TaskSpec(
        text_keys=("messages",) if chat else ("prompt",),
        label_key="messages" if chat else "completion",
        num_labels=0,
        metrics=GENERATION_METRICS,
        main_metric="bleu",
        kind="generation",
        prompt="" if chat else "{prompt}",
        select_metric="-loss",
        chat=chat,
        **common,
    )


__all__ = [
    "KIND_ROLES",
    "VALIDATION_PERCENT",
    "LocalOptions",
    "canonical",
    "content_key",
    "ensure_prepared",
    "in_validation",
    "label_names",
    "load_source",
    "local_task",
    "options_of",
    "read_examples",
]

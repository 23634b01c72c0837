"""The tasks: which TFDS dataset, which fields, which metrics.

A task is a frozen ``TaskSpec`` (``task_spec``); ``TASKS`` maps names to specs and
``get_task`` looks one up. ``load_split`` returns a random-access source (``tfds.data_source``) whose
elements are dicts of numpy values / bytes, ready for ``lora_jax.data.make_loader``.

Example:
    >>> task = get_task("mr")
    >>> task.num_labels, task.main_metric
    (2, 'accuracy')
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from lora_jax.data.task_spec import LOCAL_TASK, TaskSpec


def _glue(
    config: str,
    text_keys: tuple[str, ...],
    num_labels: int,
    metrics: tuple[str, ...],
    main: str,
    **kw: Any,
) -> TaskSpec:
    return TaskSpec(
        name=f"glue_{config}",
        tfds_name="glue",
        tfds_config=config,
        text_keys=text_keys,
        label_key="label",
        num_labels=num_labels,
        metrics=metrics,
        main_metric=main,
        test_has_labels=False,
        needs_network=True,
        **kw,
    )


_ALL: Sequence[TaskSpec] = (
    TaskSpec(
        name="mr",
        tfds_name="mr_polarity",
        tfds_config="binary",
        text_keys=("sentence",),
        label_key="label",
        num_labels=2,
        metrics=("accuracy",),
        main_metric="accuracy",
    ),
    TaskSpec(
        name="mr_rating",
        tfds_name="mr_polarity",
        tfds_config="rating",
        text_keys=("sentence",),
        label_key="rating",
        num_labels=1,
        metrics=("pearson", "spearman"),
        main_metric="pearson",
    ),
    # Ground truth (lora_jax.train.planted): match a teacher with a planted rank-k update on the MR
    # sentences; the labels are unused.
    TaskSpec(
        name="planted",
        tfds_name="mr_polarity",
        tfds_config="binary",
        text_keys=("sentence",),
        label_key="label",
        num_labels=2,
        metrics=("gap_closed", "mse"),
        main_metric="gap_closed",
        kind="planted",
    ),
    # Table-to-text (lora_jax.train.lm): meaning representation -> reference sentence. `e2e` is the
    # offline BIG-bench copy (`python -m lora_jax.data.assets e2e`), `e2e_gem` TFDS's gem/e2e_nlg.
    TaskSpec(
        name="e2e",
        tfds_name="e2e_nlg_bigbench",
        tfds_config="",
        text_keys=("meaning_representation",),
        label_key="target",
        num_labels=0,
        metrics=("bleu", "rouge_l", "loss", "perplexity", "token_accuracy"),
        main_metric="bleu",
        kind="generation",
        prompt="{meaning_representation} ||| ",
        select_metric="-loss",
    ),
    TaskSpec(
        name="e2e_gem",
        tfds_name="gem",
        tfds_config="e2e_nlg",
        text_keys=("meaning_representation",),
        label_key="target",
        num_labels=0,
        metrics=("bleu", "rouge_l", "loss", "perplexity", "token_accuracy"),
        main_metric="bleu",
        needs_network=True,
        kind="generation",
        prompt="{meaning_representation} ||| ",
        select_metric="-loss",
    ),
    _glue(
        "mnli",
        ("premise", "hypothesis"),
        3,
        ("accuracy",),
        "accuracy",
        validation_split="validation_matched",
        test_split="test_matched",
        extra_eval_splits=("validation_mismatched",),
    ),
    _glue("sst2", ("sentence",), 2, ("accuracy",), "accuracy"),
    _glue("mrpc", ("sentence1", "sentence2"), 2, ("accuracy", "f1"), "accuracy"),
    _glue("cola", ("sentence",), 2, ("matthews", "accuracy"), "matthews"),
    _glue("qnli", ("question", "sentence"), 2, ("accuracy",), "accuracy"),
    _glue("qqp", ("question1", "question2"), 2, ("accuracy", "f1"), "accuracy"),
    _glue("rte", ("sentence1", "sentence2"), 2, ("accuracy",), "accuracy"),
    _glue("stsb", ("sentence1", "sentence2"), 1, ("pearson", "spearman"), "pearson"),
)

TASKS: dict[str, TaskSpec] = {t.name: t for t in _ALL}
DEFAULT_TASK = "mr"


def get_task(name: str | TaskSpec | Any) -> TaskSpec:
    """Looks up a task by name (a TaskSpec passes through); a data config (``cfg.data``) gives
    its ``data.task``, or for ``data=local`` the spec of its files (``lora_jax.data.local``).

    Raises:
        ValueError: for an unknown name, listing the valid ones; bad local files.
    """
    if isinstance(name, TaskSpec):
        return name
    if not isinstance(name, str):  # a data config
        if name.task == LOCAL_TASK:
            from lora_jax.data.local import local_task

            return local_task(name)
        name = name.task
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(
            f"Unknown task {name!r}. Valid tasks: {', '.join(sorted(TASKS))}."
        ) from None


def load_split(
    task: str | TaskSpec,
    split: str,
    data_dir: str | os.PathLike | None = None,
) -> Any:
    """Returns the random-access source (``tfds.data_source``) of one split.

    Args:
        task: a task name or spec.
        split: a role (``train``, ``validation``, ``test``, or an extra eval split such
            as ``validation_mismatched``) or any TFDS split name/slice (``train[:10%]``).
        data_dir: TFDS data dir; default ``lora_jax.data.assets.data_dir()``.

    MR (and E2E, once its task file is fetched) is prepared on first use from the cached
    source file (offline). GLUE must be
    prepared once with ``lora_jax.data.glue.prepare_glue`` (needs a network).

    Raises:
        FileNotFoundError: the data is not there; the message names the command.
    """
    from lora_jax.data import assets
    from lora_jax.data.glue import load_tfds_source

    task = get_task(task)
    tfds_split = task.splits.get(split, split)
    if task.name == LOCAL_TASK:  # tfds_config is the prepared folder
        from lora_jax.data.local import load_source

        return load_source(task.tfds_config, tfds_split)
    if task.tfds_name == "mr_polarity":
        if data_dir is None:
            assets.ensure_mr(fetch=False)
            data_dir = assets.data_dir()
        return _mr_source(task.tfds_config, tfds_split, data_dir)
    if task.tfds_name == "e2e_nlg_bigbench":
        if data_dir is None:
            assets.ensure_e2e(fetch=False)
            data_dir = assets.data_dir()
        builder = assets.e2e_builder(data_dir)
        if not builder.is_prepared():
            raise FileNotFoundError(
                f"e2e_nlg_bigbench is not prepared in {data_dir}. Run {assets.E2E_FETCH_COMMAND}."
            )
        return builder.as_data_source(split=tfds_split)
    # GLUE, gem/e2e_nlg and any other array_record TFDS dataset.
    return load_tfds_source(task.tfds_full_name, tfds_split, data_dir=data_dir)


def _mr_source(config: str, split: str, data_dir: str | os.PathLike) -> Any:
    from lora_jax.data import assets
    from lora_jax.data.mr import MrPolarity

    builder = MrPolarity(config=config, data_dir=os.fspath(data_dir), file_format="array_record")
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"mr_polarity/{config} is not prepared in {data_dir}. Run {assets.FETCH_COMMAND}."
        )
    return builder.as_data_source(split=split)

"""The value rules of the typed config (`lora_jax.config`): the range or names each key allows.

The schema has checked the types and key names; `check_values` checks each value against one
table (`RULES`) and the few rules that tie keys together, and `value_error` is the one wording
of a bad value (value, what is allowed, a command that fixes it), also for the checks that
need the model, the data or the devices.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

# The compute dtypes `model.dtype` may pick (= lora_jax.lora.COMPUTE_DTYPES; not imported:
# this module loads no JAX).
DTYPES = ("float32", "bfloat16")
# `trainer.distributed`: when a run starts JAX's multi-process runtime (`lora_jax.train.distributed`).
DISTRIBUTED = ("auto", "on", "off")
# The optimizers `optim.name` may pick (`lora_jax.train.optim.OPTIMIZERS` builds them); one
# conf/optim/<name>.yaml each.
OPTIMIZERS = ("adamw", "sgd")
# `data.kind` of data=local: how the columns are read (`lora_jax.data.local`).
LOCAL_KINDS = ("classification", "regression", "completion", "chat")


def _at_least(low: float) -> Callable[[Any], bool]:
    return lambda v: v >= low


def _above(low: float) -> Callable[[Any], bool]:
    return lambda v: v > low


def _rate(v: Any) -> bool:
    return 0 <= v < 1


def _one_of(*names: str) -> Callable[[Any], bool]:
    return lambda v: v in names


def _or_null(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or test(v)


_INT, _POS_INT, _RATE = "an integer >= 0", "an integer >= 1", "a number in [0, 1)"
# (key, test, allowed, an example that fixes it). The schema already checked the types; these
# are the ranges and names. `rank`, `targets`, `scaling`, `lora.a_init`, `lora.layers` and
# `lora.rank_pattern` are checked with the model in `lora_jax.train.plan`.
RULES: tuple[tuple[str, Callable[[Any], bool], str, str], ...] = (
    ("alpha", _above(0), "a number > 0", "alpha=8"),
    ("lora.alpha", _above(0), "a number > 0", "alpha=8"),
    ("seed", _at_least(0), _INT, "seed=0"),
    (
        "model.pooling",
        _or_null(_one_of("cls", "mean")),
        "null (the model's own), cls, mean",
        "model.pooling=null",
    ),
    ("model.head_dropout", _rate, _RATE, "model.head_dropout=0.1"),
    ("model.dtype", _one_of(*DTYPES), ", ".join(DTYPES), "model.dtype=bfloat16"),
    ("data.max_len", _at_least(1), _POS_INT, "data.max_len=64"),
    ("data.batch_size", _at_least(1), _POS_INT, "data.batch_size=32"),
    ("data.eval_batch_size", _at_least(1), _POS_INT, "data.eval_batch_size=128"),
    (
        "data.pad",
        _one_of("max_len", "longest", "bucket"),
        "max_len, longest, bucket",
        "data.pad=bucket",
    ),
    (
        "data.eval_limit",
        _or_null(_at_least(1)),
        f"null (all) or {_POS_INT}",
        "data.eval_limit=null",
    ),
    ("data.worker_count", _at_least(0), _INT, "data.worker_count=0"),
    (
        "data.kind",
        _one_of(*LOCAL_KINDS),
        ", ".join(LOCAL_KINDS),
        "data.kind=classification",
    ),
    ("lora.dropout", _rate, _RATE, "lora.dropout=0.1"),
    (
        "lora.budget_rank",
        _or_null(_at_least(1)),
        f"null (no budget) or {_POS_INT}",
        "lora.budget_rank=8",
    ),
    ("optim.name", _one_of(*OPTIMIZERS), ", ".join(OPTIMIZERS), "optim=adamw"),
    ("optim.lr", _above(0), "a number > 0", "optim.lr=1e-3"),
    ("optim.weight_decay", _at_least(0), "a number >= 0", "optim.weight_decay=0.01"),
    ("optim.warmup_ratio", _rate, _RATE, "optim.warmup_ratio=0.06"),
    (
        "optim.warmup_steps",
        _or_null(_at_least(0)),
        f"null (use warmup_ratio) or {_INT}",
        "optim.warmup_steps=null",
    ),
    ("optim.b1", _rate, _RATE, "optim.b1=0.9"),
    ("optim.b2", _rate, _RATE, "optim.b2=0.999"),
    ("optim.momentum", _rate, _RATE, "optim.momentum=0.9"),
    (
        "optim.clip_norm",
        _or_null(_above(0)),
        "null (no clipping) or a number > 0",
        "optim.clip_norm=1.0",
    ),
    ("optim.label_smoothing", _rate, _RATE, "optim.label_smoothing=0.1"),
    ("trainer.steps", _at_least(1), _POS_INT, "trainer.steps=200"),
    (
        "trainer.epochs",
        _or_null(_at_least(1)),
        f"null (use steps) or {_POS_INT}",
        "trainer.epochs=null",
    ),
    ("trainer.eval_every", _at_least(1), _POS_INT, "trainer.eval_every=100"),
    ("trainer.log_every", _at_least(1), _POS_INT, "trainer.log_every=10"),
    ("trainer.checkpoint_every", _at_least(1), _POS_INT, "trainer.checkpoint_every=100"),
    ("trainer.spectrum_every", _at_least(0), f"0 (off) or {_POS_INT}", "trainer.spectrum_every=0"),
    # 0 would keep no checkpoint, which silently turns resume off.
    ("trainer.keep_checkpoints", _at_least(1), _POS_INT, "trainer.keep_checkpoints=2"),
    # That it divides the device count is checked with the devices (`train.parallel`).
    (
        "trainer.mesh.fsdp",
        _at_least(1),
        f"{_POS_INT} dividing the device count",
        "trainer.mesh.fsdp=1",
    ),
    (
        "trainer.distributed",
        _one_of(*DISTRIBUTED),
        "auto (start jax.distributed when there are several processes), on, off",
        "trainer.distributed=auto",
    ),
    (
        "trainer.num_processes",
        _or_null(_at_least(1)),
        f"null (the cluster's) or {_POS_INT}",
        "trainer.num_processes=2",
    ),
    (
        "trainer.process_id",
        _or_null(_at_least(0)),
        f"null (the cluster's) or {_INT} below trainer.num_processes",
        "trainer.process_id=0",
    ),
    (
        "trainer.distributed_timeout",
        _at_least(1),
        f"{_POS_INT} (seconds)",
        "trainer.distributed_timeout=300",
    ),
    ("logger.backend", _one_of("wandb", "none"), "wandb, none", "logger=none"),
    (
        "logger.mode",
        _or_null(_one_of("offline", "online", "disabled")),
        "null ($WANDB_MODE, else offline), offline, online, disabled",
        "logger.mode=offline",
    ),
    ("planted.k", _at_least(1), _POS_INT, "planted.k=2"),
    ("planted.strength", _above(0), "a number > 0", "planted.strength=0.5"),
    ("planted.seed", _at_least(0), _INT, "planted.seed=1234"),
    ("generate.num_beams", _at_least(1), f"{_POS_INT} (1 = greedy)", "generate.num_beams=1"),
    ("generate.length_penalty", _above(0), "a number > 0", "generate.length_penalty=1.0"),
    (
        "generate.no_repeat_ngram_size",
        _at_least(0),
        f"{_INT} (0 = off)",
        "generate.no_repeat_ngram_size=0",
    ),
    ("generate.max_new_tokens", _at_least(1), _POS_INT, "generate.max_new_tokens=64"),
    (
        "generate.eval_limit",
        _or_null(_at_least(1)),
        f"null (all) or {_POS_INT}",
        "generate.eval_limit=null",
    ),
    ("generate.batch_size", _at_least(1), _POS_INT, "generate.batch_size=8"),
)
LR_GROUPS = ("lora_a", "lora_b", "trainable")  # lora_jax.partition's optimizer groups


def value_error(key: str, value: Any, allowed: str, example: str) -> ValueError:
    """The one wording of a bad config value: the value, what is allowed, a command that fixes it."""
    return ValueError(f"{key}={value!r} is not valid; allowed: {allowed}. Use e.g. `{example}`.")


_ABSENT = object()  # a key the config lacks (a partial config: checked as far as it goes)
# Every key `check_values` reads (`config.check_config` takes them from the config to check).
CHECKED_KEYS = (
    *(rule[0] for rule in RULES),
    "rank",
    "lora.rank",
    "trainer.process_id",
    "trainer.num_processes",
    "lora.rank_pattern",
    "optim.lr_multipliers",
)


def check_values(values: Mapping[str, Any]) -> None:
    """Raise `ValueError` for the first config value out of range (`RULES`), or a `lora.rank`,
    `trainer.process_id`, `lora.rank_pattern` or `optim.lr_multipliers` value the other keys
    rule out. `values` maps dotted keys (`CHECKED_KEYS`) to plain values; absent keys are
    skipped. Reads no files."""
    for key, test, allowed, example in RULES:
        value = values.get(key, _ABSENT)
        if value is not _ABSENT and not test(value):
            raise value_error(key, value, allowed, example)
    rank, lora_rank = (values.get(k, _ABSENT) for k in ("rank", "lora.rank"))
    if _ABSENT not in (rank, lora_rank) and lora_rank != rank:
        # One source: the sweep axis `rank`; `lora.rank` interpolates it.
        raise value_error(
            "lora.rank", lora_rank, f"the top-level rank ({rank})", f"rank={lora_rank}"
        )
    pid, count = (values.get(f"trainer.{k}") for k in ("process_id", "num_processes"))
    if None not in (pid, count) and pid >= count:
        raise value_error(
            "trainer.process_id",
            pid,
            f"0..{count - 1} (trainer.num_processes={count})",
            "trainer.process_id=0",
        )
    for name, rank in (values.get("lora.rank_pattern") or {}).items():
        if rank < 0:  # the names are checked against `targets` in `train.plan`
            raise value_error(
                f"lora.rank_pattern.{name}", rank, _INT, "lora.rank_pattern={q:8,v:2}"
            )
    for name, factor in (values.get("optim.lr_multipliers") or {}).items():
        if name not in LR_GROUPS:
            allowed = ", ".join(LR_GROUPS)
            raise value_error(
                f"optim.lr_multipliers.{name}",
                factor,
                f"keys {allowed}",
                "optim.lr_multipliers={lora_b:16}",
            )
        if not factor > 0:
            raise value_error(
                f"optim.lr_multipliers.{name}",
                factor,
                "a number > 0",
                "optim.lr_multipliers={lora_b:16}",
            )


def check_batch_size(batch_size: int, train_size: int, task: str) -> None:
    """A training batch must fit the train split: the loader drops partial batches, so a larger
    one never yields a batch and the run would wait forever."""
    if batch_size > train_size:
        raise value_error(
            "data.batch_size",
            batch_size,
            f"1..{train_size} (the train split of data.task={task} has {train_size} examples)",
            f"data.batch_size={min(32, train_size)}",
        )

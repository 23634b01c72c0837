"""The one freezing mechanism: label every leaf, split the tree, optimize the trainable half.

`label_params` applies ordered rules, the first match wins, and checks that every parameter is
covered by exactly one rule and every given rule covers some parameter (big_vision's check):

- ``trainable``: the "/"-joined path matches one of the `trainable` regular expressions
  (e.g. ``"head/"`` for a new task head; ``.*`` under full fine-tuning);
- ``lora``: a `lora_a` or `lora_b` leaf of a `LoRADense`;
- ``frozen``: everything else (the pretrained base).

The train step differentiates only ``split(params, labels).trainable`` and closes over the
frozen half, so frozen weights get neither gradients nor optimizer state; `make_optimizer`
is built over the trainable half only.

Example:
    >>> labels = label_params(params, trainable=["head/"])
    >>> parts = split(params, labels)
    >>> tx = make_optimizer(split(labels, labels).trainable, optax.adamw, 1e-3)
    >>> opt_state = tx.init(parts.trainable)  # state only for lora + head leaves
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import optax
from flax import traverse_util

from lora_jax.lora import LORA_LEAVES

LABELS = ("lora", "trainable", "frozen")


class Partition(NamedTuple):
    """A parameter tree cut in two; `combine(*partition)` rebuilds it."""

    trainable: dict
    frozen: dict


def _flat(tree: Mapping[str, Any]) -> dict[str, Any]:
    return traverse_util.flatten_dict(tree, sep="/")


def _unflat(flat: Mapping[str, Any]) -> dict:
    return traverse_util.unflatten_dict(dict(flat), sep="/")


def freeze_rules(
    trainable: Iterable[str] = (), full_finetune: bool = False
) -> list[tuple[str, str]]:
    """The ordered (regular expression, label) rules of `label_params`; the first match wins
    and the last matches every path, so each leaf is covered by exactly one rule."""
    every = [(".*", "trainable")] if full_finetune else []
    lora = f"(^|/)({'|'.join(LORA_LEAVES)})$"
    return [(r, "trainable") for r in trainable] + every + [(lora, "lora"), (".*", "frozen")]


def label_params(
    params: Mapping[str, Any], trainable: Iterable[str] = (), *, full_finetune: bool = False
) -> dict:
    """A tree of labels (`lora`, `trainable`, `frozen`) with the structure of `params`.

    Args:
        params: the parameter tree (without the outer ``"params"`` collection key).
        trainable: regular expressions searched in each leaf's "/"-joined path; matches train.
        full_finetune: label every leaf `trainable` (the paper's full fine-tuning baseline).

    Raises:
        ValueError: a `trainable` rule matches no leaf; the message lists the nearest paths.
    """
    flat, given = _flat(params), list(trainable)
    rules = [(re.compile(rule), label) for rule, label in freeze_rules(given, full_finetune)]
    labels = {path: next(lb for rx, lb in rules if rx.search(path)) for path in flat}
    unused = [
        r
        for r, (rx, _) in zip(given, rules[: len(given)], strict=True)
        if not any(map(rx.search, flat))
    ]
    if unused:
        near = difflib.get_close_matches(unused[0], list(flat), n=5, cutoff=0.3)
        raise ValueError(
            f"trainable rule {unused[0]!r} matches no parameter; near matches: "
            f"{near or sorted(flat)[:5]}. Rules are regular expressions searched in paths like "
            f"{next(iter(flat))!r}."
        )
    return _unflat(labels)


def split(params: Mapping[str, Any], labels: Mapping[str, Any]) -> Partition:
    """Cut `params` into (trainable = `lora` + `trainable` leaves, frozen) nested dicts."""
    flat_labels = _flat(labels)
    trainable, frozen = {}, {}
    for path, leaf in _flat(params).items():
        (frozen if flat_labels[path] == "frozen" else trainable)[path] = leaf
    return Partition(_unflat(trainable), _unflat(frozen))


def combine(trainable: Mapping[str, Any], frozen: Mapping[str, Any]) -> dict:
    """Inverse of `split`: one tree with the leaves of both."""
    return _unflat({**_flat(frozen), **_flat(trainable)})


def count_params(tree: Mapping[str, Any]) -> int:
    """Number of scalars in a tree."""
    return sum(int(leaf.size) for leaf in _flat(tree).values())


def optimizer_groups(labels: Mapping[str, Any]) -> dict:
    """Refine labels into optimizer groups: `lora_a`, `lora_b`, `trainable`, `frozen`."""
    return _unflat(
        {
            path: path.rsplit("/", 1)[-1] if label == "lora" else label
            for path, label in _flat(labels).items()
        }
    )


def make_optimizer(
    labels: Mapping[str, Any],
    make_tx: Callable[..., optax.GradientTransformation],
    learning_rate: float | optax.Schedule,
    lr_multipliers: Mapping[str, float] | None = None,
    **tx_kwargs: Any,
) -> optax.GradientTransformation:
    """An optimizer over the trainable half, ``make_tx(learning_rate * multiplier, **tx_kwargs)``
    per group of `optimizer_groups(labels)` (`lora_a`, `lora_b`, `trainable`).

    Args:
        labels: the trainable half's labels, ``split(labels, labels).trainable``: frozen leaves
            are not differentiated, so they have no place in the optimizer.
        make_tx: e.g. `optax.adamw`.
        learning_rate: a float or an optax schedule.
        lr_multipliers: per-group factors, e.g. ``{"lora_b": 16.0}`` for LoRA+.

    Raises:
        ValueError: `labels` holds frozen leaves, or a multiplier names no group.
    """
    groups = optimizer_groups(labels)
    present = set(_flat(groups).values())
    if "frozen" in present:
        raise ValueError(
            "make_optimizer takes the trainable half's labels, `split(labels, labels).trainable`; "
            "frozen leaves get no gradient and no optimizer state."
        )
    multipliers = dict(lr_multipliers or {})
    unknown = set(multipliers) - {"lora_a", "lora_b", "trainable"}
    if unknown:
        raise ValueError(
            f"lr_multipliers keys {sorted(unknown)} are not groups; allowed: lora_a, lora_b, trainable."
        )

    def scaled(m: float) -> float | optax.Schedule:
        if m == 1.0:
            return learning_rate
        if callable(learning_rate):
            return lambda step: m * learning_rate(step)
        return m * learning_rate

    transforms = {g: make_tx(scaled(multipliers.get(g, 1.0)), **tx_kwargs) for g in sorted(present)}
    return optax.partition(transforms, groups)

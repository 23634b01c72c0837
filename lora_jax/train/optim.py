"""A run's optimizer from `cfg.optim`: the paper's schedule (linear warmup, linear decay to 0),
the optimizer named by `optim.name` over the trainable leaves only, optional global-norm clip."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import optax

from lora_jax.config import Config
from lora_jax.partition import make_optimizer


def lr_schedule(
    peak: float, steps: int, warmup_ratio: float, warmup_steps: int | None = None
) -> optax.Schedule:
    """Linear warmup to `peak` (over `warmup_steps`, else `warmup_ratio` of the steps), then
    linear decay to 0 (the paper's schedule)."""
    warmup = max(1, warmup_steps if warmup_steps is not None else round(warmup_ratio * steps))
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, peak, warmup),
            optax.linear_schedule(peak, 0.0, max(1, steps - warmup)),
        ],
        [warmup],
    )


def schedule(cfg: Config) -> optax.Schedule:
    """The learning rate of every step of a run."""
    o = cfg.optim
    return lr_schedule(o.lr, cfg.trainer.steps, o.warmup_ratio, o.warmup_steps)


def _sgd(learning_rate: Any, momentum: float, weight_decay: float) -> optax.GradientTransformation:
    tx = optax.sgd(learning_rate, momentum=momentum or None)
    return optax.chain(optax.add_decayed_weights(weight_decay), tx) if weight_decay else tx


# optim.name -> (optax constructor, its keyword arguments from cfg.optim). A new optimizer is one
# entry here, one name in `config_rules.OPTIMIZERS` and one conf/optim/<name>.yaml.
OPTIMIZERS: dict[str, tuple[Callable[..., optax.GradientTransformation], Callable]] = {
    "adamw": (optax.adamw, lambda o: {"b1": o.b1, "b2": o.b2, "weight_decay": o.weight_decay}),
    "sgd": (_sgd, lambda o: {"momentum": o.momentum, "weight_decay": o.weight_decay}),
}


def make_tx(cfg: Config, trainable_labels: Mapping[str, Any]) -> optax.GradientTransformation:
    """`optim.name` with `schedule(cfg)` over the leaves of `trainable_labels` (the trainable
    half's labels, `partition.split(labels, labels).trainable`), clipped if `optim.clip_norm`."""
    o = cfg.optim
    make, kwargs = OPTIMIZERS[o.name]
    tx = make_optimizer(trainable_labels, make, schedule(cfg), dict(o.lr_multipliers), **kwargs(o))
    return optax.chain(optax.clip_by_global_norm(o.clip_norm), tx) if o.clip_norm else tx

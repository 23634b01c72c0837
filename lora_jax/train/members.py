"""The member axis of a fused group: rank-padded trees stacked on a leading axis, the factors
that give each member its own rank and scale (`adapter_factors`), and the train step mapped over
the members (`fused_steps`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lora_jax.lora import LORA_LEAVES, lora_scale
from lora_jax.train.steps import (
    Objective,
    make_eval_step,
    make_train_step,
    step_compiler_options,
)

# The batch key that carries each member's adapter factors into the loss.
FACTORS = "__lora_factors__"


def stack_padded(trees: Sequence[Any]) -> Any:
    """Stack same-structured trees on a new leading axis, zero-padding every leaf to the
    elementwise largest shape (the members' trees differ only in their rank axes)."""

    def stack(*leaves):
        leaves = [np.asarray(x) for x in leaves]
        if leaves[0].ndim:
            shape = np.max([x.shape for x in leaves], axis=0)
            leaves = [
                np.pad(x, [(0, int(n) - s) for n, s in zip(shape, x.shape, strict=True)])
                for x in leaves
            ]
        return jnp.asarray(np.stack(leaves))

    return jax.tree.map(stack, *trees)


def unstack_member(stacked: Any, i: int, like: Any) -> Any:
    """Member `i` of a stacked tree, cut back to the shapes of `like` (its own tree), as host
    arrays (sliced in numpy: slicing device arrays would compile a program per shape)."""
    host = jax.device_get(stacked)
    cut = lambda x, t: np.asarray(x[i][tuple(slice(0, n) for n in np.shape(t))])  # noqa: E731
    return jax.tree.map(cut, host, like)


def adapter_factors(trainable: Mapping[str, Any], padded: Mapping[str, Any], lora: Any) -> dict:
    """Per adapter leaf of a member: A's columns scaled by mask * s_r / s_max, B's rows masked.

    The model is built at r_max (scale s_max) and the members' `lora_a` (in, r) and `lora_b`
    (r, out) are zero-padded to r_max; with these factors (mask_j = j < r) a member computes
    s_r * x @ A[:, :r] @ B[:r] as its own run does (only the float rounding order differs).
    The padded entries get exactly zero gradient, so AdamW (decoupled weight decay of a zero
    is zero) keeps them zero.
    """
    out = {}
    for key, leaf in trainable.items():
        if isinstance(leaf, Mapping):
            sub = adapter_factors(leaf, padded[key], lora)
            if sub:
                out[key] = sub
        elif key in LORA_LEAVES:
            axis = -1 if key == "lora_a" else 0  # lora_a (in, r), lora_b (r, out)
            rank, rank_max = leaf.shape[axis], padded[key].shape[axis]
            mask = (np.arange(rank_max) < rank).astype(np.float32)
            if key == "lora_a":
                ratio = lora_scale(rank, lora.alpha, lora.scaling) / lora_scale(
                    rank_max, lora.alpha, lora.scaling
                )
                out[key] = mask * np.float32(ratio)
            else:
                out[key] = mask[:, None]
    return out


def apply_factors(params: Mapping[str, Any], factors: Mapping[str, Any]) -> dict:
    """`params` with each leaf named in `factors` multiplied by its factor (broadcast)."""
    return {
        k: (apply_factors(v, factors[k]) if isinstance(v, Mapping) else v * factors[k])
        if k in factors
        else v
        for k, v in params.items()
    }


def default_chunk() -> int | None:
    """Members vmapped together by default: one at a time on CPU, where a bigger batch only
    thrashes the caches (measured on 2 cores: a fused step of 4 vmapped MiniLM members took
    10-20% longer than 4 separate steps, one looping over the 4 members 20% less), all at once
    on accelerators."""
    return 1 if jax.default_backend() == "cpu" else None


def over_members(f: Callable, in_axes: Sequence[int | None], chunk: int | None) -> Callable:
    """`f` mapped over the members (leading axis of the args whose `in_axes` is 0): vmapped in
    chunks of `chunk` members (None: all), the chunks one after another (`lax.map`)."""
    if chunk is None:
        return jax.vmap(f, in_axes=tuple(in_axes))
    mapped = [i for i, axis in enumerate(in_axes) if axis == 0]

    def g(*args):
        def one(xs):
            full = list(args)
            for i, x in zip(mapped, xs, strict=True):
                full[i] = x
            return f(*full)

        xs = tuple(args[i] for i in mapped)
        return jax.lax.map(one, xs) if chunk == 1 else jax.lax.map(one, xs, batch_size=chunk)

    return g


def fused_steps(
    objective: Objective, tx: Any, frozen_axis: int | None, chunk: int | None = None
) -> tuple[Callable, Callable]:
    """The jitted `(train_step, predict)` of a stacked group.

    `train_step(trainable, frozen, opt_state, batch, keys, step)` maps
    `steps.make_train_step` over the members (batch holds `FACTORS`; `keys` are the members'
    `step_rng`, folded with `step` as a separate run does). `predict(trainable, frozen,
    factors, batch)` gives (B, members, ...) predictions of every member on one shared batch.
    `chunk`: see `over_members`.
    """

    def loss_fn(params, batch, rng):
        batch = dict(batch)
        factors = batch.pop(FACTORS)
        return objective.loss_fn(apply_factors(params, factors), batch, rng)

    member_step = make_train_step(loss_fn, tx)
    member_predict = make_eval_step(objective.predict_fn)

    step_members = over_members(member_step, (0, frozen_axis, 0, 0, 0), chunk)
    predict_members = over_members(member_predict, (0, frozen_axis, None), chunk)

    def train_step(trainable, frozen, opt_state, batch, keys, step):
        rngs = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, step)
        return step_members(trainable, frozen, opt_state, batch, rngs)

    def predict(trainable, frozen, factors, batch):
        effective = jax.vmap(apply_factors)(trainable, factors)
        preds = predict_members(effective, frozen, batch)
        return jnp.moveaxis(preds, 0, 1)  # `evaluate` concatenates batches on axis 0

    options = step_compiler_options()
    return jax.jit(train_step, donate_argnums=(0, 2), compiler_options=options), jax.jit(predict)


def same_tree(a: Any, b: Any) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        np.shape(x) == np.shape(y) and np.array_equal(x, y) for x, y in zip(la, lb, strict=True)
    )

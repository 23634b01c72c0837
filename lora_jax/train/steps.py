"""Pure, jitted training and evaluation steps over (trainable, frozen) parameter halves, and
the `Objective` they run. Gradients are taken with respect to the trainable half only; the
frozen half is an argument the loss closes over, so it gets no gradient and no optimizer state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lora_jax.lora import LORA_LEAVES
from lora_jax.partition import combine
from lora_jax.train.threefry_cpu import unroll_threefry_on_cpu

# loss_fn(params, batch, rng) -> (scalar loss, dict of scalar aux metrics)
LossFn = Callable[[dict, dict, jax.Array], tuple[jax.Array, dict]]


class Objective(NamedTuple):
    """The task-specific pieces of a run.

    Attributes:
        loss_fn: (params, batch, rng) -> (scalar loss, aux dict); differentiated.
        predict_fn: (params, batch) -> per-example outputs (B, ...); jitted for eval.
        metrics: (predictions, labels) -> dict of floats, over a whole split.
        prepare: host-side batch transform applied before both steps (e.g. teacher targets).
        final: optional params -> dict of metrics measured once, at the end of a run (e.g.
            BLEU of decoded text); merged into the run's final metrics.
        merge_adapters: optional params -> the same with the adapters folded into their
            kernels (`lora.merge`); given, so is `merged_predict`.
        merged_predict: jitted (merged params, batch) -> what `predict_fn` gives: a model
            without adapters, so one compiled program serves every rank.
    """

    loss_fn: LossFn
    predict_fn: Callable
    metrics: Callable[[np.ndarray, np.ndarray], dict[str, float]]
    prepare: Callable[[dict], dict] = lambda batch: batch
    final: Callable[[Any], dict[str, float]] | None = None
    merge_adapters: Callable[[dict], dict] | None = None
    merged_predict: Callable[[dict, dict], jax.Array] | None = None


def _lora_norm(grads: dict) -> jax.Array:
    """The global norm of the LoRA factors' gradients (0 when nothing is a factor)."""
    leaves = [
        g
        for path, g in jax.tree_util.tree_leaves_with_path(grads)
        if getattr(path[-1], "key", None) in LORA_LEAVES
    ]
    return optax.global_norm(leaves)


def make_train_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    compiler_options: dict[str, Any] | None = None,
) -> Callable:
    """A jitted `train_step(trainable, frozen, opt_state, batch, rng)`.

    Returns `(trainable, opt_state, metrics)` with `loss`, `grad_norm` (every trainable leaf),
    `grad_norm_lora` (the adapters' factors alone: what rsLoRA's argument is about, without the
    head) and the loss's aux entries in `metrics`. The trainable params and optimizer state are
    donated. `compiler_options` go to `jax.jit` (a run on one device passes
    `step_compiler_options()`); leave them out for a step that another jit wraps (the fused
    engine, the data-parallel re-jit): XLA accepts them only at the top level.
    """
    unroll_threefry_on_cpu()  # dropout's bits fused into the step: the same bits, less memory

    def train_step(trainable, frozen, opt_state, batch, rng):
        def loss_of_trainable(t):
            return loss_fn(combine(t, frozen), batch, rng)

        (loss, aux), grads = jax.value_and_grad(loss_of_trainable, has_aux=True)(trainable)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        norms = {"grad_norm": optax.global_norm(grads), "grad_norm_lora": _lora_norm(grads)}
        return trainable, opt_state, {"loss": loss, **norms, **aux}

    return jax.jit(train_step, donate_argnums=(0, 2), compiler_options=compiler_options)


def step_compiler_options() -> dict[str, Any] | None:
    """XLA:CPU schedules a program for concurrency by default, which keeps more of the backward
    pass's residuals alive at once; its memory-minimising scheduler cut MiniLM's LoRA r=8 step
    scratch from 529 to 461 MB with the same results and no slower steps (benchmarks/step.py,
    README "Against PEFT"). Other backends keep their defaults."""
    if jax.default_backend() != "cpu":
        return None
    return {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}


def make_eval_step(predict_fn: Callable[[dict, dict], jax.Array]) -> Callable:
    """A jitted `eval_step(trainable, frozen, batch) -> predictions`."""

    def eval_step(trainable, frozen, batch):
        return predict_fn(combine(trainable, frozen), batch)

    return jax.jit(eval_step)


def tree_bytes(tree: Any) -> int:
    """Bytes held by the arrays of a pytree (e.g. an optimizer state)."""
    return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype"))


def classification_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy for (B, C) logits; mean squared error when C == 1 (regression)."""
    if logits.shape[-1] == 1:
        return jnp.mean((logits[..., 0] - labels.astype(logits.dtype)) ** 2)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

"""What a run optimises and how it is scored: the loss, the eval predictions and the metrics.

`classification` covers every labelled task (cross-entropy, or MSE for regression, scored
with the task's metrics). `lora_jax.planted.objective` is the ground-truth task whose
answer (the planted rank) is known; `lora_jax.lm.objective` the causal-LM one (generation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jax
import numpy as np

from lora_jax import data as data_lib
from lora_jax.steps import classification_loss


class Objective(NamedTuple):
    """The task-specific pieces of a run.

    Attributes:
        loss_fn: (params, batch, rng) -> (scalar loss, aux dict); differentiated.
        predict_fn: (params, batch) -> per-example outputs (B, ...); jitted for eval.
        metrics: (predictions, labels) -> dict of floats, over a whole split.
        prepare: host-side batch transform applied before both steps (e.g. teacher targets).
        final: optional params -> dict of metrics measured once, at the end of a run (e.g.
            BLEU of decoded text); merged into the run's final metrics.
    """

    loss_fn: Callable
    predict_fn: Callable
    metrics: Callable[[np.ndarray, np.ndarray], dict[str, float]]
    prepare: Callable[[dict], dict] = lambda batch: batch
    final: Callable[[Any], dict[str, float]] | None = None


def _logits(
    module: Any, params: dict, batch: dict, deterministic: bool, rng: jax.Array | None = None
):
    return module.apply(
        {"params": params},
        batch["input_ids"],
        batch["attention_mask"],
        batch["token_type_ids"],
        deterministic=deterministic,
        rngs={"dropout": rng} if rng is not None else None,
    )


def classification(module: Any, task: data_lib.TaskSpec) -> Objective:
    """Cross-entropy (MSE when `task.num_labels == 1`) on the head's logits."""

    def loss_fn(params, batch, rng):
        return classification_loss(_logits(module, params, batch, False, rng), batch["labels"]), {}

    def predict_fn(params, batch):
        logits = _logits(module, params, batch, True)
        return logits[..., 0] if task.num_labels == 1 else logits

    return Objective(
        loss_fn, predict_fn, lambda preds, labels: data_lib.compute_metrics(task, preds, labels)
    )


def evaluate(
    eval_step: Callable, objective: Objective, batches: Iterable[dict], *params: Any
) -> dict[str, float]:
    """`objective.metrics` over every batch of `batches` (`eval_step(*params, batch)`)."""
    preds, labels = [], []
    for batch in batches:
        batch = objective.prepare(batch)
        preds.append(np.asarray(eval_step(*params, batch)))
        labels.append(np.asarray(batch["labels"]))
    return objective.metrics(np.concatenate(preds), np.concatenate(labels))

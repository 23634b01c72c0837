"""What a run optimises, chosen by the task spec's `kind`: `OBJECTIVES[task.kind]` says which
parameters besides the adapters train, what the loaders add and how the `Objective` is built
(classification; causal-LM generation, `lm`; the planted-rank ground truth, `planted`)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from lora_jax import data as data_lib
from lora_jax import models
from lora_jax.lora import LORA_LEAVES, LoRAConfig, check_dtype, merge
from lora_jax.partition import combine
from lora_jax.train import distributed, lm, planted
from lora_jax.train.steps import Objective, classification_loss

if TYPE_CHECKING:
    from lora_jax.config import Config


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


def merge_adapters(cfg: Config, p: Any) -> Callable[[dict], dict] | None:
    """params -> the same with the adapters folded into their kernels (`lora.merge`), for a
    float32 run; None for a bfloat16 base, which would round most of dW away."""
    if check_dtype(cfg.model.dtype) != "float32":
        return None
    return functools.partial(merge, alpha=p.lora.alpha, scaling=p.lora.scaling)


def classification(
    module: Any, task: data_lib.TaskSpec, merge_adapters: Callable[[dict], dict] | None = None
) -> Objective:
    """Cross-entropy (MSE when `task.num_labels == 1`) on the head's logits; with `merge_adapters`
    (what `merge_adapters(cfg, p)` gives), evaluated on the merged model without adapters."""
    regression = task.num_labels == 1
    plain = module.clone(lora=LoRAConfig()) if merge_adapters is not None else None

    def loss_fn(params, batch, rng):
        return classification_loss(_logits(module, params, batch, False, rng), batch["labels"]), {}

    return Objective(
        loss_fn,
        functools.partial(_predict, module, regression),
        lambda preds, labels: data_lib.compute_metrics(task, preds, labels),
        merge_adapters=merge_adapters,
        # The same model without adapters: every rank of a sweep evaluates with one program.
        merged_predict=None
        if plain is None
        else functools.partial(_predict_jit, plain, regression),
    )


def _predict(module: Any, regression: bool, params: dict, batch: dict) -> jax.Array:
    logits = _logits(module, params, batch, True)
    return logits[..., 0] if regression else logits


# Keyed by the module's value, not its identity: runs with equal models share the compiled
# programs (a sweep's basic launcher runs its jobs in one process).
_predict_jit = jax.jit(_predict, static_argnums=(0, 1))


def evaluate(
    eval_step: Callable,
    objective: Objective,
    batches: Iterable[dict],
    *params: Any,
    size: int | None = None,
) -> dict[str, float]:
    """`objective.metrics` over every batch of `batches` (`eval_step(*params, batch)`), on the
    first `size` rows (None: all). With several processes each reads its block of every
    global batch; the predictions and labels of all are gathered in order, so the metric is
    the one-process one (the rows past `size` fill the last global batch)."""
    preds, labels = [], []
    for batch in batches:
        batch = objective.prepare(batch)
        preds.append(distributed.gather(eval_step(*params, batch)))
        labels.append(distributed.gather(batch["labels"]))
    return objective.metrics(np.concatenate(preds)[:size], np.concatenate(labels)[:size])


def _generation(cfg: Config, p: Any, pre: Any, parts: Any, data: Any) -> Objective:
    g = cfg.generate
    eos, pad = lm.special_ids(pre)
    return lm.objective(
        pre.module,
        p.task,
        tokenizer=pre.tokenizer,
        eval_source=data_lib.load_split(p.task, cfg.data.eval_split),
        prompt=cfg.data.prompt or p.task.prompt,
        eos_id=eos,
        pad_id=pad,
        label_smoothing=cfg.optim.label_smoothing,
        decode={
            "num_beams": g.num_beams,
            "max_new_tokens": g.max_new_tokens,
            "length_penalty": g.length_penalty,
            "no_repeat_ngram_size": g.no_repeat_ngram_size,
            "batch_size": g.batch_size,
        },
        eval_limit=g.eval_limit,
        out_dir=cfg.workdir if distributed.is_primary() else None,  # process 0 writes
        chat=lm.chat_of(cfg),
        merge_adapters=merge_adapters(cfg, p),
    )


def _planted(cfg: Config, p: Any, pre: Any, parts: Any, data: Any) -> Objective:
    c = cfg.planted
    # Plant into the pretrained weights themselves, not into the frozen half: under full
    # fine-tuning nothing is frozen, and the teacher must be the same whatever trains. Copied:
    # full fine-tuning's train step donates (deletes) the arrays it started from.
    base = {
        path: jnp.array(leaf, copy=True)
        for path, leaf in traverse_util.flatten_dict(pre.params).items()
        if path[-1] not in LORA_LEAVES
    }
    teacher, factors = planted.plant(
        traverse_util.unflatten_dict(base), c.k, c.targets, c.layers, c.strength, c.seed
    )
    if distributed.is_primary():
        planted.save_factors(cfg.workdir, factors)
    return planted.objective(
        pre.config, p.lora, teacher, models.BertEncoder, combine(*parts), data.eval_batches()
    )


class ObjectiveSpec(NamedTuple):
    """How a kind of task trains.

    Attributes:
        build: (cfg, plan, loaded model, Partition, Data) -> the run's `Objective`.
        head_rules: loaded model -> the `label_params` rules of the non-adapter leaves that train.
        loader_kwargs: (cfg, loaded model) -> extra `make_loader` arguments.
        fusable: whether runs of this kind may join a fused group (`train.fused`).
    """

    build: Callable[..., Objective]
    head_rules: Callable[[Any], tuple[str, ...]] = lambda pre: pre.head_rules
    loader_kwargs: Callable[[Config, Any], dict] = lambda cfg, pre: {}
    fusable: bool = False


OBJECTIVES: dict[str, ObjectiveSpec] = {
    "classification": ObjectiveSpec(
        lambda cfg, p, pre, parts, data: classification(pre.module, p.task, merge_adapters(cfg, p)),
        fusable=True,
    ),
    "generation": ObjectiveSpec(
        _generation,
        loader_kwargs=lambda cfg, pre: lm.loader_kwargs(pre, cfg.data.prompt, lm.chat_of(cfg)),
    ),
    # The student matches the teacher's hidden states: the loss never reaches the head.
    "planted": ObjectiveSpec(_planted, head_rules=lambda pre: ()),
}


def objective_spec(task: data_lib.TaskSpec) -> ObjectiveSpec:
    """The `ObjectiveSpec` that `task.kind` names."""
    if task.kind not in OBJECTIVES:
        raise ValueError(
            f"task {task.name!r} has kind={task.kind!r}; allowed: {', '.join(OBJECTIVES)}."
        )
    return OBJECTIVES[task.kind]


def make_objective(cfg: Config, p: Any, pre: Any, parts: Any, data: Any) -> Objective:
    """The `Objective` of a run, built as its task's kind says."""
    return objective_spec(p.task).build(cfg, p, pre, parts, data)

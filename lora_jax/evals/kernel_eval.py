"""A finished run's model evaluated with its adapted kernels replaced: W_0 + any update.

`load_run_model(run)` rebuilds the run's model as `prepare_run` did (same init key, so a
random-init base is the run's own) and puts back its trained state, the last checkpoint's
trainable leaves: the head, and for full fine-tuning every leaf. It knows W_0 and the run's
update dW of every adapted matrix (LoRA: scale * A @ B; full fine-tuning: W_ft - W_0). Then

- `evaluate(kernels)`: the run's own task metric on its eval split, with {(layer, target): W}
  in place of the adapted kernels and LoRA switched off (lora_b = 0), everything else as the
  run left it; `evaluate(w0 + dw)` is the run itself;
- encoders: `embed(kernels)`, mean-pooled last hidden states of held-out sentences (the
  forgetting measure, `analysis.truncation.similarity_kept`); `embed_pretrained()` the same
  under the untouched pretrained model;
- decoders (generation tasks): `lm_loss(kernels)`, the language-model loss of the held-out
  sentences (each scored as `sentence + EOS`, every token after the first, by the run's own
  LM objective, `train.lm`); `lm_loss_pretrained()` the same under the pretrained model.

A generation task's metric here is its eval `loss` (lower is better), not BLEU: decoding at
every point of a curve would cost far more than one forward pass. The kernels are jit
arguments and the eval batches are prepared once, so a truncation curve compiles the model
once per batch shape and then costs one forward pass over the eval split per point. A
bfloat16 run (`model.dtype`) is rebuilt in bf16 as it trained, so it is reproduced up to bf16
rounding of W_0 + dW, not bit for bit.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from lora_jax import data as data_lib
from lora_jax import models
from lora_jax.config import config_from_dict
from lora_jax.lora import delta_w, layer_index
from lora_jax.partition import combine, label_params, split
from lora_jax.runs.record import RunRecord
from lora_jax.train import lm
from lora_jax.train.loaders import make_data
from lora_jax.train.objectives import make_objective, objective_spec
from lora_jax.train.precision import cast_frozen
from lora_jax.train.setup import initial_model, plan
from lora_jax.weights.base_kernels import layer_kernels

Key = tuple[int, str]
# Held-out text for forgetting: MR's test split, which no run trains or selects on (runs train
# on `train` and evaluate on `validation`); available offline wherever MR is prepared.
FORGET_TASK, FORGET_SPLIT, FORGET_SENTENCES = "mr", "test", 256
ENCODER_KINDS = ("classification", "planted")
DECODER_KINDS = ("generation",)


@dataclass
class RunModel:
    """A finished run's model with swappable kernels (see the module docstring).

    Attributes:
        name: the run's folder name. main_metric: the metric `evaluate` is read by (the
            task's main one; a generation task's eval `loss`). lower_is_better: of it.
        decoder: a causal LM (forgetting by `lm_loss`) rather than an encoder (by `embed`).
        full_rank: the largest rank of its updates (LoRA: r; full fine-tuning: min(in, out)).
        eval_examples: how many eval examples `evaluate` scores.
        w0, dw: {(layer, target): (in, out)} of every adapted matrix.
        params: the run's trained parameters with LoRA switched off.
    """

    name: str
    main_metric: str
    lower_is_better: bool
    decoder: bool
    full_rank: int
    eval_examples: int
    w0: dict[Key, np.ndarray]
    dw: dict[Key, np.ndarray]
    params: dict
    pretrained: dict
    _head: dict[tuple[str, ...], Any]
    _paths: dict[Key, tuple[str, ...]]
    _objective: Any
    _batches: list[dict]
    _forget_batches: list[dict]
    _predict: Any
    _hidden: Any

    def with_kernels(self, kernels: Mapping[Key, np.ndarray]) -> dict:
        """The run's parameters with `kernels` in place of the adapted ones it names."""
        unknown = set(kernels) - set(self._paths)
        if unknown:
            raise KeyError(f"{self.name}: no adapted matrix {sorted(unknown)}.")
        flat = traverse_util.flatten_dict(self.params)
        # In the dtype the run held that kernel in (bfloat16 for a frozen one under bf16).
        flat.update(
            {self._paths[k]: jnp.asarray(w, flat[self._paths[k]].dtype) for k, w in kernels.items()}
        )
        return traverse_util.unflatten_dict(flat)

    def evaluate(self, kernels: Mapping[Key, np.ndarray] | None = None) -> dict[str, float]:
        """The task metrics with `kernels` (default: W_0 + dW, the run itself)."""
        return self._metrics(self.with_kernels(self.merged() if kernels is None else kernels))

    def evaluate_pretrained(self) -> dict[str, float]:
        """The task metrics of the pretrained model with the run's head, nothing else of it."""
        flat = traverse_util.flatten_dict(self.pretrained)
        return self._metrics(traverse_util.unflatten_dict({**flat, **self._head}))

    def _metrics(self, params: dict) -> dict[str, float]:
        preds = [np.asarray(self._predict(params, b)) for b in self._batches]
        labels = [np.asarray(b["labels"]) for b in self._batches]
        n = self.eval_examples  # a pass may be filled up to whole batches: not scored
        return self._objective.metrics(np.concatenate(preds)[:n], np.concatenate(labels)[:n])

    def embed(self, kernels: Mapping[Key, np.ndarray] | None = None) -> np.ndarray:
        """(n, d) mean-pooled last hidden states of the held-out sentences (encoders)."""
        return self._pool(self.with_kernels(self.merged() if kernels is None else kernels))

    def embed_pretrained(self) -> np.ndarray:
        """The same under the pretrained model (no leaf of the run)."""
        return self._pool(self.pretrained)

    def lm_loss(self, kernels: Mapping[Key, np.ndarray] | None = None) -> dict[str, float]:
        """Mean next-token cross-entropy (`loss`), `perplexity` and `token_accuracy` of the
        held-out sentences (decoders), with `kernels` (default: W_0 + dW, the run itself)."""
        return self._text_loss(self.with_kernels(self.merged() if kernels is None else kernels))

    def lm_loss_pretrained(self) -> dict[str, float]:
        """The same under the pretrained model (no leaf of the run)."""
        return self._text_loss(self.pretrained)

    def _text_loss(self, params: dict) -> dict[str, float]:
        if not self.decoder:
            raise TypeError(f"{self.name}: an encoder has no LM loss; use `embed`.")
        # The LM objective's own per-row (NLL sum, tokens, correct): a token-weighted mean.
        preds = [np.asarray(self._predict(params, b)) for b in self._forget_batches]
        return self._objective.metrics(np.concatenate(preds), None)

    def merged(self) -> dict[Key, np.ndarray]:
        """{key: W_0 + dW}."""
        return {k: self.w0[k] + self.dw[k] for k in self.dw}

    def _pool(self, params: dict) -> np.ndarray:
        if self.decoder:
            raise TypeError(f"{self.name}: a decoder is measured by `lm_loss`, not `embed`.")
        out = []
        for b in self._forget_batches:
            h = np.asarray(self._hidden(params["encoder"], b), np.float64)
            mask = b["attention_mask"][..., None].astype(np.float64)
            out.append((h * mask).sum(1) / mask.sum(1))
        return np.concatenate(out)


def _trained_leaves(run: RunRecord) -> dict[tuple[str, ...], Any]:
    """The trainable leaves of the run's last checkpoint (the final state: the loop always
    saves at the last step), flattened."""
    steps = int(run.metrics["steps"])
    state = run.folder.checkpoint_state(steps)
    if not state.is_dir():
        raise FileNotFoundError(
            f"{run.run_dir} has no checkpoint of its last step {steps} ({state}); the model "
            "evaluations need it: rerun the run with trainer.keep_checkpoints >= 1."
        )
    restored = ocp.StandardCheckpointer().restore(state.absolute())
    return traverse_util.flatten_dict(restored["trainable"])


def load_run_model(
    run: RunRecord, eval_limit: int | None = None, forget_sentences: int = FORGET_SENTENCES
) -> RunModel:
    """The run's model with swappable kernels (module docstring).

    Args:
        run: a finished LoRA or full fine-tuning run (encoder or generation task).
        eval_limit: evaluate on at most this many eval examples (default: the run's own).
        forget_sentences: held-out sentences for `embed` / `lm_loss` (MR's test split, from
            the start).

    Raises:
        NotImplementedError: a task of another kind. FileNotFoundError: no final checkpoint.
    """
    raw = copy.deepcopy(run.config)
    if eval_limit:
        own = raw["data"].get("eval_limit")
        raw["data"]["eval_limit"] = min(eval_limit, own) if own else eval_limit
    # The planted objective writes its factors into the workdir: never into the run folder.
    scratch = tempfile.TemporaryDirectory()
    raw["workdir"] = scratch.name
    typed = config_from_dict(raw)
    p = plan(typed)
    if p.task.kind not in ENCODER_KINDS + DECODER_KINDS:
        raise NotImplementedError(
            f"{run.name}: task {p.task.name!r} is of kind {p.task.kind!r}; the model "
            f"evaluations support {', '.join(ENCODER_KINDS + DECODER_KINDS)} tasks only."
        )
    decoder = p.task.kind in DECODER_KINDS
    pre = initial_model(typed, p)
    spec = objective_spec(p.task)
    labels = label_params(pre.params, trainable=spec.head_rules(pre), full_finetune=p.full_finetune)
    parts = split(pre.params, labels)
    # As the run held it: model.dtype=bfloat16 keeps the frozen half in bf16.
    flat = traverse_util.flatten_dict(combine(*cast_frozen(parts, typed.model.dtype)))
    trained = _trained_leaves(run)
    stray = set(trained) - set(flat)
    if stray:
        raise ValueError(f"{run.run_dir}: checkpoint leaves {sorted(stray)[:3]} fit no model leaf.")
    w0_all = layer_kernels(pre.params)  # every matrix a LoRA could adapt, by (layer, target)
    paths = {(layer_index(q), q[-2]): q for q in flat if q[-1] == "kernel"}
    paths = {k: paths[k] for k in w0_all}
    if p.full_finetune:
        dw = {k: np.asarray(trained[paths[k]], np.float32) - w for k, w in w0_all.items()}
        full_rank = max(min(w.shape) for w in dw.values())
    else:
        dw, full_rank = {}, 0
        for k, path in paths.items():
            a = trained.get((*path[:-1], "lora_a"))
            if a is not None:
                b = trained[(*path[:-1], "lora_b")]
                dw[k] = np.asarray(delta_w(a, b, p.lora.alpha, p.lora.scaling), np.float32)
                full_rank = max(full_rank, a.shape[1])
    w0 = {k: w0_all[k] for k in dw}
    flat.update(trained)
    # LoRA off: its effect is in the kernels we pass (W_0 + dW or a truncation of it).
    flat.update({q: jnp.zeros_like(v) for q, v in flat.items() if q[-1] == "lora_b"})
    params = traverse_util.unflatten_dict(flat)
    base = traverse_util.flatten_dict(pre.params)
    base.update({q: jnp.zeros_like(v) for q, v in base.items() if q[-1] == "lora_b"})
    # An encoder's head is new (the base model has none); a decoder's LM head is pretrained,
    # so its base is the pretrained model itself.
    head = {} if decoder else {q: v for q, v in trained.items() if q[0] != "encoder"}

    data = make_data(typed, p.task, pre.tokenizer, **spec.loader_kwargs(typed, pre))
    objective = make_objective(typed, p, pre, parts, data)
    scratch.cleanup()
    batches = [objective.prepare(b) for b in data.eval_batches()]
    forget_task = data_lib.get_task(FORGET_TASK)
    source = data_lib.load_split(forget_task, f"{FORGET_SPLIT}[:{forget_sentences}]")
    text_kwargs = {}
    if decoder:
        # Each sentence as the target of an empty prompt: `sentence + EOS`, right-padded,
        # every token after the first scored (the loss mask), as the task's own sequences are.
        forget_task = dataclasses.replace(
            forget_task, kind="generation", label_key=forget_task.text_keys[0], prompt=""
        )
        eos, pad = lm.special_ids(pre)
        text_kwargs = {"eos_id": eos, "pad_id": pad}
    forget_batches = list(
        data_lib.make_loader(
            source,
            pre.tokenizer,
            forget_task,
            batch_size=typed.data.eval_batch_size,
            max_len=typed.data.max_len,
            shuffle=False,
            drop_remainder=False,
            pad=typed.data.pad,
            **text_kwargs,
        )
    )
    encoder = None if decoder else models.BertEncoder(pre.config, p.lora)

    def hidden(encoder_params, batch):
        return encoder.apply(
            {"params": encoder_params},
            batch["input_ids"],
            batch["attention_mask"],
            batch["token_type_ids"],
            deterministic=True,
        )

    return RunModel(
        name=run.name,
        # A generation task's main metric (BLEU) needs decoding: its eval loss instead.
        main_metric="loss" if decoder else p.task.main_metric,
        lower_is_better=decoder,
        decoder=decoder,
        full_rank=full_rank,
        eval_examples=data.eval_size,
        w0=w0,
        dw=dw,
        params=params,
        pretrained=traverse_util.unflatten_dict(base),
        _head=head,
        _paths={k: paths[k] for k in dw},
        _objective=objective,
        _batches=batches,
        _forget_batches=forget_batches,
        _predict=jax.jit(objective.predict_fn),
        _hidden=None if decoder else jax.jit(hidden),
    )


__all__ = ["FORGET_SENTENCES", "RunModel", "load_run_model"]

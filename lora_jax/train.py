"""One LoRA run: `run(cfg, workdir)` trains, evaluates, checkpoints, exports and logs.

The run folder ends up with `config.yaml`, `history.jsonl`, `metrics.json`, `checkpoints/`
(Orbax: adapters, head, optimizer, step, data position) and `adapter/` (PEFT layout). A run
whose `metrics.json` says `complete` is skipped; one with checkpoints resumes from the last.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
from omegaconf import DictConfig, OmegaConf

from lora_jax import data as data_lib
from lora_jax import lm, models, parallel, planted
from lora_jax.adapter_io import export_adapter
from lora_jax.analysis.adapters import adapter_spectra
from lora_jax.checkpoint import Checkpointer
from lora_jax.config import to_dict
from lora_jax.lora import LoRAConfig, adapters
from lora_jax.objectives import Objective, classification, evaluate
from lora_jax.partition import combine, count_params, label_params, make_optimizer, split
from lora_jax.reporting import print_summary, progress_bar
from lora_jax.steps import make_eval_step, make_train_step, tree_bytes
from lora_jax.tracking import Tracker


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


@dataclass(frozen=True)
class Plan:
    """Everything checked before any long work: bad input fails here, in seconds."""

    lora: LoRAConfig
    task: Any
    full_finetune: bool


def plan(cfg: DictConfig) -> Plan:
    """Validate the config's names and values (rank, targets, model, task) without training."""
    section = cfg.lora
    lora = LoRAConfig(
        rank=section.rank,
        alpha=section.alpha,
        scaling=section.scaling,
        a_init=section.a_init,
        dropout=section.dropout,
        targets=section.targets,
        layers=tuple(section.layers) if section.layers is not None else None,
        rank_pattern=dict(section.rank_pattern),
    )
    models.check_lora(cfg.model.name, lora)
    task = data_lib.get_task(cfg.data.task)
    if task.is_generation != models.is_decoder(cfg.model.name):
        allowed = models.DECODER_MODELS if task.is_generation else models.MODELS
        raise ValueError(
            f"data.task={task.name!r} ({task.kind}) does not fit model={cfg.model.name!r}; "
            f"allowed models: {', '.join(allowed)}."
        )
    for key in ("steps", "eval_every", "log_every", "checkpoint_every"):
        if cfg.trainer[key] <= 0:
            raise ValueError(
                f"trainer.{key}={cfg.trainer[key]} is not valid; allowed: a positive integer."
            )
    return Plan(lora=lora, task=task, full_finetune=section.full_finetune)


def lr_schedule(peak: float, steps: int, warmup_ratio: float) -> optax.Schedule:
    """Linear warmup to `peak`, then linear decay to 0 (the paper's schedule)."""
    warmup = max(1, round(warmup_ratio * steps))
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, peak, warmup),
            optax.linear_schedule(peak, 0.0, max(1, steps - warmup)),
        ],
        [warmup],
    )


def _optimizer(cfg: DictConfig, labels: dict) -> optax.GradientTransformation:
    o = cfg.optim
    schedule = lr_schedule(o.lr, cfg.trainer.steps, o.warmup_ratio)
    tx = make_optimizer(
        labels,
        optax.adamw,
        schedule,
        dict(o.lr_multipliers),
        b1=o.b1,
        b2=o.b2,
        weight_decay=o.weight_decay,
    )
    return optax.chain(optax.clip_by_global_norm(o.clip_norm), tx) if o.clip_norm else tx


def enable_compilation_cache(path: str | None = None) -> str:
    """Turn on JAX's persistent compilation cache, so a sweep's later jobs (other seeds, reruns,
    resumed runs) load compiled steps instead of compiling them again.

    The folder is `path`, else `$LORA_JAX_COMPILE_CACHE`, else `~/.cache/lora_jax/jax_compile`.
    """
    path = (
        path
        or os.environ.get("LORA_JAX_COMPILE_CACHE")
        or str(Path.home() / ".cache/lora_jax/jax_compile")
    )
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update(
        "jax_persistent_cache_min_compile_time_secs", 0.0
    )  # a threshold makes hits depend on timing noise
    return path


def model_rng(seed: int) -> jax.Array:
    """The key that initialises a run's LoRA, head (and a random tiny base model)."""
    return jax.random.fold_in(jax.random.key(seed), 0)


@dataclass
class _Data:
    train_iter: Any  # a checkpointable Grain DataLoaderIterator
    eval_batches: Callable[[], Any]  # a fresh pass over the eval split


def _data(cfg: DictConfig, task: Any, tokenizer: Any, **extra: Any) -> _Data:
    d = cfg.data
    common = dict(
        tokenizer=tokenizer,
        task=task,
        max_len=d.max_len,
        pad=d.pad,
        worker_count=d.worker_count,
        **extra,
    )
    train = data_lib.make_loader(
        data_lib.load_split(task, "train"),
        batch_size=d.batch_size,
        seed=cfg.seed,
        shuffle=True,
        num_epochs=None,
        drop_remainder=True,
        **common,
    )
    split_name = task.splits.get(d.eval_split, d.eval_split)
    source = data_lib.load_split(task, split_name)
    if d.eval_limit and d.eval_limit < len(source):  # TFDS rejects slices past the end
        source = data_lib.load_split(task, f"{split_name}[:{d.eval_limit}]")

    def eval_batches():
        return data_lib.make_loader(
            source,
            batch_size=d.eval_batch_size,
            seed=0,
            shuffle=False,
            num_epochs=1,
            drop_remainder=False,
            **common,
        )

    return _Data(iter(train), eval_batches)


def _objective(cfg: DictConfig, p: Plan, pre: Any, parts: Any, data: _Data) -> Objective:
    if p.task.is_generation:
        return lm.objective_from_config(cfg, p.task, pre)
    if p.task.name != "planted":
        return classification(pre.module, p.task)
    c = cfg.planted
    teacher, factors = planted.plant(parts.frozen, c.k, c.targets, c.layers, c.strength, c.seed)
    planted.save_factors(cfg.workdir, factors)
    return planted.objective(
        pre.config, p.lora, teacher, models.BertEncoder, combine(*parts), data.eval_batches()
    )


def run(cfg: DictConfig, workdir: str | Path) -> dict[str, Any]:
    """Train one run into `workdir` and return its metrics (see the module docstring)."""
    workdir = Path(workdir)
    metrics_file = workdir / "metrics.json"
    if metrics_file.exists() and json.loads(metrics_file.read_text()).get("status") == "complete":
        print(f"[lora_jax] {workdir} is complete; skipping (delete metrics.json to rerun).")
        return json.loads(metrics_file.read_text())
    p = plan(cfg)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    start = time.perf_counter()

    pre = models.load_model(
        cfg.model.name,
        p.lora,
        num_labels=p.task.num_labels,
        pooling=cfg.model.pooling,
        head_dropout=cfg.model.head_dropout,
        rng=model_rng(cfg.seed),
    )
    # The planted task trains adapters only: its loss never reaches the head.
    head_rules = () if p.task.name == "planted" else pre.head_rules
    labels = label_params(pre.params, trainable=head_rules, full_finetune=p.full_finetune)
    parts = split(pre.params, labels)
    tx = _optimizer(cfg, split(labels, labels).trainable)
    opt_state = tx.init(parts.trainable)
    data = _data(
        cfg, p.task, pre.tokenizer, **(lm.loader_kwargs(cfg, pre) if p.task.is_generation else {})
    )
    objective = _objective(cfg, p, pre, parts, data)
    sizes = {
        "trainable_params": count_params(parts.trainable),
        "total_params": count_params(parts.trainable) + count_params(parts.frozen),
        "lora_params": count_params(adapters(parts.trainable)),
        "optimizer_state_bytes": tree_bytes(opt_state),
    }
    tracker = Tracker(
        workdir,
        cfg.logger.backend,
        config={**to_dict(cfg), **sizes},
        name=workdir.name,
        group=cfg.logger.get("group") or workdir.parent.name,
        project=cfg.logger.get("project", "lora_jax"),
        entity=cfg.logger.get("entity"),
        mode=cfg.logger.get("mode"),
        tags=list(cfg.logger.get("tags") or []),
    )
    with Checkpointer(workdir / "checkpoints", keep=cfg.trainer.keep_checkpoints) as ckpt, tracker:
        trainable, final, best, steps = _train(
            cfg, p, objective, tx, parts, opt_state, data, ckpt, tracker
        )
        if objective.final is not None:  # measured once, at the end (e.g. BLEU of decoded text)
            once = objective.final(combine(trainable, parts.frozen))
            tracker.log({f"eval/{k}": v for k, v in once.items()}, steps)
            final = {**final, **once}
            # The best step's own values are known only if it is the last step.
            best = {**best, **(once if best["step"] == steps else dict.fromkeys(once))}
        export_adapter(workdir / "adapter", trainable, p.lora, pre)
        result = {
            "status": "complete",
            "final": final,
            "best": best,
            **sizes,
            "steps": steps,
            "devices": jax.device_count(),
            "wall_time_s": time.perf_counter() - start,
            "rank": p.lora.rank,
            "targets": list(p.lora.targets),
            "alpha": p.lora.alpha,
            "scaling": p.lora.scaling,
            "seed": cfg.seed,
            "full_finetune": p.full_finetune,
            "model": cfg.model.name,
            "task": p.task.name,
            "main_metric": p.task.main_metric,
        }
        tracker.summary(
            {f"final/{k}": v for k, v in final.items()}
            | {f"best/{k}": v for k, v in best.items()}
            | sizes
        )
    metrics_file.write_text(json.dumps(result, indent=2))
    print_summary(result)
    return result


def _train(cfg, p, objective, tx, parts, opt_state, data, ckpt, tracker):
    """The step loop: resume, train, log, evaluate, checkpoint. Returns (trainable, final, best, step)."""
    t, select = cfg.trainer, p.task.select_metric or p.task.main_metric
    sign, main = (-1.0, select[1:]) if select.startswith("-") else (1.0, select)  # "-loss": lower
    train_step = make_train_step(objective.loss_fn, tx)
    eval_step = make_eval_step(objective.predict_fn)
    schedule = lr_schedule(cfg.optim.lr, t.steps, cfg.optim.warmup_ratio)
    step_key = jax.random.fold_in(jax.random.key(cfg.seed), 1)
    trainable, step, best, metrics = parts.trainable, 0, {main: -sign * math.inf, "step": 0}, None
    restored = ckpt.restore({"trainable": trainable, "opt_state": opt_state}, data.train_iter)
    if restored is not None:
        state, meta = restored
        trainable, opt_state, step, best = (
            state["trainable"],
            state["opt_state"],
            meta["step"],
            meta["best"],
        )
        print(f"[lora_jax] resuming {tracker.run_dir.name} from step {step}")
    if jax.device_count() > 1:  # data parallel: state replicated, batches split (parallel.py)
        trainable, opt_state, parts, train_step, eval_step = parallel.data_parallel(
            trainable, opt_state, parts, train_step, eval_step
        )
    bar = progress_bar(t.steps, initial=step, enabled=t.progress, desc=tracker.run_dir.name)
    window_start, window_tokens = time.perf_counter(), 0
    while step < t.steps:
        batch = objective.prepare(next(data.train_iter))
        trainable, opt_state, out = train_step(
            trainable, parts.frozen, opt_state, batch, jax.random.fold_in(step_key, step)
        )
        step += 1
        loss = float(out["loss"])
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"loss={loss} at step {step} in {tracker.run_dir}; the last good checkpoint is step "
                f"{ckpt.latest_step}. Lower optim.lr or set optim.clip_norm."
            )
        window_tokens += int(np.sum(batch["attention_mask"]))
        if step % t.log_every == 0 or step == t.steps:
            tok_s = window_tokens / max(time.perf_counter() - window_start, 1e-9)
            row = {
                "train/loss": loss,
                "train/grad_norm": float(out["grad_norm"]),
                "train/lr": float(schedule(step - 1)),
                "train/tokens_per_s": tok_s,
            }
            tracker.log(row, step)
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tok_s:.0f}")
            window_start, window_tokens = time.perf_counter(), 0
        if t.spectrum_every and step % t.spectrum_every == 0 and p.lora.rank > 0:
            tracker.log(
                adapter_spectra(trainable, alpha=p.lora.alpha, scaling=p.lora.scaling), step
            )
        if step % t.eval_every == 0 or step == t.steps:
            metrics = evaluate(eval_step, objective, data.eval_batches(), trainable, parts.frozen)
            tracker.log({f"eval/{k}": v for k, v in metrics.items()}, step)
            if sign * metrics[main] > sign * best[main]:
                best = {**metrics, "step": step}
            bar.set_postfix(loss=f"{loss:.4f}", **{f"eval_{main}": f"{metrics[main]:.4f}"})
        if step % t.checkpoint_every == 0 or step == t.steps:
            state = {"trainable": trainable, "opt_state": opt_state}
            ckpt.save(step, state, data.train_iter, meta={"step": step, "best": best})
        bar.update(1)
    bar.close()
    # A run resumed at its last step has not evaluated in this process.
    final = metrics or evaluate(eval_step, objective, data.eval_batches(), trainable, parts.frozen)
    return trainable, final, best, step

"""One LoRA run: `run(cfg, workdir)` trains, evaluates, checkpoints, exports and logs.

The run folder ends up with `config.yaml`, `history.jsonl`, `metrics.json`, `checkpoints/`
(Orbax: adapters, head, optimizer, step, data position) and `adapter/` (PEFT layout). A run
whose `metrics.json` says `complete` is skipped; one with checkpoints resumes from the last.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
from omegaconf import DictConfig, OmegaConf

from lora_jax import data as data_lib
from lora_jax import models
from lora_jax.adapter_io import export_adapter
from lora_jax.analysis.adapters import adapter_spectra
from lora_jax.checkpoint import Checkpointer
from lora_jax.config import to_dict
from lora_jax.lora import LoRAConfig, adapters
from lora_jax.partition import count_params, label_params, make_optimizer, split
from lora_jax.reporting import print_summary, progress_bar
from lora_jax.steps import classification_loss, make_eval_step, make_train_step, tree_bytes
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


def evaluate(eval_step, trainable, frozen, batches, task) -> dict[str, float]:
    """Task metrics on every batch of `batches` (padding rows are dropped by their mask)."""
    preds, labels = [], []
    for batch in batches:
        out = np.asarray(eval_step(trainable, frozen, batch))
        keep = np.asarray(batch.get("example_mask", np.ones(len(out), bool)), bool)
        preds.append(out[keep])
        labels.append(np.asarray(batch["labels"])[keep])
    return data_lib.compute_metrics(task, np.concatenate(preds), np.concatenate(labels))


def model_rng(seed: int) -> jax.Array:
    """The key that initialises a run's LoRA, head (and a random tiny base model)."""
    return jax.random.fold_in(jax.random.key(seed), 0)


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

    key = jax.random.key(cfg.seed)
    pre = models.load_pretrained(
        cfg.model.name,
        p.lora,
        num_labels=p.task.num_labels,
        pooling=cfg.model.pooling,
        head_dropout=cfg.model.head_dropout,
        rng=model_rng(cfg.seed),
    )
    labels = label_params(pre.params, trainable=pre.head_rules, full_finetune=p.full_finetune)
    parts = split(pre.params, labels)
    tx = _optimizer(cfg, split(labels, labels).trainable)
    opt_state = tx.init(parts.trainable)

    d = cfg.data
    loader_kw = dict(
        tokenizer=pre.tokenizer,
        task=p.task,
        max_len=d.max_len,
        pad=d.pad,
        worker_count=d.worker_count,
    )
    train_iter = iter(
        data_lib.make_loader(
            data_lib.load_split(p.task, "train"),
            batch_size=d.batch_size,
            seed=cfg.seed,
            shuffle=True,
            num_epochs=None,
            drop_remainder=True,
            **loader_kw,
        )
    )
    eval_split = p.task.splits.get(d.eval_split, d.eval_split)
    eval_source = data_lib.load_split(
        p.task, f"{eval_split}[:{d.eval_limit}]" if d.eval_limit else eval_split
    )

    def eval_batches():
        return data_lib.make_loader(
            eval_source,
            batch_size=d.eval_batch_size,
            seed=0,
            shuffle=False,
            num_epochs=1,
            drop_remainder=False,
            **loader_kw,
        )

    def loss_fn(params, batch, rng):
        logits = pre.module.apply(
            {"params": params},
            batch["input_ids"],
            batch["attention_mask"],
            batch["token_type_ids"],
            deterministic=False,
            rngs={"dropout": rng},
        )
        return classification_loss(logits, batch["labels"]), {}

    def predict_fn(params, batch):
        logits = pre.module.apply(
            {"params": params},
            batch["input_ids"],
            batch["attention_mask"],
            batch["token_type_ids"],
            deterministic=True,
        )
        return logits[..., 0] if p.task.num_labels == 1 else logits

    train_step = make_train_step(loss_fn, tx)
    eval_step = make_eval_step(predict_fn)
    sizes = {
        "trainable_params": count_params(parts.trainable),
        "total_params": count_params(parts.trainable) + count_params(parts.frozen),
        "lora_params": count_params(adapters(parts.trainable)),
        "optimizer_state_bytes": tree_bytes(opt_state),
    }

    t = cfg.trainer
    group = cfg.logger.get("group") or workdir.parent.name
    tracker = Tracker(
        workdir,
        cfg.logger.backend,
        config={**to_dict(cfg), **sizes},
        name=workdir.name,
        group=group,
        project=cfg.logger.get("project", "lora_jax"),
        entity=cfg.logger.get("entity"),
        mode=cfg.logger.get("mode"),
        tags=list(cfg.logger.get("tags") or []),
    )
    main = p.task.main_metric
    with Checkpointer(workdir / "checkpoints", keep=t.keep_checkpoints) as ckpt, tracker:
        trainable, step, best, metrics = parts.trainable, 0, {main: -math.inf, "step": 0}, None
        restored = ckpt.restore({"trainable": trainable, "opt_state": opt_state}, train_iter)
        if restored is not None:
            (state, meta) = restored
            trainable, opt_state, step, best = (
                state["trainable"],
                state["opt_state"],
                meta["step"],
                meta["best"],
            )
            print(f"[lora_jax] resuming {workdir.name} from step {step}")
        bar = progress_bar(t.steps, initial=step, enabled=t.progress, desc=workdir.name)
        window_start, window_tokens = time.perf_counter(), 0
        while step < t.steps:
            batch = next(train_iter)
            rng = jax.random.fold_in(jax.random.fold_in(key, 1), step)
            trainable, opt_state, out = train_step(trainable, parts.frozen, opt_state, batch, rng)
            step += 1
            loss = float(out["loss"])
            if not math.isfinite(loss):
                raise NonFiniteLossError(
                    f"loss={loss} at step {step} in {workdir}; the last good checkpoint is step "
                    f"{ckpt.latest_step}. Lower optim.lr or set optim.clip_norm."
                )
            window_tokens += int(np.sum(batch["attention_mask"]))
            if step % t.log_every == 0 or step == t.steps:
                elapsed = time.perf_counter() - window_start
                row = {
                    "train/loss": loss,
                    "train/grad_norm": float(out["grad_norm"]),
                    "train/lr": float(
                        lr_schedule(cfg.optim.lr, t.steps, cfg.optim.warmup_ratio)(step - 1)
                    ),
                    "train/tokens_per_s": window_tokens / max(elapsed, 1e-9),
                }
                tracker.log(row, step)
                bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{row['train/tokens_per_s']:.0f}")
                window_start, window_tokens = time.perf_counter(), 0
            if t.spectrum_every and step % t.spectrum_every == 0 and p.lora.rank > 0:
                tracker.log(
                    adapter_spectra(trainable, alpha=p.lora.alpha, scaling=p.lora.scaling), step
                )
            if step % t.eval_every == 0 or step == t.steps:
                metrics = evaluate(eval_step, trainable, parts.frozen, eval_batches(), p.task)
                tracker.log({f"eval/{k}": v for k, v in metrics.items()}, step)
                if metrics[main] > best[main]:
                    best = {**metrics, "step": step}
                bar.set_postfix(loss=f"{loss:.4f}", **{main: f"{metrics[main]:.4f}"})
            if step % t.checkpoint_every == 0 or step == t.steps:
                state = {"trainable": trainable, "opt_state": opt_state}
                ckpt.save(step, state, train_iter, meta={"step": step, "best": best})
            bar.update(1)
        bar.close()
        # A run resumed at its last step has not evaluated in this process.
        final = metrics or evaluate(eval_step, trainable, parts.frozen, eval_batches(), p.task)
        export_adapter(workdir / "adapter", trainable, p.lora, pre)
        result = {
            "status": "complete",
            "final": final,
            "best": best,
            **sizes,
            "steps": step,
            "wall_time_s": time.perf_counter() - start,
            "rank": p.lora.rank,
            "targets": list(p.lora.targets),
            "alpha": p.lora.alpha,
            "scaling": p.lora.scaling,
            "seed": cfg.seed,
            "full_finetune": p.full_finetune,
            "model": cfg.model.name,
            "task": p.task.name,
            "main_metric": main,
        }
        tracker.summary(
            {f"final/{k}": v for k, v in final.items()}
            | {f"best/{k}": v for k, v in best.items()}
            | sizes
        )
    metrics_file.write_text(json.dumps(result, indent=2))
    print_summary(result)
    return result

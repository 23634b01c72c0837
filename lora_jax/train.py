"""One LoRA run: `run(cfg, workdir)` trains, evaluates, checkpoints, exports and logs.

The run folder ends up with `run_identity.json`, `config.yaml`, `history.jsonl`,
`metrics.json`, `checkpoints/` (Orbax: adapters, head, optimizer, step, data position) and
`adapter/` (PEFT layout). A run whose `metrics.json` says `complete` is skipped; one with
checkpoints resumes from the newest intact one; either only if the folder's results were made
with the same config (`lora_jax.run_identity`), else the run stops before any work.
"""

from __future__ import annotations

import json
import math
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
from lora_jax.adapter_io import adapter_folder, export_adapter, family_of, init_adapters
from lora_jax.analysis.adapters import adapter_spectra
from lora_jax.budget import budget_rank
from lora_jax.checkpoint import Checkpointer
from lora_jax.config import check_batch_size, check_config, to_dict, value_error
from lora_jax.lora import LoRAConfig, adapters
from lora_jax.objectives import Objective, classification, evaluate
from lora_jax.partition import combine, count_params, label_params, make_optimizer, split
from lora_jax.reporting import print_summary, progress_bar
from lora_jax.run_identity import RunIdentityError, claim, exit_on_error
from lora_jax.run_record import read_metrics, write_atomic
from lora_jax.steps import make_eval_step, make_train_step, tree_bytes
from lora_jax.tracking import Tracker
from lora_jax.weights.base_kernels import (
    BASE_KERNELS_FILE,
    FULL_UPDATE_FILE,
    layer_kernels,
    save_kernels,
)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


@dataclass(frozen=True)
class Plan:
    """Everything checked before any long work: bad input fails here, in seconds."""

    lora: LoRAConfig
    task: Any
    full_finetune: bool
    init_from: Path | None = None  # the exported adapter the run starts from


def plan(cfg: DictConfig) -> Plan:
    """Validate the config's names and values (every range: `config.check_config`; rank,
    targets, model, task) without training or reading data."""
    check_config(cfg)
    section = cfg.lora
    lora = LoRAConfig(
        rank=_rank(cfg),
        alpha=section.alpha,
        scaling=section.scaling,
        a_init=section.a_init,
        dropout=section.dropout,
        targets=section.targets,
        layers=tuple(section.layers) if section.layers is not None else None,
        rank_pattern=dict(section.rank_pattern),
    )
    models.check_lora(cfg.model.name, lora)
    if cfg.data.task not in data_lib.TASKS:
        tasks = ", ".join(sorted(data_lib.TASKS))
        raise value_error("data.task", cfg.data.task, tasks, "data=mr")
    task = data_lib.get_task(cfg.data.task)
    if task.is_generation != models.is_decoder(cfg.model.name):
        allowed = models.DECODER_MODELS if task.is_generation else models.ENCODER_MODELS
        raise ValueError(
            f"data.task={task.name!r} ({task.kind}) does not fit model={cfg.model.name!r}; "
            f"allowed models: {', '.join(allowed)}."
        )
    init_from = adapter_folder(section.init_from) if section.get("init_from") else None
    return Plan(lora, task, section.full_finetune, init_from)


def _rank(cfg: DictConfig) -> int:
    """`rank`, or under a fixed budget (`lora.budget_rank`) the largest the targets can have."""
    section = cfg.lora
    if section.get("budget_rank") is None:
        return section.rank
    if section.budget_rank <= 0:
        raise ValueError(
            f"lora.budget_rank={section.budget_rank} is not valid; allowed: a positive integer."
        )
    known = models.target_shapes(cfg.model.name)
    return budget_rank(known, section.targets, section.budget_rank, section.budget_targets)


def epochs_to_steps(cfg: DictConfig, train_size: int) -> DictConfig:
    """`cfg` with `trainer.epochs` turned into steps, evaluating and checkpointing once per epoch
    (the paper reports the best epoch); unchanged when `epochs` is not set."""
    t = cfg.trainer
    if t.get("epochs") is None:
        return cfg
    per_epoch = train_size // cfg.data.batch_size  # the loader drops the last partial batch
    if per_epoch == 0:
        raise ValueError(
            f"data.batch_size={cfg.data.batch_size} exceeds the {train_size} training examples; "
            "allowed: a batch size up to the train split's size."
        )
    steps = {"steps": t.epochs * per_epoch, "eval_every": per_epoch, "checkpoint_every": per_epoch}
    return OmegaConf.merge(cfg, {"trainer": steps})


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


def _schedule(cfg: DictConfig) -> optax.Schedule:
    o = cfg.optim
    return lr_schedule(o.lr, cfg.trainer.steps, o.warmup_ratio, o.get("warmup_steps"))


def _optimizer(cfg: DictConfig, labels: dict) -> optax.GradientTransformation:
    o = cfg.optim
    schedule = _schedule(cfg)
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


def model_rng(seed: int) -> jax.Array:
    """The key that initialises a run's LoRA, head (and a random tiny base model)."""
    return jax.random.fold_in(jax.random.key(seed), 0)


@dataclass
class _Data:
    train_iter: Any  # a checkpointable Grain DataLoaderIterator
    eval_batches: Callable[[], Any]  # a fresh pass over the eval split
    train_size: int  # examples in the train split


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
    train_source = data_lib.load_split(task, "train")
    check_batch_size(d.batch_size, len(train_source), task.name)
    train = data_lib.make_loader(
        train_source,
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

    return _Data(iter(train), eval_batches, len(train_source))


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


def completed(workdir: str | Path) -> dict[str, Any] | None:
    """The metrics of a finished run in `workdir` (its `metrics.json` says complete), else None
    (a damaged `metrics.json` warns and counts as unfinished: the run resumes)."""
    metrics = read_metrics(workdir) or {}
    return metrics if metrics.get("status") == "complete" else None


@dataclass
class RunSetup:
    """What a run builds before its step loop (`prepare_run`). The fused sweep engine
    (`lora_jax.fused`) builds one per member, so each member starts exactly as its own run."""

    cfg: DictConfig  # with `trainer.epochs` turned into steps
    pre: Any  # the loaded model: module, params, tokenizer, config
    parts: Any  # Partition(trainable, frozen)
    tx: optax.GradientTransformation
    opt_state: Any
    data: _Data
    objective: Objective
    sizes: dict[str, int]
    # Full fine-tuning: W_0 of every adaptable matrix, copied before training donates the params.
    initial_kernels: dict | None = None


def prepare_run(cfg: DictConfig, p: Plan, workdir: Path) -> RunSetup:
    """Load the model (LoRA and head initialised from `model_rng(cfg.seed)`), split it, build the
    data, optimizer and objective, and write `workdir/config.yaml` (and, for a random-init base,
    the adapted kernels W that the analysis reads: `base_kernels.safetensors`)."""
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
    if p.init_from is not None:
        parts = parts._replace(trainable=init_adapters(parts.trainable, p.init_from, p.lora))
    data = _data(
        cfg, p.task, pre.tokenizer, **(lm.loader_kwargs(cfg, pre) if p.task.is_generation else {})
    )
    # config.yaml and W&B get what the run really uses: epochs as steps, a budget's rank.
    cfg = OmegaConf.merge(epochs_to_steps(cfg, data.train_size), {"lora": {"rank": p.lora.rank}})
    write_atomic(workdir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    if models.is_random(cfg.model.name):
        # A random-init base has no checkpoint to read W_0 from later: the analysis reads these.
        save_kernels(workdir / BASE_KERNELS_FILE, layer_kernels(pre.params), family_of(pre))
    tx = _optimizer(cfg, split(labels, labels).trainable)
    opt_state = tx.init(parts.trainable)
    objective = _objective(cfg, p, pre, parts, data)
    sizes = {
        "trainable_params": count_params(parts.trainable),
        "total_params": count_params(parts.trainable) + count_params(parts.frozen),
        "lora_params": count_params(adapters(parts.trainable)),
        "optimizer_state_bytes": tree_bytes(opt_state),
    }
    initial = layer_kernels(pre.params) if p.full_finetune else None
    return RunSetup(cfg, pre, parts, tx, opt_state, data, objective, sizes, initial)


def open_tracker(cfg: DictConfig, workdir: Path, sizes: dict[str, int]) -> Tracker:
    """The run's tracker: `history.jsonl`, and W&B unless `logger=none`."""
    return Tracker(
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


def run(cfg: DictConfig, workdir: str | Path) -> dict[str, Any]:
    """Train one run into `workdir` and return its metrics (see the module docstring)."""
    workdir = Path(workdir)
    try:  # before anything is written: a folder keeps describing its own results
        claim([(cfg, workdir)])
    except RunIdentityError as err:
        exit_on_error(err)
    done = completed(workdir)
    if done is not None:
        print(f"[lora_jax] {workdir} is complete; skipping (delete metrics.json to rerun).")
        return done
    p = plan(cfg)
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    s = prepare_run(cfg, p, workdir)
    cfg, objective, parts = s.cfg, s.objective, s.parts
    tracker = open_tracker(cfg, workdir, s.sizes)
    with Checkpointer(workdir / "checkpoints", keep=cfg.trainer.keep_checkpoints) as ckpt, tracker:
        trainable, final, best, steps = _train(
            cfg, p, objective, s.tx, parts, s.opt_state, s.data, ckpt, tracker
        )
        if objective.final is not None:  # measured once, at the end (e.g. BLEU of decoded text)
            once = objective.final(combine(trainable, parts.frozen))
            tracker.log({f"eval/{k}": v for k, v in once.items()}, steps)
            final = {**final, **once}
            # The best step's own values are known only if it is the last step.
            best = {**best, **(once if best["step"] == steps else dict.fromkeys(once))}
        result = finish_run(workdir, tracker, trainable, s, p, final, best, steps, start)
    write_result(workdir, result)
    return result


def finish_run(
    workdir: Path,
    tracker: Tracker,
    trainable: dict,
    s: RunSetup,
    p: Plan,
    final: dict[str, Any],
    best: dict[str, Any],
    steps: int,
    start: float,
) -> dict[str, Any]:
    """Export the adapter, log the summary and return the run's `metrics.json` record."""
    cfg, sizes = s.cfg, s.sizes
    export_adapter(workdir / "adapter", trainable, p.lora, s.pre, models.hub_id(cfg.model.name))
    if p.full_finetune:
        # The full update W_ft - W_0 of every matrix a LoRA could adapt, for the rank analysis.
        w_ft = layer_kernels(trainable)
        update = {k: w_ft[k] - w0 for k, w0 in s.initial_kernels.items()}
        save_kernels(workdir / FULL_UPDATE_FILE, update, family_of(s.pre))
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
    return result


def write_result(workdir: Path, result: dict[str, Any]) -> None:
    """Write `metrics.json` (the run is complete from here on) and print the summary."""
    write_atomic(workdir / "metrics.json", json.dumps(result, indent=2))
    print_summary(result)


def step_rng(seed: int) -> jax.Array:
    """The key a run's train steps fold their step number into (dropout)."""
    return jax.random.fold_in(jax.random.key(seed), 1)


class RunLog:
    """The bookkeeping of one run's step loop, shared by `run` and the fused sweep engine
    (`lora_jax.fused`, one per member): the non-finite-loss check, the logged rows (loss, grad
    norm, lr, tokens/s), adapter spectra, evaluations and the best step, checkpoints and resume.
    """

    def __init__(self, cfg: DictConfig, p: Plan, tracker: Tracker, ckpt: Checkpointer) -> None:
        select = p.task.select_metric or p.task.main_metric
        # "-loss": lower is better.
        self.sign, self.main = (-1.0, select[1:]) if select.startswith("-") else (1.0, select)
        self.trainer, self.lora, self.tracker, self.ckpt = cfg.trainer, p.lora, tracker, ckpt
        self.clip_norm = cfg.optim.clip_norm
        self.schedule = _schedule(cfg)
        self.best: dict[str, Any] = self._no_best()
        self.metrics: dict[str, float] | None = None  # the last evaluation in this process
        self._window_start, self._window_tokens = time.perf_counter(), 0

    def restore(
        self, state: dict[str, Any], data_iter: Any, max_step: int | None = None
    ) -> tuple[dict[str, Any], int]:
        """`(state, step)` from the newest intact checkpoint (at most at `max_step`; the data
        iterator moved along), else as given."""
        restored = self.ckpt.restore(state, data_iter, max_step)
        if restored is None:
            self.best = self._no_best()  # a fused group may restore a member a second time
            return state, 0
        state, meta = restored
        self.best = meta["best"]
        print(f"[lora_jax] resuming {self.tracker.run_dir.name} from step {meta['step']}")
        return state, meta["step"]

    def _no_best(self) -> dict[str, Any]:
        return {self.main: -self.sign * math.inf, "step": 0}

    def after_step(self, step: int, out: dict[str, Any], batch: dict[str, Any]) -> dict | None:
        """Check the loss of `step`; log and return a row every `log_every` steps (else None).

        Raises:
            NonFiniteLossError: the loss is NaN or inf.
        """
        t, loss = self.trainer, float(out["loss"])
        if not math.isfinite(loss):
            last = self.ckpt.latest_step
            kept = (
                f"the last good checkpoint is step {last}"
                if last is not None
                else "no checkpoint yet"
            )
            fix = "Lower optim.lr" + ("" if self.clip_norm else " or set optim.clip_norm=1.0")
            raise NonFiniteLossError(
                f"loss={loss} at step {step} in {self.tracker.run_dir}; {kept}. {fix}, and "
                "train again into a new folder or with trainer.restart=true."
            )
        self._window_tokens += int(np.sum(batch["attention_mask"]))
        if not (step % t.log_every == 0 or step == t.steps):
            return None
        tok_s = self._window_tokens / max(time.perf_counter() - self._window_start, 1e-9)
        row = {
            "train/loss": loss,
            "train/grad_norm": float(out["grad_norm"]),
            "train/lr": float(self.schedule(step - 1)),
            "train/tokens_per_s": tok_s,
        }
        self.tracker.log(row, step)
        self._window_start, self._window_tokens = time.perf_counter(), 0
        return row

    def spectra_due(self, step: int) -> bool:
        every = self.trainer.spectrum_every
        return bool(every) and step % every == 0 and self.lora.rank > 0

    def log_spectra(self, step: int, trainable: dict) -> None:
        self.tracker.log(
            adapter_spectra(trainable, alpha=self.lora.alpha, scaling=self.lora.scaling), step
        )

    def eval_due(self, step: int) -> bool:
        return step % self.trainer.eval_every == 0 or step == self.trainer.steps

    def evaluated(self, step: int, metrics: dict[str, float]) -> None:
        """Log an evaluation and keep the best step."""
        self.metrics = metrics
        self.tracker.log({f"eval/{k}": v for k, v in metrics.items()}, step)
        if self.sign * metrics[self.main] > self.sign * self.best[self.main]:
            self.best = {**metrics, "step": step}

    def checkpoint_due(self, step: int) -> bool:
        return step % self.trainer.checkpoint_every == 0 or step == self.trainer.steps

    def checkpoint(self, step: int, state: dict[str, Any], data_iter: Any) -> None:
        self.ckpt.save(step, state, data_iter, meta={"step": step, "best": self.best})


def _train(cfg, p, objective, tx, parts, opt_state, data, ckpt, tracker):
    """The step loop: resume, train, log, evaluate, checkpoint. Returns (trainable, final, best, step)."""
    t, log = cfg.trainer, RunLog(cfg, p, tracker, ckpt)
    train_step = make_train_step(objective.loss_fn, tx)
    eval_step = make_eval_step(objective.predict_fn)
    step_key = step_rng(cfg.seed)
    state, step = log.restore(
        {"trainable": parts.trainable, "opt_state": opt_state}, data.train_iter
    )
    trainable, opt_state = state["trainable"], state["opt_state"]
    if jax.device_count() > 1:  # data parallel: state replicated, batches split (parallel.py)
        trainable, opt_state, parts, train_step, eval_step = parallel.data_parallel(
            trainable, opt_state, parts, train_step, eval_step
        )
    bar = progress_bar(t.steps, initial=step, enabled=t.progress, desc=tracker.run_dir.name)
    while step < t.steps:
        batch = objective.prepare(next(data.train_iter))
        trainable, opt_state, out = train_step(
            trainable, parts.frozen, opt_state, batch, jax.random.fold_in(step_key, step)
        )
        step += 1
        row = log.after_step(step, out, batch)
        if row is not None:
            bar.set_postfix(
                loss=f"{row['train/loss']:.4f}", tok_s=f"{row['train/tokens_per_s']:.0f}"
            )
        if log.spectra_due(step):
            log.log_spectra(step, trainable)
        if log.eval_due(step):
            metrics = evaluate(eval_step, objective, data.eval_batches(), trainable, parts.frozen)
            log.evaluated(step, metrics)
            bar.set_postfix(
                loss=f"{float(out['loss']):.4f}", **{f"eval_{log.main}": f"{metrics[log.main]:.4f}"}
            )
        if log.checkpoint_due(step):
            log.checkpoint(step, {"trainable": trainable, "opt_state": opt_state}, data.train_iter)
        bar.update(1)
    bar.close()
    # A run resumed at its last step has not evaluated in this process.
    final = log.metrics or evaluate(
        eval_step, objective, data.eval_batches(), trainable, parts.frozen
    )
    return trainable, final, log.best, step

"""One run: `run(cfg, workdir)` trains into a run folder (config, history, metrics, Orbax
checkpoints, PEFT adapter), skips it if complete, resumes it from its newest intact checkpoint,
and refuses a folder holding another config's results (`run_identity`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import jax

from lora_jax import models
from lora_jax.adapter_io import export_adapter, family_of
from lora_jax.config import Config, to_dict
from lora_jax.partition import combine
from lora_jax.runs.files import write_atomic
from lora_jax.runs.layout import METRICS_FILE, RunFolder
from lora_jax.runs.record import read_metrics
from lora_jax.train import distributed, parallel
from lora_jax.train.checkpoint import Checkpointer
from lora_jax.train.loop import Engine, RunLog, train_loop
from lora_jax.train.memory import peak_rss_mb
from lora_jax.train.objectives import evaluate
from lora_jax.train.run_identity import RunIdentityError, claim, exit_on_error
from lora_jax.train.setup import RunSetup, plan, prepare_run, step_rng
from lora_jax.train.steps import make_eval_step, make_train_step, step_compiler_options
from lora_jax.train.time_split import TimeSplit
from lora_jax.train.tracking import Tracker
from lora_jax.weights.base_kernels import layer_kernels, save_kernels


def completed(workdir: str | Path) -> dict[str, Any] | None:
    """The metrics of a finished run in `workdir` (its `metrics.json` says complete), else None
    (a damaged `metrics.json` warns and counts as unfinished: the run resumes)."""
    metrics = read_metrics(workdir) or {}
    return metrics if metrics.get("status") == "complete" else None


def claim_or_exit(runs: Sequence[tuple[Config, str | Path]]) -> None:
    """Stop (exit 2) before anything is written if a run folder holds another config's
    results (`run_identity`), else mark each folder as its config's."""
    try:
        claim(runs)
    except RunIdentityError as err:
        exit_on_error(err)


def open_tracker(cfg: Config, workdir: Path, sizes: dict[str, int]) -> Tracker:
    """The run's tracker: `history.jsonl`, and W&B unless `logger=none`."""
    log = cfg.logger
    return Tracker(
        workdir,
        log.backend,
        write=distributed.is_primary(),
        config={**to_dict(cfg), **sizes},
        name=workdir.name,
        group=log.group or workdir.parent.name,
        project=log.project,
        entity=log.entity,
        mode=log.mode,
        tags=list(log.tags),
    )


class OneRun:
    """The `Engine` of a single run: its own jitted steps, on a mesh of several devices if any."""

    members = 1

    def __init__(self, s: RunSetup) -> None:
        self.s, self.parts, self.opt_state = s, s.parts, s.opt_state
        self.trainable = s.parts.trainable
        # one device: XLA:CPU's memory-minimising schedule (several: `parallel` re-jits the step)
        options = step_compiler_options() if jax.device_count() == 1 else None
        self.train_step = make_train_step(s.objective.loss_fn, s.tx, options)
        self.eval_step = make_eval_step(s.objective.predict_fn)
        self.key = step_rng(s.cfg.seed)
        # Evaluate on W + s·BA through a model without adapters, one program for every rank
        # (`Objective.merged_predict`, float32 runs); several devices evaluate through
        # `parallel`'s sharded step.
        self.merged_eval = s.objective.merged_predict is not None and jax.device_count() == 1

    def load(self, states: list[dict[str, Any]]) -> None:
        self.trainable, self.opt_state = states[0]["trainable"], states[0]["opt_state"]

    def ready(self) -> None:
        if jax.device_count() > 1:  # batches split, the frozen base sharded over fsdp
            self.trainable, self.opt_state, self.parts, self.train_step, self.eval_step = (
                parallel.data_parallel(
                    self.trainable,
                    self.opt_state,
                    self.parts,
                    self.train_step,
                    self.eval_step,
                    fsdp=self.s.cfg.trainer.mesh.fsdp,
                )
            )

    def next_batch(self) -> tuple[list[dict], dict]:
        batch = self.s.objective.prepare(next(self.s.data.train_iter))
        return [batch], batch

    def train(self, batch: dict, step: int) -> list[dict]:
        self.trainable, self.opt_state, out = self.train_step(
            self.trainable,
            self.parts.frozen,
            self.opt_state,
            batch,
            jax.random.fold_in(self.key, step),
        )
        return [out]

    def evaluate(self) -> list[dict[str, float]]:
        batches, size, objective = (
            self.s.data.eval_batches(),
            self.s.data.eval_size,
            self.s.objective,
        )
        if self.merged_eval:
            merged = objective.merge_adapters(combine(self.trainable, self.parts.frozen))
            return [evaluate(objective.merged_predict, objective, batches, merged, size=size)]
        params = (self.trainable, self.parts.frozen)
        return [evaluate(self.eval_step, objective, batches, *params, size=size)]

    def member_trainable(self, i: int) -> dict:
        return self.trainable

    def member_state(self, i: int) -> dict[str, Any]:
        return {"trainable": self.trainable, "opt_state": self.opt_state}

    def member_iter(self, i: int) -> Any:
        return self.s.data.train_iter

    def member_params(self, i: int) -> dict:
        return combine(self.trainable, self.parts.frozen)


def train_members(
    engine: Engine,
    setups: Sequence[RunSetup],
    workdirs: Sequence[Path],
    clock: TimeSplit,
    desc: str,
    extra: dict[str, Any] | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any] | Exception]:
    """Train the members of `engine` and finish their run folders; per member its
    `metrics.json` record (with `extra`) or the exception that stopped it. `on_result` sees
    each record once its `metrics.json` is written (the entry points print a summary)."""
    with ExitStack() as stack:
        logs = []
        for s, workdir in zip(setups, workdirs, strict=True):
            keep = s.cfg.trainer.keep_checkpoints
            ckpt = stack.enter_context(Checkpointer(RunFolder(workdir).checkpoints, keep=keep))
            tracker = stack.enter_context(open_tracker(s.cfg, workdir, s.sizes))
            logs.append(RunLog(s.cfg, s.plan, tracker, ckpt))
        steps, errors = train_loop(engine, logs, desc, clock)
        if len(errors) == len(setups) == 1:
            raise errors[0]
        live = [i for i in range(len(setups)) if i not in errors]
        # Members resumed at their last step have not evaluated in this process.
        finals = None
        if not all(logs[i].metrics for i in live):
            with clock.phase("eval"):
                finals = engine.evaluate()
        results: list[dict[str, Any] | Exception] = []
        for i, (s, log) in enumerate(zip(setups, logs, strict=True)):
            if i in errors:
                results.append(errors[i])
                continue
            final, best = log.metrics or finals[i], log.best
            if s.objective.final is not None:  # once, at the end (e.g. BLEU of decoded text)
                with clock.phase("eval"):
                    once = s.objective.final(engine.member_params(i))
                log.tracker.log({f"eval/{k}": v for k, v in once.items()}, steps)
                final = {**final, **once}
                # The best step's own values are known only if it is the last step.
                best = {**best, **(once if best["step"] == steps else dict.fromkeys(once))}
            trainable = engine.member_trainable(i)
            if jax.process_count() > 1:  # whole on every process (FSDP shards a full FT's)
                trainable = jax.tree.map(distributed.gather, trainable)
            result = finish_run(workdirs[i], log.tracker, trainable, s, final, best, steps, clock)
            results.append({**result, **(extra or {})})
    for workdir, result in zip(workdirs, results, strict=True):
        if isinstance(result, dict):
            if distributed.is_primary():
                write_atomic(RunFolder(workdir).metrics, json.dumps(result, indent=2))
            if on_result is not None:
                on_result(result)
    return results


def run(
    cfg: Config,
    workdir: str | Path,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train one run into `workdir` and return its metrics (see the module docstring);
    `on_result(metrics)` once `metrics.json` is written."""
    workdir = Path(workdir)
    distributed.initialize(cfg.trainer)  # before any other JAX call
    claim_or_exit([(cfg, workdir)])  # before anything is written
    done = completed(workdir)
    if done is not None:
        print(f"[lora_jax] {workdir} is complete; skipping (delete {METRICS_FILE} to rerun).")
        return done
    p = plan(cfg)
    workdir.mkdir(parents=True, exist_ok=True)
    clock = TimeSplit()
    with clock.phase("setup"):
        s = prepare_run(cfg, p, workdir)
    engine = OneRun(s)
    (result,) = train_members(engine, [s], [workdir], clock, workdir.name, on_result=on_result)
    return result


def finish_run(
    workdir: Path,
    tracker: Tracker,
    trainable: dict,
    s: RunSetup,
    final: dict[str, Any],
    best: dict[str, Any],
    steps: int,
    clock: TimeSplit,
) -> dict[str, Any]:
    """Export the adapter, log the summary and return the run's `metrics.json` record."""
    cfg, sizes, p = s.cfg, s.sizes, s.plan
    primary = distributed.is_primary()  # process 0 writes the run folder
    with clock.phase("save"):
        if primary:
            hub = models.hub_id(cfg.model.name)
            export_adapter(RunFolder(workdir).adapter, trainable, p.lora, s.pre, hub)
        if primary and p.full_finetune:
            # The full update W_ft - W_0 of every matrix a LoRA could adapt (rank analysis).
            w_ft = layer_kernels(trainable)
            update = {k: w_ft[k] - w0 for k, w0 in s.initial_kernels.items()}
            save_kernels(RunFolder(workdir).full_update, update, family_of(s.pre))
    result = {
        "status": "complete",
        "final": final,
        "best": best,
        **sizes,
        "steps": steps,
        "devices": jax.device_count(),
        "processes": jax.process_count(),
        "wall_time_s": clock.wall(),
        "time_split_s": clock.seconds(),
        "peak_rss_mb": round(peak_rss_mb()),
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

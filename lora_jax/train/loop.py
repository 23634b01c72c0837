"""The one step loop, for a single run and a fused group alike: an `Engine` steps the members
(one, or stacked adapters), periodic hooks evaluate, checkpoint and log (as flax's lm1b
`periodic_actions`), and a `RunLog` per member keeps its tracker, best step and checkpoints."""

from __future__ import annotations

import math
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from lora_jax.analysis.adapter_spectra import adapter_spectra
from lora_jax.config import Config
from lora_jax.train.checkpoint import Checkpointer
from lora_jax.train.distributed import agreed_signal, is_primary
from lora_jax.train.optim import schedule
from lora_jax.train.signals import Interrupted, stop_requests
from lora_jax.train.time_split import TimeSplit
from lora_jax.train.tracking import Tracker


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


class Engine(Protocol):
    """What the loop steps: `members` runs trained together (one for a single run)."""

    members: int

    def next_batch(self) -> tuple[list[dict], Any]:
        """Each member's batch (as its own run sees it) and the train step's input."""

    def train(self, batch: Any, step: int) -> list[dict]:
        """One optimizer step of every member from `step`; each member's step outputs."""

    def evaluate(self) -> list[dict[str, float]]:
        """Every member's eval metrics."""

    def member_trainable(self, i: int) -> dict:
        """Member `i`'s trainable params (its own run's shapes)."""

    def member_params(self, i: int) -> dict:
        """Member `i`'s whole parameter tree (for an objective's end-of-run measurement)."""

    def member_state(self, i: int) -> dict[str, Any]:
        """Member `i`'s checkpointed arrays: trainable params and optimizer state."""

    def member_iter(self, i: int) -> Any:
        """Member `i`'s train iterator (its position goes into the checkpoint)."""

    def load(self, states: list[dict[str, Any]]) -> None:
        """Continue from the members' restored `member_state`s."""

    def ready(self) -> None:
        """Called once, after resuming and before the first step (e.g. data parallelism)."""


def progress_bar(total: int, *, initial: int = 0, enabled: bool = True, desc: str = "") -> tqdm:
    """A tqdm bar over training steps (silent when `enabled` is False)."""
    return tqdm(
        total=total,
        initial=initial,
        disable=not enabled,
        desc=desc,
        unit="step",
        dynamic_ncols=True,
    )


class RunLog:
    """The bookkeeping of one member: the non-finite-loss check, the logged rows (loss, grad
    norm, lr, tokens/s), adapter spectra, evaluations and the best step, checkpoints, resume."""

    def __init__(self, cfg: Config, p: Any, tracker: Tracker, ckpt: Checkpointer) -> None:
        select = p.task.select_metric or p.task.main_metric
        # "-loss": lower is better.
        self.sign, self.main = (-1.0, select[1:]) if select.startswith("-") else (1.0, select)
        self.trainer, self.lora, self.tracker, self.ckpt = cfg.trainer, p.lora, tracker, ckpt
        self.clip_norm = cfg.optim.clip_norm
        self.schedule = schedule(cfg)
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
            **({"train/grad_norm_lora": float(out["grad_norm_lora"])} if self.lora.rank else {}),
            "train/lr": float(self.schedule(step - 1)),
            "train/tokens_per_s": tok_s,
        }
        self.tracker.log(row, step)
        self._window_start, self._window_tokens = time.perf_counter(), 0
        return row

    def log_spectra(self, step: int, trainable: dict) -> None:
        if self.lora.rank > 0:
            spectra = adapter_spectra(trainable, alpha=self.lora.alpha, scaling=self.lora.scaling)
            self.tracker.log(spectra, step)

    def evaluated(self, step: int, metrics: dict[str, float]) -> None:
        """Log an evaluation and keep the best step."""
        self.metrics = metrics
        self.tracker.log({f"eval/{k}": v for k, v in metrics.items()}, step)
        if self.sign * metrics[self.main] > self.sign * self.best[self.main]:
            self.best = {**metrics, "step": step}

    def checkpoint(self, step: int, state: dict[str, Any], data_iter: Any) -> None:
        self.ckpt.save(step, state, data_iter, meta={"step": step, "best": self.best})


class Every:
    """A periodic hook (flax's `periodic_actions.PeriodicCallback`): `action(step)` every
    `every` steps (0: never), and at step `last` if given."""

    def __init__(self, every: int, action: Callable[[int], None], last: int | None = None):
        self.every, self.action, self.last = every, action, last

    def __call__(self, step: int) -> None:
        if self.every and (step % self.every == 0 or step == self.last):
            self.action(step)


def resume(engine: Engine, logs: list[RunLog]) -> int:
    """Restore every member's newest intact checkpoint, all at one step (a member's damaged
    newest one sends every member back to the newest step intact in all); the step."""

    def restore(max_step: int | None = None) -> list[tuple[dict, int]]:
        return [
            log.restore(engine.member_state(i), engine.member_iter(i), max_step)
            for i, log in enumerate(logs)
        ]

    restored = restore()
    steps = {step for _, step in restored}
    if len(steps) > 1:
        print(f"[lora_jax] fused: every member goes back to step {min(steps)} (intact in all)")
        for log in logs:
            log.ckpt.discard_after(min(steps))
        restored = restore(min(steps))
        steps = {step for _, step in restored}
    if len(steps) != 1:
        raise RuntimeError(f"fused members resume from different steps {sorted(steps)}.")
    if steps != {0}:
        engine.load([state for state, _ in restored])
    return steps.pop()


def train_loop(
    engine: Engine, logs: list[RunLog], desc: str, clock: TimeSplit
) -> tuple[int, dict[int, Exception]]:
    """Resume, then step until `trainer.steps` (or every member failed), with the periodic
    hooks: spectra, evaluation, checkpoint, each timed on `clock`. Returns the last step and
    the members stopped by a `NonFiniteLossError` (the others train on)."""
    t, n = logs[0].trainer, engine.members
    with clock.phase("setup"):
        step = resume(engine, logs)
        engine.ready()
    errors: dict[int, Exception] = {}
    live = lambda: [i for i in range(n) if i not in errors]  # noqa: E731
    bar = progress_bar(t.steps, initial=step, enabled=t.progress and is_primary(), desc=desc)
    postfix: dict[str, str] = {}  # the last logged loss and evaluation, per member

    def spectra(step: int) -> None:
        with clock.phase("spectra"):
            for i in live():
                logs[i].log_spectra(step, engine.member_trainable(i))

    def evaluation(step: int) -> None:
        with clock.phase("eval"):
            evaluated = engine.evaluate()
        for i, metrics in enumerate(evaluated):
            if i in live():
                logs[i].evaluated(step, metrics)
        main = logs[0].main
        postfix[f"eval_{main}"] = ",".join(f"{logs[i].metrics[main]:.4f}" for i in live())

    saved = [step]  # the step of the newest checkpoint (or the one resumed from)

    def checkpoint(step: int) -> None:
        with clock.phase("save"):
            for i in live():
                logs[i].checkpoint(step, engine.member_state(i), engine.member_iter(i))
        saved[0] = step

    hooks = [
        Every(t.spectrum_every, spectra),
        Every(t.eval_every, evaluation, last=t.steps),
        Every(t.checkpoint_every, checkpoint, last=t.steps),
    ]
    with stop_requests() as stop:
        while step < t.steps and len(errors) < n:
            with clock.phase("steps"):
                own, batch = engine.next_batch()
                outs = engine.train(batch, step)
                step += 1
                losses = []
                for i in live():  # NaN/inf stops a member here, before its hooks
                    try:
                        row = logs[i].after_step(step, outs[i], own[i])
                    except NonFiniteLossError as err:
                        if n > 1:  # the others train on
                            print(f"[lora_jax] {err}")
                        errors[i] = err
                        continue
                    if row is not None:
                        losses.append(f"{row['train/loss']:.4f}")
            if losses:
                postfix["loss"] = ",".join(losses)
            if live():
                for hook in hooks:
                    hook(step)
            bar.set_postfix(postfix, refresh=False)
            bar.update(1)
            signum = agreed_signal(stop)  # several processes: any one's signal stops all
            if signum:
                _stop(signum, step, saved[0], checkpoint, logs, bar)
    bar.close()
    return step, errors


def _stop(signum: int, step: int, saved: int, checkpoint, logs: list[RunLog], bar) -> None:
    """Save `step` (unless just saved), say where the run stopped, raise `Interrupted`."""
    if saved != step:
        checkpoint(step)
    bar.close()
    folders = ", ".join(str(log.ckpt.directory) for log in logs)
    print(
        f"[lora_jax] {signal.Signals(signum).name}: stopped after step {step}; checkpoint saved "
        f"in {folders}. Run the same command again to resume from step {step}.",
        file=sys.stderr,
    )
    raise Interrupted(signum, step)

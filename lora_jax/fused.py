"""Fused rank sweeps: runs that differ only in rank and seed, trained as one jitted program.

    python -m experiments.sweep rank=1,2,4,8 seed=0,1 hydra/launcher=fused

The launcher (`hydra_plugins/lora_jax_fused`, selected by `hydra/launcher=fused`) composes every
job of the sweep, groups the jobs whose configs agree on everything but `rank` and `seed`
(`plan_groups`), and trains each group with `train_fused`; jobs that cannot be fused (see
`fuse_blocker`) and groups of one run as the basic launcher runs them. Every run folder ends up as its separate
run would leave it (`config.yaml`, `.hydra/`, `metrics.json`, `history.jsonl`, `checkpoints/`,
`adapter/`), so the sweep-end analysis works unchanged.

How a group trains. Each member is set up by `train.prepare_run`, the code path of its
separate run, so its LoRA A, head and optimizer start bit-identical. The members' trainable
trees are zero-padded to the largest rank and stacked on a leading axis:

    lora_a (in, r) -> (in, r_max)    lora_b (r, out) -> (r_max, out)

The model is built once at rank r_max, whose LoRADense computes s_max * x @ A @ B with
s_max = scale(r_max). Inside the loss each member's adapters are multiplied by fixed factors:
A's column j by mask_j * s_r / s_max and B's row j by mask_j (mask_j = j < r), so a member
computes s_r * x @ A[:, :r] @ B[:r] exactly as its own run (the same function of the same
numbers; only the float rounding order differs). The padded entries get exactly zero
gradient, so AdamW (decoupled weight decay of a zero is zero) keeps them exactly zero.
One `steps.make_train_step` is mapped over (stacked trainable, stacked optimizer state,
per-member batch, per-member dropout key) with the frozen base shared (not mapped; stacked
only when it differs, e.g. the random tiny models whose base depends on the seed), inside one
jitted program: `jax.vmap` on accelerators, `jax.lax.map` (a loop over the members in the
program) on CPU, where a member-times-larger batch only thrashes the caches (`chunk` picks
how many members are vmapped together). Gradient clipping and the learning-rate schedule act
per member, as in separate runs.

Data: one Grain loader per distinct seed (the train loader is seeded by `cfg.seed`), shared
by the members with that seed, so each member sees its own run's batches. Stacking needs one
batch shape, so different seeds share a group only with `data.pad=max_len`: padding a batch
to another seed's length would change the encoder's dropout masks, which are drawn per token.
Evaluation runs every member on the same eval batches in one call.

Bookkeeping (loss check, logging, spectra, evaluation, best step, checkpoints) is
`train.RunLog`, one per member. Checkpoints are each member's own, unpadded and in the
format of a separate run, so a killed fused sweep resumes fused or sequentially, and vice
versa. W&B: one run per member, open side by side.

Not fused (run sequentially, as the basic launcher does): rank 0, full fine-tuning,
generation and planted tasks, several devices, and runs already complete. Seeds form separate
groups unless `data.pad=max_len`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import DictConfig, OmegaConf

from lora_jax.checkpoint import Checkpointer
from lora_jax.lora import LORA_LEAVES, lora_scale
from lora_jax.objectives import Objective, classification, evaluate
from lora_jax.reporting import progress_bar
from lora_jax.run_identity import RunIdentityError, claim, exit_on_error
from lora_jax.steps import make_eval_step, make_train_step
from lora_jax.train import (
    NonFiniteLossError,
    RunLog,
    completed,
    finish_run,
    open_tracker,
    plan,
    prepare_run,
    step_rng,
    write_result,
)

# Config keys that may differ inside a group (the rest must be equal). `lora.rank` is the
# interpolated `rank`; logger settings and the progress bar do not change the numbers.
VARYING = ("rank", "seed", "lora.rank", "workdir", "logger", "trainer.progress")
# The batch key that carries each member's adapter factors into the loss.
_FACTORS = "__lora_factors__"


def fuse_blocker(cfg: DictConfig) -> str | None:
    """Why the run of `cfg` cannot join a fused group (None if it can)."""
    if completed(cfg.workdir) is not None:
        return "complete"
    p = plan(cfg)
    reasons = {
        "rank 0 (no adapters)": p.lora.rank == 0,
        "full fine-tuning": p.full_finetune,
        "generation task": p.task.is_generation,
        "planted task": p.task.name == "planted",
        "several devices (runs data-parallel)": jax.device_count() > 1,
    }
    return next((why for why, hit in reasons.items() if hit), None)


def group_key(cfg: DictConfig) -> str:
    """What members of one group share: the resolved config without the `VARYING` keys, plus
    the checkpoint step the run resumes from (members advance in lockstep)."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    for key in VARYING:
        *parents, leaf = key.split(".")
        node = plain
        for parent in parents:
            node = node.get(parent, {})
        node.pop(leaf, None)
    if cfg.data.pad != "max_len":
        # Seeds give batches of different lengths, and stacking needs one: padding a batch
        # to another's length would change the encoder's dropout masks (drawn per token), so
        # different seeds share a group only when every batch is max_len long.
        plain["seed"] = cfg.seed
    with Checkpointer(Path(cfg.workdir) / "checkpoints") as ckpt:
        plain["resume_step"] = ckpt.latest_step
    return json.dumps(plain, sort_keys=True, default=str)


def plan_groups(cfgs: Sequence[DictConfig], max_members: int | None = None) -> list[list[int]]:
    """Indices of `cfgs` in groups, in order of first appearance; a group of one runs alone.
    Stops (exit 2) first if a run folder holds results of another config (`run_identity`).

    Args:
        cfgs: resolved run configs (with `workdir`).
        max_members: split larger groups into chunks of at most this many (memory).
    """
    try:  # every job's folder against its config, before any job trains
        claim([(cfg, cfg.workdir) for cfg in cfgs])
    except RunIdentityError as err:
        exit_on_error(err)
    groups: dict[str, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        why = fuse_blocker(cfg)
        key = f"alone {i}" if why else group_key(cfg)
        if why:
            print(f"[lora_jax] fused: {Path(cfg.workdir).name} runs alone ({why}).")
        groups.setdefault(key, []).append(i)
    size = max_members or len(cfgs) or 1
    return [g[k : k + size] for g in groups.values() for k in range(0, len(g), size)]


# ---- padding, stacking and the adapter factors ----------------------------------------------


def _stack_padded(trees: Sequence[Any]) -> Any:
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


def _member(stacked: Any, i: int, like: Any) -> Any:
    """Member `i` of a stacked tree, cut back to the shapes of `like` (its own tree), as host
    arrays (sliced in numpy: slicing device arrays would compile a program per shape)."""
    host = jax.device_get(stacked)
    cut = lambda x, t: np.asarray(x[i][tuple(slice(0, n) for n in np.shape(t))])  # noqa: E731
    return jax.tree.map(cut, host, like)


def _factors(trainable: Mapping[str, Any], padded: Mapping[str, Any], lora: Any) -> dict:
    """Per adapter leaf of a member: A's columns scaled by mask * s_r / s_max, B's rows masked."""
    out = {}
    for key, leaf in trainable.items():
        if isinstance(leaf, Mapping):
            sub = _factors(leaf, padded[key], lora)
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
    `steps.make_train_step` over the members (batch holds `_FACTORS`; `keys` are the members'
    `step_rng`, folded with `step` as a separate run does). `predict(trainable, frozen,
    factors, batch)` gives (B, members, ...) predictions of every member on one shared batch.
    `chunk`: see `over_members`.
    """

    def loss_fn(params, batch, rng):
        batch = dict(batch)
        factors = batch.pop(_FACTORS)
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

    return jax.jit(train_step, donate_argnums=(0, 2)), jax.jit(predict)


def _same(a: Any, b: Any) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        np.shape(x) == np.shape(y) and np.array_equal(x, y) for x, y in zip(la, lb, strict=True)
    )


# ---- one group ------------------------------------------------------------------------------


class FusedGroup:
    """Runs that differ only in rank and seed, set up as their separate runs and trained as one.

    Example:
        >>> group = FusedGroup([cfg_r1, cfg_r4])  # resolved configs with `workdir`
        >>> results = group.run()  # each a metrics.json dict, or the member's exception
        >>> group.trainable["encoder"]["layer_0"]["attention"]["q"]["lora_a"].shape  # (2, in, 4)
    """

    def __init__(self, cfgs: Sequence[DictConfig], chunk: int | None = None) -> None:
        self.start = time.perf_counter()
        try:  # before `prepare_run` writes config.yaml (the launcher checked in plan_groups)
            claim([(cfg, cfg.workdir) for cfg in cfgs])
        except RunIdentityError as err:
            exit_on_error(err)
        self.plans = [plan(cfg) for cfg in cfgs]
        self.workdirs = [Path(cfg.workdir) for cfg in cfgs]
        self.setups = []
        for cfg, p, workdir in zip(cfgs, self.plans, self.workdirs, strict=True):
            workdir.mkdir(parents=True, exist_ok=True)
            self.setups.append(prepare_run(cfg, p, workdir))
        first = self.setups[0]
        self.cfg, self.objective_base = first.cfg, first.objective
        steps = {s.cfg.trainer.steps for s in self.setups}
        if len(steps) != 1:
            raise ValueError(f"fused members must train equally long; got trainer.steps {steps}.")
        # The frozen base: shared when every member has the same (pretrained) one.
        frozens = [s.parts.frozen for s in self.setups]
        shared = all(_same(f, frozens[0]) for f in frozens[1:])
        self.frozen = frozens[0] if shared else _stack_padded(frozens)
        self.frozen_axis = None if shared else 0
        for s in self.setups:  # keep one base in memory; export needs only pre.config
            s.parts = s.parts._replace(frozen=None)
            s.pre = s.pre._replace(params=None)
        self.trainable = _stack_padded([s.parts.trainable for s in self.setups])
        self.opt_state = _stack_padded([s.opt_state for s in self.setups])
        padded = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), self.trainable)
        self.factors = _stack_padded(
            [
                _factors(s.parts.trainable, padded, p.lora)
                for s, p in zip(self.setups, self.plans, strict=True)
            ]
        )
        # One model at the largest rank; the factors give each member its own rank and scale.
        rank_max = max(p.lora.rank for p in self.plans)
        lora = dataclasses.replace(self.plans[0].lora, rank=rank_max)
        module = first.pre.module.clone(lora=lora)
        self.objective = classification(module, self.plans[0].task)
        self.chunk = chunk or default_chunk()
        self.train_step, self.predict = fused_steps(
            self.objective, first.tx, self.frozen_axis, self.chunk
        )
        self.keys = jnp.stack([step_rng(s.cfg.seed) for s in self.setups])
        self.seeds = [s.cfg.seed for s in self.setups]
        # One train loader per distinct seed, shared by the members with that seed.
        self.iters = {}
        for s in self.setups:
            self.iters.setdefault(s.cfg.seed, s.data.train_iter)

    def __len__(self) -> int:
        return len(self.setups)

    def _batch(self) -> tuple[dict[int, dict], dict[str, Any]]:
        """The next batch of every seed (as its own run sees it) and the stacked group batch."""
        own = {seed: self.objective_base.prepare(next(it)) for seed, it in self.iters.items()}
        shapes = {seed: b["input_ids"].shape for seed, b in own.items()}
        if len(set(shapes.values())) > 1:  # `group_key` fuses seeds only with data.pad=max_len
            raise RuntimeError(f"fused batches differ in shape: {shapes}; set data.pad=max_len.")
        stacked = {k: np.stack([own[s][k] for s in self.seeds]) for k in own[self.seeds[0]]}
        return own, {**stacked, _FACTORS: self.factors}

    def _evaluate(self) -> list[dict[str, float]]:
        """Every member's eval metrics, from one pass over the shared eval batches."""
        metrics = self.objective_base.metrics
        per_member = self.objective_base._replace(
            metrics=lambda preds, labels: [
                metrics(preds[:, i], labels) for i in range(preds.shape[1])
            ]
        )
        batches = self.setups[0].data.eval_batches()
        return evaluate(
            self.predict, per_member, batches, self.trainable, self.frozen, self.factors
        )

    def member_trainable(self, i: int) -> dict:
        """Member `i`'s trainable params, unpadded (its own run's shapes), on the host."""
        return _member(self.trainable, i, self.setups[i].parts.trainable)

    def member_state(self, i: int) -> dict[str, Any]:
        """Member `i`'s trainable params and optimizer state, unpadded, as its checkpoint."""
        opt_state = _member(self.opt_state, i, self.setups[i].opt_state)
        return {"trainable": self.member_trainable(i), "opt_state": opt_state}

    def run(self) -> list[dict[str, Any] | Exception]:
        """Train the group; write every member's run folder. Returns, per member, its
        `metrics.json` record or the exception that stopped it (e.g. `NonFiniteLossError`)."""
        t, n = self.cfg.trainer, len(self)
        errors: dict[int, Exception] = {}
        with ExitStack() as stack:
            logs = []
            for s, p, workdir in zip(self.setups, self.plans, self.workdirs, strict=True):
                keep = s.cfg.trainer.keep_checkpoints
                ckpt = stack.enter_context(Checkpointer(workdir / "checkpoints", keep=keep))
                tracker = stack.enter_context(open_tracker(s.cfg, workdir, s.sizes))
                logs.append(RunLog(s.cfg, p, tracker, ckpt))
            step = self._resume(logs)
            bar = progress_bar(t.steps, initial=step, enabled=t.progress, desc=f"fused x{n}")
            while step < t.steps and len(errors) < n:
                own, batch = self._batch()
                self.trainable, self.opt_state, out = self.train_step(
                    self.trainable, self.frozen, self.opt_state, batch, self.keys, step
                )
                step += 1
                out = jax.device_get(out)
                live = [i for i in range(n) if i not in errors]
                for i in live:
                    try:
                        logs[i].after_step(
                            step, {k: v[i] for k, v in out.items()}, own[self.seeds[i]]
                        )
                    except NonFiniteLossError as err:  # the others train on
                        print(f"[lora_jax] {err}")
                        errors[i] = err
                live = [i for i in live if i not in errors]
                for i in live:
                    if logs[i].spectra_due(step):
                        logs[i].log_spectra(step, self.member_trainable(i))
                if live and logs[0].eval_due(step):
                    for i, metrics in enumerate(self._evaluate()):
                        if i in live:
                            logs[i].evaluated(step, metrics)
                if live and logs[0].checkpoint_due(step):
                    for i in live:
                        logs[i].checkpoint(step, self.member_state(i), self.iters[self.seeds[i]])
                bar.set_postfix(loss=",".join(f"{x:.3f}" for x in np.asarray(out["loss"])))
                bar.update(1)
            bar.close()
            live = [i for i in range(n) if i not in errors]
            # Members resumed at their last step have not evaluated in this process.
            finals = None if all(logs[i].metrics for i in live) else self._evaluate()
            results: list[dict[str, Any] | Exception] = []
            for i, (s, p, log) in enumerate(zip(self.setups, self.plans, logs, strict=True)):
                if i in errors:
                    results.append(errors[i])
                    continue
                final = log.metrics or finals[i]
                trainable = self.member_trainable(i)
                workdir = self.workdirs[i]
                result = finish_run(
                    workdir, log.tracker, trainable, s, p, final, log.best, step, self.start
                )
                results.append({**result, "engine": "fused", "fused_members": n})
        for workdir, result in zip(self.workdirs, results, strict=True):
            if isinstance(result, dict):
                write_result(workdir, result)
        return results

    def _resume(self, logs: list[RunLog]) -> int:
        """Restore every member's last checkpoint (all at one step, see `group_key`)."""

        def restore(max_step: int | None = None) -> list[tuple[dict, int]]:
            return [
                log.restore(self.member_state(i), self.iters[self.seeds[i]], max_step)
                for i, log in enumerate(logs)
            ]

        restored = restore()
        steps = {step for _, step in restored}
        if len(steps) > 1:  # a member's newest checkpoint was damaged: all go back to its step
            print(f"[lora_jax] fused: every member goes back to step {min(steps)} (intact in all)")
            for log in logs:
                log.ckpt.discard_after(min(steps))
            restored = restore(min(steps))
            steps = {step for _, step in restored}
        if len(steps) != 1:
            raise RuntimeError(f"fused members resume from different steps {sorted(steps)}.")
        if steps != {0}:
            self.trainable = _stack_padded([state["trainable"] for state, _ in restored])
            self.opt_state = _stack_padded([state["opt_state"] for state, _ in restored])
        return steps.pop()


def train_fused(
    cfgs: Sequence[DictConfig], chunk: int | None = None
) -> list[dict[str, Any] | Exception]:
    """Train runs that differ only in rank and seed as one program (see the module docstring).

    Args:
        cfgs: resolved run configs, each with its `workdir`; `plan_groups` decides which
            may be fused.
        chunk: members vmapped together (None: `default_chunk()`); see `over_members`.

    Returns:
        Per run, its `metrics.json` record (with `engine: fused`), or the exception that
        stopped it.
    """
    return FusedGroup(cfgs, chunk).run()

"""Fused rank sweeps: runs that differ only in rank and seed, trained as one jitted program on
the step loop of a separate run (`loop.train_loop`, with `FusedGroup` as its engine).

    python -m experiments.sweep rank=1,2,4,8 seed=0,1 hydra/launcher=fused

The launcher (`hydra_plugins/lora_jax_fused`) groups the jobs whose configs agree on all but
`rank` and `seed` (`plan_groups`) and trains each group with `train_fused`; the others
(`fuse_blocker`: rank 0, full fine-tuning, tasks whose objective is not fusable, several
devices, complete runs) run as the basic launcher runs them. Every run folder ends up as its
separate run would leave it, checkpoints included, so a killed fused sweep resumes fused or
sequentially. How members share one program: `lora_jax.train.members`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lora_jax.config import Config, to_dict
from lora_jax.runs.layout import RunFolder
from lora_jax.train.checkpoint import Checkpointer
from lora_jax.train.members import (
    FACTORS,
    adapter_factors,
    default_chunk,
    fused_steps,
    same_tree,
    stack_padded,
    unstack_member,
)
from lora_jax.train.objectives import classification, evaluate, objective_spec
from lora_jax.train.runner import claim_or_exit, completed, train_members
from lora_jax.train.setup import plan, prepare_run, step_rng
from lora_jax.train.time_split import TimeSplit

# Config keys that may differ inside a group (the rest must be equal). `lora.rank` is the
# interpolated `rank`; logger settings and the progress bar do not change the numbers.
VARYING = ("rank", "seed", "lora.rank", "workdir", "logger", "trainer.progress")


def fuse_blocker(cfg: Config) -> str | None:
    """Why the run of `cfg` cannot join a fused group (None if it can)."""
    if completed(cfg.workdir) is not None:
        return "complete"
    p = plan(cfg)
    reasons = {
        "rank 0 (no adapters)": p.lora.rank == 0,
        "full fine-tuning": p.full_finetune,
        f"{p.task.kind} task": not objective_spec(p.task).fusable,
        "several devices (runs data-parallel)": jax.device_count() > 1,
    }
    return next((why for why, hit in reasons.items() if hit), None)


def group_key(cfg: Config) -> str:
    """What members of one group share: the resolved config without the `VARYING` keys, plus
    the checkpoint step the run resumes from (members advance in lockstep)."""
    plain = to_dict(cfg)
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
    with Checkpointer(RunFolder(cfg.workdir).checkpoints) as ckpt:
        plain["resume_step"] = ckpt.latest_step
    return json.dumps(plain, sort_keys=True, default=str)


def plan_groups(cfgs: Sequence[Config], max_members: int | None = None) -> list[list[int]]:
    """Indices of `cfgs` in groups, in order of first appearance; a group of one runs alone.
    Stops (exit 2) first if a run folder holds results of another config (`run_identity`).

    Args:
        cfgs: typed run configs (`config.run_config`), with `workdir`.
        max_members: split larger groups into chunks of at most this many (memory).
    """
    claim_or_exit([(cfg, cfg.workdir) for cfg in cfgs])  # every job's folder, before any trains
    groups: dict[str, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        why = fuse_blocker(cfg)
        key = f"alone {i}" if why else group_key(cfg)
        if why:
            print(f"[lora_jax] fused: {Path(cfg.workdir).name} runs alone ({why}).")
        groups.setdefault(key, []).append(i)
    size = max_members or len(cfgs) or 1
    return [g[k : k + size] for g in groups.values() for k in range(0, len(g), size)]


# ---- one group ------------------------------------------------------------------------------


class FusedGroup:
    """Runs that differ only in rank and seed, set up as their separate runs and trained as one:
    the `loop.Engine` of a group, its members on a leading axis.

    Example:
        >>> group = FusedGroup([cfg_r1, cfg_r4])  # typed (`run_config`), with `workdir`
        >>> results = group.run()  # each a metrics.json dict, or the member's exception
        >>> group.trainable["encoder"]["layer_0"]["attention"]["q"]["lora_a"].shape  # (2, in, 4)
    """

    def __init__(self, cfgs: Sequence[Config], chunk: int | None = None) -> None:
        self.clock = TimeSplit()
        # Before `prepare_run` writes config.yaml (the launcher checked in plan_groups).
        claim_or_exit([(cfg, cfg.workdir) for cfg in cfgs])
        self.plans = [plan(cfg) for cfg in cfgs]
        self.workdirs = [Path(cfg.workdir) for cfg in cfgs]
        self.setups = []
        for cfg, p, workdir in zip(cfgs, self.plans, self.workdirs, strict=True):
            workdir.mkdir(parents=True, exist_ok=True)
            with self.clock.phase("setup"):
                self.setups.append(prepare_run(cfg, p, workdir))
        first = self.setups[0]
        self.cfg, self.objective_base = first.cfg, first.objective
        steps = {s.cfg.trainer.steps for s in self.setups}
        if len(steps) != 1:
            raise ValueError(f"fused members must train equally long; got trainer.steps {steps}.")
        # The frozen base: shared when every member has the same (pretrained) one.
        frozens = [s.parts.frozen for s in self.setups]
        shared = all(same_tree(f, frozens[0]) for f in frozens[1:])
        self.frozen = frozens[0] if shared else stack_padded(frozens)
        self.frozen_axis = None if shared else 0
        for s in self.setups:  # keep one base in memory
            s.parts = s.parts._replace(frozen=None)
        self.trainable = stack_padded([s.parts.trainable for s in self.setups])
        self.opt_state = stack_padded([s.opt_state for s in self.setups])
        padded = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), self.trainable)
        self.factors = stack_padded(
            [
                adapter_factors(s.parts.trainable, padded, p.lora)
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

    @property
    def members(self) -> int:
        return len(self)

    def next_batch(self) -> tuple[list[dict], dict[str, Any]]:
        """Every member's batch (its seed's, as its own run sees it) and the stacked batch."""
        own = {seed: self.objective_base.prepare(next(it)) for seed, it in self.iters.items()}
        shapes = {seed: b["input_ids"].shape for seed, b in own.items()}
        if len(set(shapes.values())) > 1:  # `group_key` fuses seeds only with data.pad=max_len
            raise RuntimeError(f"fused batches differ in shape: {shapes}; set data.pad=max_len.")
        stacked = {k: np.stack([own[s][k] for s in self.seeds]) for k in own[self.seeds[0]]}
        return [own[seed] for seed in self.seeds], {**stacked, FACTORS: self.factors}

    def train(self, batch: dict[str, Any], step: int) -> list[dict]:
        self.trainable, self.opt_state, out = self.train_step(
            self.trainable, self.frozen, self.opt_state, batch, self.keys, step
        )
        out = jax.device_get(out)
        return [{k: v[i] for k, v in out.items()} for i in range(len(self))]

    def evaluate(self) -> list[dict[str, float]]:
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
        return unstack_member(self.trainable, i, self.setups[i].parts.trainable)

    def member_state(self, i: int) -> dict[str, Any]:
        """Member `i`'s trainable params and optimizer state, unpadded, as its checkpoint."""
        opt_state = unstack_member(self.opt_state, i, self.setups[i].opt_state)
        return {"trainable": self.member_trainable(i), "opt_state": opt_state}

    def member_iter(self, i: int) -> Any:
        return self.iters[self.seeds[i]]

    def load(self, states: list[dict[str, Any]]) -> None:
        self.trainable = stack_padded([state["trainable"] for state in states])
        self.opt_state = stack_padded([state["opt_state"] for state in states])

    def ready(self) -> None:
        """Nothing to do: groups of several devices are not fused (`fuse_blocker`)."""

    def member_params(self, i: int) -> dict:
        raise NotImplementedError("fused members have no end-of-run objective (`fuse_blocker`).")

    def run(self, on_result: Callable[[dict[str, Any]], None] | None = None) -> list:
        """Train the group; write every member's run folder. Returns, per member, its
        `metrics.json` record or the exception that stopped it (e.g. `NonFiniteLossError`)."""
        extra = {"engine": "fused", "fused_members": len(self)}
        desc = f"fused x{len(self)}"
        return train_members(self, self.setups, self.workdirs, self.clock, desc, extra, on_result)


def train_fused(
    cfgs: Sequence[Config],
    chunk: int | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any] | Exception]:
    """Train runs that differ only in rank and seed as one program (see the module docstring).

    Args:
        cfgs: typed run configs (`config.run_config`), each with its `workdir`; `plan_groups`
            decides which may be fused.
        chunk: members vmapped together (None: `default_chunk()`); see `over_members`.
        on_result: sees each member's record once its `metrics.json` is written.

    Returns:
        Per run, its `metrics.json` record (with `engine: fused`), or the exception that
        stopped it.
    """
    return FusedGroup(cfgs, chunk).run(on_result)

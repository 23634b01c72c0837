"""What a run builds before its first step: the checked plan, then the model, its trainable
half, the data, the optimizer and the objective (`prepare_run`), for one run or a fused member.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jax
import optax
from omegaconf import OmegaConf

from lora_jax import data as data_lib
from lora_jax import models
from lora_jax.adapter_io import family_of, init_adapters
from lora_jax.budget import budget_rank
from lora_jax.config import Config, to_dict
from lora_jax.config_rules import value_error
from lora_jax.lora import LoRAConfig, adapters
from lora_jax.partition import count_params, label_params, split
from lora_jax.peft_adapter import adapter_folder
from lora_jax.runs.files import write_atomic
from lora_jax.runs.layout import RunFolder
from lora_jax.train import distributed, parallel
from lora_jax.train.loaders import Data, make_data
from lora_jax.train.objectives import Objective, make_objective, objective_spec
from lora_jax.train.optim import make_tx
from lora_jax.train.precision import cast_frozen, warn_if_slow
from lora_jax.train.steps import tree_bytes
from lora_jax.weights.base_kernels import layer_kernels, save_kernels


@dataclass(frozen=True)
class Plan:
    """Everything checked before any long work: bad input fails here, in seconds."""

    lora: LoRAConfig
    task: Any
    full_finetune: bool
    init_from: Path | None = None  # the exported adapter the run starts from


def plan(cfg: Config) -> Plan:
    """Validate the config's names and values (every range: `config.check_config`; rank,
    targets, model, task) without training or reading data."""
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
    if cfg.data.task not in data_lib.TASKS and cfg.data.task != data_lib.LOCAL_TASK:
        tasks = ", ".join(sorted([*data_lib.TASKS, data_lib.LOCAL_TASK]))
        raise value_error("data.task", cfg.data.task, tasks, "data=mr")
    task = data_lib.get_task(cfg.data)  # data=local: its files read, checked and prepared
    if task.is_generation != models.is_decoder(cfg.model.name):
        allowed = models.DECODER_MODELS if task.is_generation else models.ENCODER_MODELS
        raise ValueError(
            f"data.task={task.name!r} ({task.kind}) does not fit model={cfg.model.name!r}; "
            f"allowed models: {', '.join(allowed)}."
        )
    if task.chat and models.chat_template(cfg.model.name)[0] is None:
        raise ValueError(
            f"data.kind='chat' needs a model whose tokenizer has a chat template; "
            f"model={cfg.model.name!r} has none; allowed: e.g. model=smollm2, or "
            "`data.kind=completion` with prompt/completion columns."
        )
    init_from = adapter_folder(section.init_from) if section.init_from else None
    return Plan(lora, task, section.full_finetune, init_from)


def _rank(cfg: Config) -> int:
    """`rank`, or under a fixed budget (`lora.budget_rank`) the largest the targets can have."""
    section = cfg.lora
    if section.budget_rank is None:
        return section.rank
    if section.budget_rank <= 0:
        raise ValueError(
            f"lora.budget_rank={section.budget_rank} is not valid; allowed: a positive integer."
        )
    known = models.target_shapes(cfg.model.name)
    return budget_rank(known, section.targets, section.budget_rank, section.budget_targets)


def epochs_to_steps(cfg: Config, train_size: int) -> Config:
    """`cfg` with `trainer.epochs` turned into steps, evaluating and checkpointing once per epoch
    (the paper reports the best epoch); unchanged when `epochs` is not set."""
    t = cfg.trainer
    if t.epochs is None:
        return cfg
    # The loader drops the last partial global batch (data.batch_size from every process).
    per_epoch = train_size // (cfg.data.batch_size * jax.process_count())
    if per_epoch == 0:
        raise ValueError(
            f"data.batch_size={cfg.data.batch_size} exceeds the {train_size} training examples; "
            "allowed: a batch size up to the train split's size."
        )
    t = replace(t, steps=t.epochs * per_epoch, eval_every=per_epoch, checkpoint_every=per_epoch)
    return replace(cfg, trainer=t)


def model_rng(seed: int) -> jax.Array:
    """The key that initialises a run's LoRA, head (and a random tiny base model)."""
    return jax.random.fold_in(jax.random.key(seed), 0)


def step_rng(seed: int) -> jax.Array:
    """The key a run's train steps fold their step number into (dropout)."""
    return jax.random.fold_in(jax.random.key(seed), 1)


@dataclass
class RunSetup:
    """What a run builds before its step loop (`prepare_run`). The fused engine
    (`lora_jax.train.fused`) builds one per member, so each member starts exactly as its own run."""

    cfg: Config  # with `trainer.epochs` turned into steps and a budget's rank
    plan: Plan
    pre: Any  # the loaded model: module, tokenizer, config (params dropped: they live in `parts`)
    parts: Any  # Partition(trainable, frozen)
    tx: optax.GradientTransformation
    opt_state: Any
    data: Data
    objective: Objective
    sizes: dict[str, int]
    # Full fine-tuning: W_0 of every adaptable matrix, copied before training donates the params.
    initial_kernels: dict | None = None


def initial_model(cfg: Config, p: Plan, place: Any = None) -> Any:
    """The run's model as it was before training: base weights, LoRA and head initialised from
    `model_rng(cfg.seed)` (`place` puts each base tensor on its devices as it is read)."""
    return models.load_model(
        cfg.model.name,
        p.lora,
        num_labels=p.task.num_labels,
        pooling=cfg.model.pooling,
        head_dropout=cfg.model.head_dropout,
        rng=model_rng(cfg.seed),
        dtype=cfg.model.dtype,
        place=place,
    )


def prepare_run(cfg: Config, p: Plan, workdir: Path) -> RunSetup:
    """Load the model (LoRA and head initialised from `model_rng(cfg.seed)`), split it, build the
    data, optimizer and objective, and write `workdir/config.yaml` (and, for a random-init base,
    the adapted kernels W that the analysis reads: `base_kernels.safetensors`)."""
    # Several devices of one process: each checkpoint tensor goes to its devices (its FSDP
    # shards) as it is read, instead of the whole base landing on the first device before
    # `OneRun.ready` spreads it. Several processes keep that path: `distributed.put` and the
    # full-FT copy of W_0 below read every leaf back whole, which a leaf spread over other
    # processes' devices does not allow.
    place = None
    if jax.device_count() > 1 and jax.process_count() == 1:
        place = parallel.placer(parallel.data_mesh(fsdp=cfg.trainer.mesh.fsdp))
    pre = initial_model(cfg, p, place=place)
    warn_if_slow(cfg.model.dtype)
    spec = objective_spec(p.task)
    labels = label_params(pre.params, trainable=spec.head_rules(pre), full_finetune=p.full_finetune)
    parts = split(pre.params, labels)
    if p.init_from is not None:
        parts = parts._replace(trainable=init_adapters(parts.trainable, p.init_from, p.lora))
    parts = cast_frozen(parts, cfg.model.dtype)  # bfloat16: the frozen base in bf16
    data = make_data(cfg, p.task, pre.tokenizer, **spec.loader_kwargs(cfg, pre))
    # config.yaml and W&B get what the run really uses: epochs as steps, a budget's rank.
    cfg = epochs_to_steps(cfg, data.train_size)
    cfg = replace(cfg, lora=replace(cfg.lora, rank=p.lora.rank))
    primary = distributed.is_primary()  # process 0 writes the run folder
    folder = RunFolder(workdir)
    if primary:
        write_atomic(folder.config, OmegaConf.to_yaml(to_dict(cfg)))
    if primary and p.task.label_names:  # data=local: which class each logit column is
        write_atomic(folder.labels, json.dumps(list(p.task.label_names), indent=1) + "\n")
    if primary and models.is_random(cfg.model.name):
        # A random-init base has no checkpoint to read W_0 from later: the analysis reads these.
        save_kernels(folder.base_kernels, layer_kernels(pre.params), family_of(pre))
    tx = make_tx(cfg, split(labels, labels).trainable)
    opt_state = tx.init(parts.trainable)
    objective = make_objective(cfg, p, pre, parts, data)
    sizes = {
        "trainable_params": count_params(parts.trainable),
        "total_params": count_params(parts.trainable) + count_params(parts.frozen),
        "lora_params": count_params(adapters(parts.trainable)),
        "optimizer_state_bytes": tree_bytes(opt_state),
    }
    initial = layer_kernels(pre.params) if p.full_finetune else None
    # From here on the run holds its weights in `parts` only: under bfloat16 `pre.params` would
    # keep the float32 base alive beside the bf16 copy (export needs only pre.config).
    pre = pre._replace(params=None)
    return RunSetup(cfg, p, pre, parts, tx, opt_state, data, objective, sizes, initial)

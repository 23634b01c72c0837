"""Typed configuration schemas, registered in Hydra's ConfigStore.

`conf/config.yaml` lists `schema` first in its defaults, so a wrong type (`rank=abc`) or an
unknown key (`trainer.stepz=3`) fails when Hydra composes the config, before any work;
`check_config` then checks every value's range (`optim.lr=0`, `trainer.keep_checkpoints=0`).
The axes people sweep are short top-level keys (`rank`, `alpha`, `targets`, `seed`, `scaling`)
that the groups interpolate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, SI, DictConfig, OmegaConf, open_dict


@dataclass(frozen=True)
class ModelConfig:
    name: str = "minilm"  # a registered model name or a Hugging Face-format folder
    pooling: str | None = None  # None = the checkpoint's own (mean for MiniLM, cls for BERT)
    head_dropout: float = 0.1
    # float32, or bfloat16: mixed precision (projections as bf16 x bf16 -> float32 dots, the
    # frozen base stored in bf16; LoRA factors, a trainable head and the optimizer float32).
    dtype: str = "float32"


@dataclass(frozen=True)
class DataConfig:
    task: str = "mr"
    max_len: int = 64
    batch_size: int = 32
    eval_batch_size: int = 128
    pad: str = "bucket"  # max_len | longest | bucket (round up to a multiple of 16)
    eval_split: str = "validation"
    eval_limit: int | None = None  # evaluate on the first N examples only
    worker_count: int = 0
    prompt: str | None = None  # generation tasks: prompt template; None = the task's own


@dataclass(frozen=True)
class LoRASection:
    rank: int = SI("${rank}")
    alpha: float = SI("${alpha}")
    scaling: str = SI("${scaling}")
    targets: str = SI("${targets}")
    a_init: str = "gaussian"
    dropout: float = 0.0
    layers: list[int] | None = None
    rank_pattern: dict[str, int] = field(default_factory=dict)
    full_finetune: bool = False  # every weight trainable (the paper's FT baseline)
    # A fixed parameter budget (Table 5): the parameters of rank `budget_rank` on
    # `budget_targets`; each run's rank is then the largest that `targets` can have within it.
    budget_rank: int | None = None
    budget_targets: str = "q"
    # Start the adapters from an exported one (a run's `adapter/` folder, or the run folder),
    # e.g. MRPC from the MNLI adapter (Table 2). The task head starts fresh.
    init_from: str | None = None


# The compute dtypes `model.dtype` may pick (= lora_jax.lora.COMPUTE_DTYPES; not imported:
# this module loads no JAX).
DTYPES = ("float32", "bfloat16")
# `trainer.distributed`: when a run starts JAX's multi-process runtime (`lora_jax.train.distributed`).
DISTRIBUTED = ("auto", "on", "off")
# The optimizers `optim.name` may pick (`lora_jax.train.optim.OPTIMIZERS` builds them); one
# conf/optim/<name>.yaml each.
OPTIMIZERS = ("adamw", "sgd")


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06  # linear warmup, then linear decay to 0 (as the paper)
    warmup_steps: int | None = None  # overrides warmup_ratio (the paper's E2E: 500)
    b1: float = 0.9
    b2: float = 0.999
    momentum: float = 0.9  # sgd only (0 = plain SGD)
    clip_norm: float | None = 1.0
    lr_multipliers: dict[str, float] = field(default_factory=dict)  # e.g. {lora_b: 16} (LoRA+)
    label_smoothing: float = 0.0  # generation tasks (the paper uses 0.1 on E2E)


@dataclass(frozen=True)
class MeshConfig:
    """The device mesh of a run on several devices (`lora_jax.train.parallel`)."""

    # Devices that share one copy of the frozen base, each holding 1/fsdp of it (FSDP); the
    # data axis is the rest, devices / fsdp. 1 = plain data parallelism (every weight whole on
    # every device); it must divide the device count.
    fsdp: int = 1


@dataclass(frozen=True)
class TrainerConfig:
    steps: int = 200
    # Paper-style training: `epochs` passes over the train split (steps = epochs x batches per
    # epoch, overriding `steps`), evaluated and checkpointed at the end of every epoch.
    epochs: int | None = None
    eval_every: int = 100
    log_every: int = 10
    checkpoint_every: int = 100
    spectrum_every: int = 50  # rank summaries of every adapter to the logger (0 = off)
    keep_checkpoints: int = 2
    progress: bool = True
    # A run folder holding results of another config is cleared and trained again (without
    # it such a rerun stops with an error; `lora_jax.train.run_identity`).
    restart: bool = False
    mesh: MeshConfig = field(default_factory=MeshConfig)
    # Several processes, one run (`lora_jax.train.distributed`): auto starts JAX's runtime
    # when the environment or the three keys below name several processes; on always; off never.
    distributed: str = "auto"
    coordinator: str | None = None  # host:port of process 0; None = the cluster's
    num_processes: int | None = None  # None = the cluster's (SLURM, TPU)
    process_id: int | None = None  # None = the cluster's
    distributed_timeout: int = 300  # seconds the processes wait for each other at start and exit


@dataclass(frozen=True)
class LoggerConfig:
    backend: str = "wandb"  # wandb | none
    project: str = "lora_jax"
    entity: str | None = None
    mode: str | None = None  # None = $WANDB_MODE if set, else offline
    group: str | None = None  # None = the sweep folder's name
    tags: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PlantedConfig:
    """The ground-truth task (`data=planted`): a teacher with a rank-k update planted."""

    k: int = 2
    targets: str = "qv"
    layers: list[int] | None = None  # None = every layer
    strength: float = 0.5  # top planted singular value / the kernel's largest
    seed: int = 1234


@dataclass(frozen=True)
class GenerateConfig:
    """End-of-run decoding of generation tasks (BLEU, ROUGE-L); defaults: the paper's E2E."""

    num_beams: int = 10  # 1 = greedy
    length_penalty: float = 0.9
    no_repeat_ngram_size: int = 4
    max_new_tokens: int = 64
    eval_limit: int | None = None  # decode the first N distinct prompts (MRs) only
    batch_size: int = 8  # prompts per decoding call


@dataclass(frozen=True)
class Config:
    rank: int = 8
    alpha: float = 8.0
    targets: str = "qv"
    seed: int = 0
    scaling: str = "alpha_over_r"
    # The paper's tables/figures a run reproduces (set by conf/experiment/*): the report puts
    # their numbers beside ours, e.g. [table6] or [fig3, fig4, table7].
    paper: list[str] = field(default_factory=list)
    # Lookup tables that experiment files index, e.g. the paper's per-task hyperparameters:
    # `optim.lr: ${hparams.${model.name}.${data.task}.lr}` (conf/experiment/table2_glue.yaml).
    hparams: dict[str, Any] = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoRASection = field(default_factory=LoRASection)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    planted: PlantedConfig = field(default_factory=PlantedConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    # The run folder; None for a config composed outside a Hydra app (no folder yet).
    workdir: str | None = MISSING


# Typed maps whose keys the user chooses: `lora.rank_pattern={q:8,v:2}` must add keys. Hydra
# composes in struct mode, which rejects new keys even in a `dict[str, int]` field ("Key 'q' is
# not in struct") unless the node itself is marked open; values stay typed.
OPEN_MAPS = ("lora.rank_pattern", "optim.lr_multipliers")


def _schema() -> DictConfig:
    node = OmegaConf.structured(Config)
    _writable(node)
    for key in OPEN_MAPS:
        OmegaConf.set_struct(OmegaConf.select(node, key), False)
    return node


def register_configs() -> None:
    """Register the root schema as `schema`; the group files merge into its typed fields."""
    ConfigStore.instance().store(name="schema", node=_schema())


def config_from_dict(values: dict[str, Any]) -> Config:
    """The typed config of a plain dict, e.g. a finished run's `config.yaml`, checked as
    Hydra's would be (`run_config`)."""
    return run_config(OmegaConf.merge(_schema(), values))


def _writable(node: DictConfig) -> None:
    """Hydra composes the groups into the schema node: lift the read-only flag that frozen
    dataclasses give every level of it (the run's own typed copy, `run_config`, stays frozen)."""
    OmegaConf.set_readonly(node, False)
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            _writable(child)


def run_config(cfg: DictConfig | Config) -> Config:
    """The typed, frozen config of a run, made once from Hydra's after `check_config`; library
    code takes this, never a `DictConfig`. A `Config` is returned as it is.

    Example:
        >>> c = run_config(compose("config", ["rank=4", "workdir=out"]))
        >>> c.lora.rank, c.optim.name
        (4, 'adamw')
    """
    if isinstance(cfg, Config):
        return cfg
    check_config(cfg)
    cfg = cfg.copy()
    with open_dict(cfg):
        if "hydra" in cfg:  # a job config composed by Hydra's loader: Hydra's own node
            del cfg["hydra"]
        if OmegaConf.select(cfg, "workdir", throw_on_resolution_failure=False) is None:
            # Composed outside a Hydra app (tests, notebooks): `${hydra:runtime.output_dir}`
            # has no folder to resolve to.
            cfg.workdir = None
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def to_dict(cfg: DictConfig | Config) -> dict[str, Any]:
    """A plain, resolved dict (for JSON and YAML files and W&B)."""
    if isinstance(cfg, Config):
        cfg = OmegaConf.structured(cfg)
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # type: ignore[return-value]


def _at_least(low: float) -> Callable[[Any], bool]:
    return lambda v: v >= low


def _above(low: float) -> Callable[[Any], bool]:
    return lambda v: v > low


def _rate(v: Any) -> bool:
    return 0 <= v < 1


def _one_of(*names: str) -> Callable[[Any], bool]:
    return lambda v: v in names


def _or_null(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or test(v)


_INT, _POS_INT, _RATE = "an integer >= 0", "an integer >= 1", "a number in [0, 1)"
# (key, test, allowed, an example that fixes it). The schema already checked the types; these
# are the ranges and names. `rank`, `targets`, `scaling`, `lora.a_init`, `lora.layers` and
# `lora.rank_pattern` are checked with the model in `lora_jax.train.plan`.
RULES: tuple[tuple[str, Callable[[Any], bool], str, str], ...] = (
    ("alpha", _above(0), "a number > 0", "alpha=8"),
    ("lora.alpha", _above(0), "a number > 0", "alpha=8"),
    ("seed", _at_least(0), _INT, "seed=0"),
    (
        "model.pooling",
        _or_null(_one_of("cls", "mean")),
        "null (the model's own), cls, mean",
        "model.pooling=null",
    ),
    ("model.head_dropout", _rate, _RATE, "model.head_dropout=0.1"),
    ("model.dtype", _one_of(*DTYPES), ", ".join(DTYPES), "model.dtype=bfloat16"),
    ("data.max_len", _at_least(1), _POS_INT, "data.max_len=64"),
    ("data.batch_size", _at_least(1), _POS_INT, "data.batch_size=32"),
    ("data.eval_batch_size", _at_least(1), _POS_INT, "data.eval_batch_size=128"),
    (
        "data.pad",
        _one_of("max_len", "longest", "bucket"),
        "max_len, longest, bucket",
        "data.pad=bucket",
    ),
    (
        "data.eval_limit",
        _or_null(_at_least(1)),
        f"null (all) or {_POS_INT}",
        "data.eval_limit=null",
    ),
    ("data.worker_count", _at_least(0), _INT, "data.worker_count=0"),
    ("lora.dropout", _rate, _RATE, "lora.dropout=0.1"),
    (
        "lora.budget_rank",
        _or_null(_at_least(1)),
        f"null (no budget) or {_POS_INT}",
        "lora.budget_rank=8",
    ),
    ("optim.name", _one_of(*OPTIMIZERS), ", ".join(OPTIMIZERS), "optim=adamw"),
    ("optim.lr", _above(0), "a number > 0", "optim.lr=1e-3"),
    ("optim.weight_decay", _at_least(0), "a number >= 0", "optim.weight_decay=0.01"),
    ("optim.warmup_ratio", _rate, _RATE, "optim.warmup_ratio=0.06"),
    (
        "optim.warmup_steps",
        _or_null(_at_least(0)),
        f"null (use warmup_ratio) or {_INT}",
        "optim.warmup_steps=null",
    ),
    ("optim.b1", _rate, _RATE, "optim.b1=0.9"),
    ("optim.b2", _rate, _RATE, "optim.b2=0.999"),
    ("optim.momentum", _rate, _RATE, "optim.momentum=0.9"),
    (
        "optim.clip_norm",
        _or_null(_above(0)),
        "null (no clipping) or a number > 0",
        "optim.clip_norm=1.0",
    ),
    ("optim.label_smoothing", _rate, _RATE, "optim.label_smoothing=0.1"),
    ("trainer.steps", _at_least(1), _POS_INT, "trainer.steps=200"),
    (
        "trainer.epochs",
        _or_null(_at_least(1)),
        f"null (use steps) or {_POS_INT}",
        "trainer.epochs=null",
    ),
    ("trainer.eval_every", _at_least(1), _POS_INT, "trainer.eval_every=100"),
    ("trainer.log_every", _at_least(1), _POS_INT, "trainer.log_every=10"),
    ("trainer.checkpoint_every", _at_least(1), _POS_INT, "trainer.checkpoint_every=100"),
    ("trainer.spectrum_every", _at_least(0), f"0 (off) or {_POS_INT}", "trainer.spectrum_every=0"),
    # 0 would keep no checkpoint, which silently turns resume off.
    ("trainer.keep_checkpoints", _at_least(1), _POS_INT, "trainer.keep_checkpoints=2"),
    # That it divides the device count is checked with the devices (`train.parallel`).
    (
        "trainer.mesh.fsdp",
        _at_least(1),
        f"{_POS_INT} dividing the device count",
        "trainer.mesh.fsdp=1",
    ),
    (
        "trainer.distributed",
        _one_of(*DISTRIBUTED),
        "auto (start jax.distributed when there are several processes), on, off",
        "trainer.distributed=auto",
    ),
    (
        "trainer.num_processes",
        _or_null(_at_least(1)),
        f"null (the cluster's) or {_POS_INT}",
        "trainer.num_processes=2",
    ),
    (
        "trainer.process_id",
        _or_null(_at_least(0)),
        f"null (the cluster's) or {_INT} below trainer.num_processes",
        "trainer.process_id=0",
    ),
    (
        "trainer.distributed_timeout",
        _at_least(1),
        f"{_POS_INT} (seconds)",
        "trainer.distributed_timeout=300",
    ),
    ("logger.backend", _one_of("wandb", "none"), "wandb, none", "logger=none"),
    (
        "logger.mode",
        _or_null(_one_of("offline", "online", "disabled")),
        "null ($WANDB_MODE, else offline), offline, online, disabled",
        "logger.mode=offline",
    ),
    ("planted.k", _at_least(1), _POS_INT, "planted.k=2"),
    ("planted.strength", _above(0), "a number > 0", "planted.strength=0.5"),
    ("planted.seed", _at_least(0), _INT, "planted.seed=1234"),
    ("generate.num_beams", _at_least(1), f"{_POS_INT} (1 = greedy)", "generate.num_beams=1"),
    ("generate.length_penalty", _above(0), "a number > 0", "generate.length_penalty=1.0"),
    (
        "generate.no_repeat_ngram_size",
        _at_least(0),
        f"{_INT} (0 = off)",
        "generate.no_repeat_ngram_size=0",
    ),
    ("generate.max_new_tokens", _at_least(1), _POS_INT, "generate.max_new_tokens=64"),
    (
        "generate.eval_limit",
        _or_null(_at_least(1)),
        f"null (all) or {_POS_INT}",
        "generate.eval_limit=null",
    ),
    ("generate.batch_size", _at_least(1), _POS_INT, "generate.batch_size=8"),
)
LR_GROUPS = ("lora_a", "lora_b", "trainable")  # lora_jax.partition's optimizer groups


def value_error(key: str, value: Any, allowed: str, example: str) -> ValueError:
    """The one wording of a bad config value: the value, what is allowed, a command that fixes it."""
    return ValueError(f"{key}={value!r} is not valid; allowed: {allowed}. Use e.g. `{example}`.")


def check_config(cfg: DictConfig | Config) -> None:
    """Raise `ValueError` for the first config value out of range (`RULES`) or key the schema
    lacks (a `+key=...` override). Reads no files; keys absent from `cfg` are skipped."""
    if isinstance(cfg, Config):
        cfg = OmegaConf.structured(cfg)
    _check_keys(cfg, Config(), "")
    for key, test, allowed, example in RULES:
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT and not test(value):
            raise value_error(key, value, allowed, example)
    rank, lora_rank = (OmegaConf.select(cfg, k, default=_ABSENT) for k in ("rank", "lora.rank"))
    if _ABSENT not in (rank, lora_rank) and lora_rank != rank:
        # One source: the sweep axis `rank`; `lora.rank` interpolates it.
        raise value_error(
            "lora.rank", lora_rank, f"the top-level rank ({rank})", f"rank={lora_rank}"
        )
    pid, count = (OmegaConf.select(cfg, f"trainer.{k}") for k in ("process_id", "num_processes"))
    if None not in (pid, count) and pid >= count:
        raise value_error(
            "trainer.process_id",
            pid,
            f"0..{count - 1} (trainer.num_processes={count})",
            "trainer.process_id=0",
        )
    for name, rank in (OmegaConf.select(cfg, "lora.rank_pattern") or {}).items():
        if rank < 0:  # the names are checked against `targets` in `train.plan`
            raise value_error(
                f"lora.rank_pattern.{name}", rank, _INT, "lora.rank_pattern={q:8,v:2}"
            )
    for name, factor in (OmegaConf.select(cfg, "optim.lr_multipliers") or {}).items():
        if name not in LR_GROUPS:
            allowed = ", ".join(LR_GROUPS)
            raise value_error(
                f"optim.lr_multipliers.{name}",
                factor,
                f"keys {allowed}",
                "optim.lr_multipliers={lora_b:16}",
            )
        if not factor > 0:
            raise value_error(
                f"optim.lr_multipliers.{name}",
                factor,
                "a number > 0",
                "optim.lr_multipliers={lora_b:16}",
            )


def check_batch_size(batch_size: int, train_size: int, task: str) -> None:
    """A training batch must fit the train split: the loader drops partial batches, so a larger
    one never yields a batch and the run would wait forever."""
    if batch_size > train_size:
        raise value_error(
            "data.batch_size",
            batch_size,
            f"1..{train_size} (the train split of data.task={task} has {train_size} examples)",
            f"data.batch_size={min(32, train_size)}",
        )


_ABSENT = object()


def _check_keys(cfg: DictConfig, schema: Any, prefix: str) -> None:
    """Keys forced in with `+section.key=...` pass Hydra's struct check; reject them here."""
    names = [f.name for f in fields(schema)]
    for key in cfg:
        if key not in names and not (key == "hydra" and not prefix):
            raise ValueError(
                f"{prefix}{key} is not a config key; allowed keys"
                f"{' in ' + prefix[:-1] if prefix else ''}: {', '.join(names)}. "
                f"Drop `+{prefix}{key}=...` (see `python -m experiments.train --cfg job`)."
            )
    for name in names:
        sub = getattr(schema, name)
        if is_dataclass(sub) and isinstance(cfg.get(name), DictConfig):
            _check_keys(cfg[name], sub, f"{prefix}{name}.")

"""Typed configuration schemas, registered in Hydra's ConfigStore.

`conf/config.yaml` lists `schema` first in its defaults, so a wrong type (`rank=abc`) or an
unknown key (`trainer.stepz=3`) fails when Hydra composes the config, before any work;
`check_config` then refuses keys forced in (`+trainer.stepz=3`) and checks every value against
the rules of `lora_jax.config_rules` (`optim.lr=0`, `trainer.keep_checkpoints=0`).
The axes people sweep are short top-level keys (`rank`, `alpha`, `targets`, `seed`, `scaling`)
that the groups interpolate.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, SI, DictConfig, OmegaConf, open_dict

from lora_jax.config_rules import CHECKED_KEYS, check_values


@dataclass(frozen=True)
class ModelConfig:
    name: str = "minilm"  # a registered model name or a Hugging Face-format folder
    pooling: str | None = None  # None = the checkpoint's own (mean for MiniLM, cls for BERT)
    head_dropout: float = 0.1
    # float32, or bfloat16: mixed precision (projections as bf16 x bf16 -> float32 dots, the
    # frozen base stored in bf16; LoRA factors, a trainable head and the optimizer float32).
    dtype: str = "float32"


@dataclass(frozen=True)
class ColumnsConfig:
    """data=local: the column of each role (docs/data.md, "Your own files")."""

    text: str = "text"
    text_pair: str | None = None  # a second sentence (a pair task); None = single sentences
    label: str = "label"
    prompt: str = "prompt"
    completion: str = "completion"
    messages: str = "messages"


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
    # data=local (task: local): your own files, read as `kind` says (lora_jax.data.local).
    path: str | None = None  # a file, or a folder (train/validation/test files, or shards)
    validation_path: str | None = None  # None: from `path`, else 10% of it by a hash
    test_path: str | None = None  # None: from `path`, else no test split
    kind: str = "classification"  # classification, regression, completion, chat
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)


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
    eval_every: int = 200  # = steps: one evaluation, at the end
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


def check_config(cfg: DictConfig | Config) -> None:
    """Raise `ValueError` for the first key the schema lacks (a `+key=...` override) or config
    value out of range (`lora_jax.config_rules.check_values`). Reads no files; keys absent from
    `cfg` are skipped."""
    if isinstance(cfg, Config):
        cfg = OmegaConf.structured(cfg)
    _check_keys(cfg, Config(), "")
    check_values(_checked_values(cfg))


def _checked_values(cfg: DictConfig) -> dict[str, Any]:
    """{dotted key: plain value} of the keys `check_values` reads that `cfg` has: the rules
    run on Hydra's node before it is typed (`run_config`), so a bad value is named by its key
    before `OmegaConf.to_object` builds the frozen dataclasses."""
    absent = object()
    values = {}
    for key in CHECKED_KEYS:
        value = OmegaConf.select(cfg, key, default=absent)
        if value is not absent:
            values[key] = (
                OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
            )
    return values


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

"""Typed configuration schemas, registered in Hydra's ConfigStore.

`conf/config.yaml` lists `schema` first in its defaults, so a wrong type (`rank=abc`) or an
unknown key (`trainer.stepz=3`) fails when Hydra composes the config, before any work. The
axes people sweep are short top-level keys (`rank`, `alpha`, `targets`, `seed`, `scaling`)
that the groups interpolate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, SI, DictConfig, OmegaConf


@dataclass
class ModelConfig:
    name: str = "minilm"  # a registered model name or a Hugging Face-format folder
    pooling: str | None = None  # None = the checkpoint's own (mean for MiniLM, cls for BERT)
    head_dropout: float = 0.1


@dataclass
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


@dataclass
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


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06  # linear warmup, then linear decay to 0 (as the paper)
    warmup_steps: int | None = None  # overrides warmup_ratio (the paper's E2E: 500)
    b1: float = 0.9
    b2: float = 0.999
    clip_norm: float | None = 1.0
    lr_multipliers: dict[str, float] = field(default_factory=dict)  # e.g. {lora_b: 16} (LoRA+)
    label_smoothing: float = 0.0  # generation tasks (the paper uses 0.1 on E2E)


@dataclass
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
    # it such a rerun stops with an error; `lora_jax.run_identity`).
    restart: bool = False


@dataclass
class LoggerConfig:
    backend: str = "wandb"  # wandb | none
    project: str = "lora_jax"
    entity: str | None = None
    mode: str | None = None  # None = $WANDB_MODE if set, else offline
    group: str | None = None  # None = the sweep folder's name
    tags: list[str] = field(default_factory=list)


@dataclass
class PlantedConfig:
    """The ground-truth task (`data=planted`): a teacher with a rank-k update planted."""

    k: int = 2
    targets: str = "qv"
    layers: list[int] | None = None  # None = every layer
    strength: float = 0.5  # top planted singular value / the kernel's largest
    seed: int = 1234


@dataclass
class GenerateConfig:
    """End-of-run decoding of generation tasks (BLEU, ROUGE-L); defaults: the paper's E2E."""

    num_beams: int = 10  # 1 = greedy
    length_penalty: float = 0.9
    no_repeat_ngram_size: int = 4
    max_new_tokens: int = 64
    eval_limit: int | None = None  # decode the first N distinct prompts (MRs) only
    batch_size: int = 8  # prompts per decoding call


@dataclass
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
    workdir: str = MISSING


def register_configs() -> None:
    """Register the root schema as `schema`; the group files merge into its typed fields."""
    ConfigStore.instance().store(name="schema", node=Config)


def to_dict(cfg: DictConfig | Config) -> dict[str, Any]:
    """A plain, resolved dict (for JSON files and W&B)."""
    if isinstance(cfg, Config):
        cfg = OmegaConf.structured(cfg)
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # type: ignore[return-value]

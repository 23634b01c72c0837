"""The one definition of what a run folder and a sweep folder hold: every name, once.

Every reader and writer builds its paths here (`RunFolder`, `SweepFolder`); no other module
spells these names. Standard library only, so any layer may import it.

    outputs/sweeps/<time>/                 SweepFolder
      rank=1/ ... rank=8/                  RunFolder, one per run (Hydra's override string)
          .hydra/overrides.yaml            Hydra's record of the job (config.yaml, hydra.yaml too)
          .lock                            the process that writes (`lora_jax.runs.lock`)
          config.yaml                      the resolved config
          run_identity.json                the hash of the config the results come from
          metrics.json                     final and best metrics; the run is done once it exists
          history.jsonl                    every logged scalar, one JSON row per step
          checkpoints/<step>/state/        Orbax steps (item `state` of `train.checkpoint`)
          checkpoints_damaged/<step>/      steps that failed to restore, set aside
          adapter/                         the LoRA adapter, PEFT's layout (`peft_adapter`)
          base_kernels.safetensors         the adapted W of a random-init base
          full_update.safetensors          full fine-tuning's W_ft - W_0
          planted.safetensors              the planted factors of a planted-rank task
          generations.jsonl                decoded text of a generation task
          labels.json                      data=local: the class names in id order
          wandb/, wandb_id.txt             the W&B run and its id (resumed with it)
      sweep_summary.json                   one entry per run: overrides, run folder, metrics
      analysis.json                        the rank analysis (written once, by the analysis)
      evals.json                           beside full fine-tuning: the model evaluations
      audit.json, audit.csv                the audit of every run's adapter
      rank_advice.json, advice/<adapter>/  rank advice: a PEFT rank_pattern, a LoraConfig folder
      figures/*.png                        every figure of the report
      report.md, report.html               the report
      analysis_run/wandb/                  the analysis's own W&B run

`experiments.analyze --adapters A B --out DIR` writes the sweep folder's analysis and audit
files into DIR.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# A run folder.
HYDRA_DIR = ".hydra"
OVERRIDES_FILE = "overrides.yaml"  # in HYDRA_DIR
LOCK_FILE = ".lock"  # also in a sweep folder
CONFIG_FILE = "config.yaml"
IDENTITY_FILE = "run_identity.json"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.jsonl"
CHECKPOINTS_DIR = "checkpoints"
DAMAGED_DIR = f"{CHECKPOINTS_DIR}_damaged"  # `train.checkpoint` appends `_damaged`
STATE_DIR = "state"  # in CHECKPOINTS_DIR/<step>/: the Orbax item `state`
ADAPTER_DIR = "adapter"
BASE_KERNELS_FILE = "base_kernels.safetensors"
FULL_UPDATE_FILE = "full_update.safetensors"
PLANTED_FILE = "planted.safetensors"
GENERATIONS_FILE = "generations.jsonl"
LABELS_FILE = "labels.json"
WANDB_DIR = "wandb"
WANDB_ID_FILE = "wandb_id.txt"
# What a run writes into its folder (`trainer.restart` removes these; `.hydra/` stays).
RUN_FILES = (
    METRICS_FILE,
    CONFIG_FILE,
    HISTORY_FILE,
    WANDB_ID_FILE,
    BASE_KERNELS_FILE,
    FULL_UPDATE_FILE,
    PLANTED_FILE,
    GENERATIONS_FILE,
    LABELS_FILE,
    IDENTITY_FILE,
    CHECKPOINTS_DIR,
    DAMAGED_DIR,
    ADAPTER_DIR,
    WANDB_DIR,
)

# A sweep folder (and the output folder of `experiments.analyze --adapters`).
SUMMARY_FILE = "sweep_summary.json"
ANALYSIS_FILE = "analysis.json"
EVALS_FILE = "evals.json"
FIGURES_DIR = "figures"
REPORT_MD_FILE = "report.md"
REPORT_HTML_FILE = "report.html"
AUDIT_FILE = "audit.json"
AUDIT_CSV_FILE = "audit.csv"
ADVICE_FILE = "rank_advice.json"
ADVICE_DIR = "advice"
ANALYSIS_RUN_DIR = "analysis_run"
SWEEP_FILES = (
    SUMMARY_FILE,
    ANALYSIS_FILE,
    EVALS_FILE,
    FIGURES_DIR,
    REPORT_MD_FILE,
    REPORT_HTML_FILE,
    AUDIT_FILE,
    AUDIT_CSV_FILE,
    ADVICE_FILE,
    ADVICE_DIR,
    ANALYSIS_RUN_DIR,
)
# Every name of the contract.
NAMES = frozenset({*RUN_FILES, HYDRA_DIR, OVERRIDES_FILE, LOCK_FILE, STATE_DIR, *SWEEP_FILES})


@dataclass(frozen=True)
class RunFolder:
    """The paths of one run folder (module docstring).

    Example:
        >>> RunFolder(Path("sweep/rank=4")).checkpoint(200)
        PosixPath('sweep/rank=4/checkpoints/200')
    """

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def hydra(self) -> Path:
        return self.path / HYDRA_DIR

    @property
    def overrides(self) -> Path:
        return self.path / HYDRA_DIR / OVERRIDES_FILE

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def identity(self) -> Path:
        return self.path / IDENTITY_FILE

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def history(self) -> Path:
        return self.path / HISTORY_FILE

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    def checkpoint(self, step: int) -> Path:
        """The Orbax folder of `step`."""
        return self.checkpoints / str(step)

    def checkpoint_state(self, step: int) -> Path:
        """The saved arrays of `step` (the trainable parameters and the optimizer state)."""
        return self.checkpoint(step) / STATE_DIR

    @property
    def adapter(self) -> Path:
        return self.path / ADAPTER_DIR

    @property
    def base_kernels(self) -> Path:
        return self.path / BASE_KERNELS_FILE

    @property
    def full_update(self) -> Path:
        return self.path / FULL_UPDATE_FILE

    @property
    def planted(self) -> Path:
        return self.path / PLANTED_FILE

    @property
    def generations(self) -> Path:
        return self.path / GENERATIONS_FILE

    @property
    def labels(self) -> Path:
        return self.path / LABELS_FILE

    @property
    def wandb_id(self) -> Path:
        return self.path / WANDB_ID_FILE


@dataclass(frozen=True)
class SweepFolder:
    """The paths of one sweep folder (module docstring); its runs are `run(name)`."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def run(self, name: str) -> RunFolder:
        return RunFolder(self.path / name)

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY_FILE

    @property
    def analysis(self) -> Path:
        return self.path / ANALYSIS_FILE

    @property
    def evals(self) -> Path:
        return self.path / EVALS_FILE

    @property
    def figures(self) -> Path:
        return self.path / FIGURES_DIR

    @property
    def report_md(self) -> Path:
        return self.path / REPORT_MD_FILE

    @property
    def report_html(self) -> Path:
        return self.path / REPORT_HTML_FILE

    @property
    def audit_json(self) -> Path:
        return self.path / AUDIT_FILE

    @property
    def audit_csv(self) -> Path:
        return self.path / AUDIT_CSV_FILE

    @property
    def rank_advice(self) -> Path:
        return self.path / ADVICE_FILE

    @property
    def advice(self) -> Path:
        return self.path / ADVICE_DIR

    @property
    def analysis_run(self) -> Path:
        return self.path / ANALYSIS_RUN_DIR

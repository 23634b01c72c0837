"""Reports of a finished sweep beside the LoRA paper's numbers: local Markdown/HTML and W&B.

    python -m experiments.report outputs/sweeps/<id> [--paper table6 ...] [--out DIR] [--no-wandb]

One module per job:

- `items`: the paper items to compare with (runs: `lora_jax.run_record`);
- `cells`: runs grouped by every axis but the seed, summarised over seeds;
- `setup`: our setup against the paper's (what compares: values or only trends);
- `rank_analysis`, `full_finetuning`: the rank analysis and LoRA vs full fine-tuning
  (`analysis.json`) as tables and figures;
- `compare`, `analysis_tables`: the paper's tables and figures beside ours (`lora_jax.report.paper`);
- `metric_figure`: metric vs rank; `document`: the report as data, rendered as Markdown and HTML;
- `wandb_report`: the same as a W&B Report (built offline, saved only online);
- `build`: `make_report`, which ties them together.
"""

from lora_jax.report.build import ReportResult, make_adapters_report, make_report
from lora_jax.report.cells import Cell, Stats, group_cells
from lora_jax.report.items import ReportInputError

__all__ = [
    "Cell",
    "ReportInputError",
    "ReportResult",
    "Stats",
    "group_cells",
    "make_adapters_report",
    "make_report",
]

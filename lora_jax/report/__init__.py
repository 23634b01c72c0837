"""Reports of a finished sweep beside the LoRA paper's numbers: local Markdown/HTML and W&B.

    python -m experiments.report outputs/sweeps/<id> [--paper table6 ...] [--out DIR] [--no-wandb]

One module per job:

- `items`: the paper items to compare with (runs: `lora_jax.runs.record`);
- `cells`: runs grouped by every axis but the seed, summarised over seeds;
- `setup`: our setup against the paper's (what compares: values or only trends);
- `rank_analysis`, `full_finetuning`: the rank analysis and LoRA vs full fine-tuning
  (`analysis.json`) as tables and figures;
- `compare`, `analysis_tables`: the paper's tables and figures beside ours (`lora_jax.report.paper`);
- `metric_figure`: metric vs rank; `document`: the report as data, rendered as Markdown and HTML;
- `wandb_report`: the same as a W&B Report (built offline, saved only online);
- `build`: `make_report`, which ties them together; `adapters`: `make_adapters_report`, the
  page of `experiments.analyze --adapters` (`audit_section`: the audit and the rank advice).
"""

from __future__ import annotations

from lora_jax.lazy import lazy_getattr

# name -> module: imported on first use, so the audit's page loads no sweep report (nor JAX).
_EXPORTS = {
    "Cell": "cells",
    "ReportInputError": "items",
    "ReportResult": "document",
    "Stats": "cells",
    "group_cells": "cells",
    "make_adapters_report": "adapters",
    "make_report": "build",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)

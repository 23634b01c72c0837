"""Reports of a finished sweep beside the LoRA paper's numbers: local Markdown/HTML and W&B.

    python -m experiments.report outputs/sweeps/<id> [--paper table6 ...] [--out DIR] [--no-wandb]

One module per job. At the top, the data the report reads and the two builders:

- `build`: `make_report`, the one report pipeline (the sweep's end and `experiments.report`);
- `adapters`: `make_adapters_report`, the page of `experiments.analyze --adapters`;
- `items`: the paper items to compare with (runs: `lora_jax.runs.record`);
- `cells`: runs grouped by every axis but the seed, summarised over seeds;
- `paper`: the numbers of the LoRA paper, with where each comes from;
- `seed_stats`: mean, spread, confidence interval and tests over seeds.

`sections/`: runs and `analysis.json` turned into report blocks (paragraphs, tables, figures):

- `sections.our_setup`: our setup against the paper's, and the choices every comparison shares;
- `sections.compare`: the paper's Tables 2, 3, 5, 6 and 18 beside our cells;
- `sections.analysis_tables`: the paper's Table 7 and Figures 3 and 4 beside our rank analysis;
- `sections.metric_figure`: the main metric against the rank (figure);
- `sections.seed_section`: the seed statistics section;
- `sections.rank_analysis`: the rank analysis (phi heatmaps, dW against W, spectra);
- `sections.rank_used`: how the rank dW uses grows with r (the exponent β over seeds);
- `sections.full_finetuning`: LoRA against full fine-tuning (ranks, intruders, model evals);
- `sections.versus_full_seeds`: LoRA against full fine-tuning over seeds;
- `sections.over_training`: the rank measurements over training (`dynamics`);
- `sections.training_curves`: learning rate against rank, and rsLoRA's scaling;
- `sections.audit_section`: the rank audit of adapter folders and the rank advice.

`render/`: what turns blocks and numbers into what a person reads:

- `render.document`: the report as data, rendered as Markdown and one self-contained HTML file;
- `render.format`: how numbers are written ("median [min–max] (n=…)", the paper's units);
- `render.console`: the one-screen summary in the terminal after a run;
- `render.wandb_report`: the report as a W&B Report (built offline, saved only online);
- `render.wandb_run`: the sweep's `analysis` run in W&B (tables, figures, curves).
"""

from __future__ import annotations

from lora_jax.lazy import lazy_getattr

# name -> module: imported on first use, so the audit's page loads no sweep report (nor JAX).
_EXPORTS = {
    "Cell": "cells",
    "ReportInputError": "items",
    "ReportResult": "render.document",
    "Stats": "cells",
    "group_cells": "cells",
    "make_adapters_report": "adapters",
    "make_report": "build",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)

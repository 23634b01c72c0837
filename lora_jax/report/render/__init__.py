"""The report's renderers: `document` (the report as data, written as Markdown and one
self-contained HTML file), `format` (how numbers are written), `console` (the terminal summary
after a run), `wandb_report` (the W&B Report, built offline, saved only online) and `wandb_run`
(the sweep's `analysis` run in W&B, logged through `lora_jax.train.tracking.Tracker`).
"""

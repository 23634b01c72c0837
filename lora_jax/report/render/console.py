"""What a person sees in the terminal after a run: a one-screen summary (the progress bar is
`lora_jax.train.loop.progress_bar`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, int) and value >= 10_000:
        return f"{value:,}"
    return str(value)


def print_summary(result: Mapping[str, Any]) -> None:
    """One screen: what was trained, how big, how well, how long."""
    table = Table(title=f"lora_jax run: {result['model']} on {result['task']}", show_header=False)
    share = result["trainable_params"] / max(result["total_params"], 1)
    rows = {
        "rank / targets": f"{result['rank']} / {','.join(result['targets']) or '-'}"
        + (" (full fine-tuning)" if result["full_finetune"] else ""),
        "alpha / scaling / seed": f"{result['alpha']} / {result['scaling']} / {result['seed']}",
        "trainable / total params": f"{result['trainable_params']:,} / {result['total_params']:,} ({share:.3%})",
        **{f"final {k}": _fmt(v) for k, v in result["final"].items()},
        f"best {result['main_metric']} (step)": f"{_fmt(result['best'][result['main_metric']])} ({result['best']['step']})",
        "steps / wall time": f"{result['steps']} / {result['wall_time_s']:.1f} s",
    }
    for key, value in rows.items():
        table.add_row(key, value)
    Console().print(table)

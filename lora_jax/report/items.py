"""The paper items a report compares with: named on the command line or in the runs' config.

The runs themselves are `lora_jax.runs.record.RunRecord`s (`read_runs`).
"""

from __future__ import annotations

import lora_jax.report.paper as paper
from lora_jax.runs.record import RunRecord


class ReportInputError(ValueError):
    """Bad input to the report: an unknown paper table or figure."""


def check_paper_items(names: list[str], where: str) -> list[str]:
    """`names` with duplicates removed; an unknown name raises `ReportInputError`."""
    out: list[str] = []
    for name in names:
        key = name.strip().lower()
        if key not in paper.ITEMS:
            raise ReportInputError(
                f"paper item {name!r} ({where}) is unknown; allowed: "
                f"{', '.join(paper.ITEMS)}. Fix: `--paper table6` (several: `--paper table6 fig3`)."
            )
        if key not in out:
            out.append(key)
    return out


def paper_items(runs: list[RunRecord], override: list[str] | None = None) -> list[str]:
    """The paper items to compare with: `override` if given, else those the runs' configs name."""
    if override:
        names = [n for arg in override for n in arg.split(",") if n.strip()]
        return check_paper_items(names, "from --paper")
    found: list[str] = []
    for run in runs:
        found += check_paper_items(run.paper, f"in {run.folder.config}")
    return list(dict.fromkeys(found))

"""The finished runs of a sweep folder, with the values a report needs from each.

A run's main metric is read at two points: at its best evaluation step (`metrics["best"]`,
the paper's "best epoch") and at the final step. A metric measured only once, at the end of
training (BLEU of decoded text: `lora_jax.train` fills `best` with it only when the best step
is the last one), has no best step of its own; for it both values are the final one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from lora_jax import paper
from lora_jax.sweep import read_runs


class ReportInputError(ValueError):
    """Bad input to the report (missing folder, no finished run, unknown paper table)."""


@dataclass(frozen=True)
class Run:
    """One finished run: its folder, `metrics.json` and resolved `config.yaml`.

    Attributes:
        name: the run folder's name (Hydra's override string).
        run_dir: the run folder.
        metrics: the parsed `metrics.json`.
        config: the resolved `config.yaml` as a plain dict ({} when missing).
        eval_steps: how many evaluations logged the main metric (from `history.jsonl`;
            None when the history is missing).
    """

    name: str
    run_dir: Path
    metrics: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    eval_steps: int | None = None

    @property
    def main_metric(self) -> str:
        return self.metrics["main_metric"]

    @property
    def seed(self) -> int:
        return int(self.metrics["seed"])

    @property
    def rank(self) -> int:
        return int(self.metrics["rank"])

    @property
    def targets(self) -> tuple[str, ...]:
        """The adapted targets; () for runs without LoRA (rank 0)."""
        return tuple(self.metrics["targets"]) if self.rank > 0 else ()

    @property
    def end_only(self) -> bool:
        """Whether the main metric was measured only at the end (so best = final)."""
        best = self.metrics["best"].get(self.main_metric)
        return best is None or (self.eval_steps is not None and self.eval_steps <= 1)

    def value(self, at: str = "best", metric: str | None = None) -> float | None:
        """`metric` (default: the main one) at the best step or the final step."""
        metric = metric or self.main_metric
        if at not in ("best", "final"):
            raise ValueError(f"at={at!r} is not valid; allowed: best, final.")
        if at == "best" and not (metric == self.main_metric and self.end_only):
            v = self.metrics["best"].get(metric)
        else:
            v = self.metrics["final"].get(metric)
        return None if v is None else float(v)

    @property
    def paper(self) -> list[str]:
        """The paper items the run's config names (`paper: [...]`; [] in older sweeps)."""
        return [str(p) for p in self.config.get("paper") or []]


def _eval_count(run_dir: Path, metric: str) -> int | None:
    history = run_dir / "history.jsonl"
    if not history.exists():
        return None
    key = f"eval/{metric}"
    steps = set()
    for line in history.read_text().splitlines():
        if key in line:  # cheap filter before parsing
            row = json.loads(line)
            if row.get(key) is not None:
                steps.add(row["step"])
    return len(steps)


def load_runs(sweep_dir: str | Path) -> list[Run]:
    """Every finished run in `sweep_dir`, sorted by folder name.

    Raises:
        ReportInputError: the folder is missing or holds no finished run.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ReportInputError(
            f"sweep folder {str(sweep_dir)!r} does not exist; pass a folder made by "
            "`python -m experiments.sweep` (e.g. outputs/sweeps/<id>)."
        )
    entries = read_runs(sweep_dir)
    if not entries:
        raise ReportInputError(
            f"{str(sweep_dir)!r} holds no finished run (no <run>/metrics.json with status "
            "complete); finish the sweep first: run the same `python -m experiments.sweep ...` "
            f"command again with hydra.sweep.dir={sweep_dir} (finished runs are skipped)."
        )
    runs = []
    for e in entries:
        run_dir = Path(e["run_dir"])
        config_file = run_dir / "config.yaml"
        config = OmegaConf.to_container(OmegaConf.load(config_file)) if config_file.exists() else {}
        runs.append(
            Run(
                name=e["name"],
                run_dir=run_dir,
                metrics=e["metrics"],
                config=config,
                eval_steps=_eval_count(run_dir, e["metrics"]["main_metric"]),
            )
        )
    return runs


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


def paper_items(runs: list[Run], override: list[str] | None = None) -> list[str]:
    """The paper items to compare with: `override` if given, else those the runs' configs name."""
    if override:
        names = [n for arg in override for n in arg.split(",") if n.strip()]
        return check_paper_items(names, "from --paper")
    found: list[str] = []
    for run in runs:
        found += check_paper_items(run.paper, f"in {run.run_dir / 'config.yaml'}")
    return list(dict.fromkeys(found))

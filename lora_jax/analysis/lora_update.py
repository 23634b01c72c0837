"""One LoRA update to analyse: an adapter and, for our runs, the run folder that trained it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lora_jax.peft_adapter import Adapter
from lora_jax.runs.record import RunRecord


@dataclass(frozen=True)
class Update:
    """One LoRA update to analyse: an adapter and, for our runs, the run that trained it."""

    name: str
    adapter: Adapter
    record: RunRecord | None = None

    @property
    def rank(self) -> int:
        """The run's rank, or the largest rank of the adapter's matrices."""
        if self.record is not None:
            return self.record.rank
        return max(a.shape[1] for a, _ in self.adapter.factors.values())

    @property
    def seed(self) -> int | None:
        return None if self.record is None else self.record.seed

    @property
    def folder(self) -> Path:
        return self.record.run_dir if self.record is not None else self.adapter.folder

"""Where a run's wall time goes: `metrics.json`'s `time_split_s`.

Phases: `setup` (model, data, optimizer), `steps` (batches in, train steps, the loss read
back), `eval`, `save` (checkpoints, the adapter's export), `spectra`; and `compile`, every
XLA compile of the run counted apart from the phase it happened in (a JAX monitoring listener
on the backend-compile event; a program the persistent cache had costs no compile). The
phases and `other` (what lies between them: logging, the progress bar) sum to `wall_time_s`.
A fused group's members share one clock: each member's split is the group's.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator

from lora_jax.train.compiles import compiled_seconds, watch_compiles


class TimeSplit:
    """A run's clock: `with split.phase("eval"): ...`, then `split.seconds()`."""

    def __init__(self) -> None:
        watch_compiles()  # also hands each compile's scratch back (train.compiles)
        self.start = time.perf_counter()
        self._seconds: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        began, compiled = time.perf_counter(), compiled_seconds()
        try:
            yield
        finally:
            compiling = compiled_seconds() - compiled
            self._seconds["compile"] += compiling
            self._seconds[name] += time.perf_counter() - began - compiling

    def wall(self) -> float:
        return time.perf_counter() - self.start

    def seconds(self) -> dict[str, float]:
        """Seconds per phase so far, `other` the rest of the wall time."""
        split = {name: round(s, 3) for name, s in sorted(self._seconds.items())}
        return {**split, "other": round(self.wall() - sum(self._seconds.values()), 3)}

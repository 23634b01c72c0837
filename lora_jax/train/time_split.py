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
import functools
import time
from collections import defaultdict
from collections.abc import Iterator

from lora_jax.train.heap import COMPILE_EVENT

_compiled = [0.0]  # seconds XLA has spent compiling in this process


@functools.cache
def _count_compiles() -> None:
    import jax

    def listener(event: str, seconds: float, **_: object) -> None:
        if event == COMPILE_EVENT:
            _compiled[0] += seconds

    jax.monitoring.register_event_duration_secs_listener(listener)


class TimeSplit:
    """A run's clock: `with split.phase("eval"): ...`, then `split.seconds()`."""

    def __init__(self) -> None:
        _count_compiles()
        self.start = time.perf_counter()
        self._seconds: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        began, compiled = time.perf_counter(), _compiled[0]
        try:
            yield
        finally:
            compiling = _compiled[0] - compiled
            self._seconds["compile"] += compiling
            self._seconds[name] += time.perf_counter() - began - compiling

    def wall(self) -> float:
        return time.perf_counter() - self.start

    def seconds(self) -> dict[str, float]:
        """Seconds per phase so far, `other` the rest of the wall time."""
        split = {name: round(s, 3) for name, s in sorted(self._seconds.items())}
        return {**split, "other": round(self.wall() - sum(self._seconds.values()), 3)}

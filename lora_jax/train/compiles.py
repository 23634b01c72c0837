"""What each XLA compile of this process leaves behind, seen by one JAX monitoring listener:

- its seconds, summed (`compiled_seconds`): a run's time split counts compiling apart from
  the phase it happened in (`lora_jax.train.time_split`);
- its freed scratch, handed back (`give_back_heap`). Compiling allocates up to hundreds of MB
  with malloc and frees it at the end; glibc keeps those pages in its heap (under `make
  sweep`'s allocator setting, `trim_threshold` is 4 GB: never on its own), and the next
  compile's scratch lands beside them rather than in them. A MiniLM run's end-of-training
  evaluation compiles one program per padded length (`data.pad=bucket`): its resident memory
  rose from 0.6 to 1.9-3.4 GB, all of it free heap. `malloc_trim(0)` after each compile
  returns every free page, wherever it sits.

A program the persistent compilation cache had is not compiled: it costs neither.
"""

from __future__ import annotations

import functools

from lora_jax.train.memory import give_back_heap

# jax._src.dispatch.BACKEND_COMPILE_EVENT: recorded when XLA has compiled a program.
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_TRIM_AFTER_S = 0.05  # a trim walks the heap (~ms): not after each tiny op-by-op program
_compiled = [0.0]  # seconds XLA has spent compiling in this process, once watched


@functools.cache
def watch_compiles() -> None:
    """From now on in this process, sum each XLA compile's seconds and hand its scratch back
    (once per process)."""
    import jax

    def listener(event: str, seconds: float, **_: object) -> None:
        if event == COMPILE_EVENT:
            _compiled[0] += seconds
            if seconds >= _TRIM_AFTER_S:
                give_back_heap()

    jax.monitoring.register_event_duration_secs_listener(listener)


def compiled_seconds() -> float:
    """Seconds XLA has spent compiling in this process since `watch_compiles`."""
    return _compiled[0]

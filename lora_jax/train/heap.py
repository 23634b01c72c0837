"""Handing the compiler's freed scratch back to the system.

Compiling an XLA program allocates up to hundreds of MB of scratch with malloc and frees it at
the end; glibc keeps those pages in its heap (under `make sweep`'s allocator setting,
`trim_threshold` is 4 GB: never on its own), and the next compile's scratch lands beside them
rather than in them. A MiniLM run's end-of-training evaluation compiles one program per padded
length (`data.pad=bucket`): its resident memory rose from 0.6 to 1.9-3.4 GB, all of it free
heap. `malloc_trim(0)` after each compile returns every free page, wherever it sits.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools

# jax._src.dispatch.BACKEND_COMPILE_EVENT: recorded when XLA has compiled a program (not when
# the persistent cache had it).
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_MIN_SECONDS = 0.05  # a trim walks the heap (~ms): not after each of the tiny op-by-op programs


def give_back_heap() -> None:
    """Return glibc malloc's free heap pages to the system (`malloc_trim(0)`); a no-op where
    there is no glibc (macOS, musl)."""
    with contextlib.suppress(OSError, AttributeError):
        _libc().malloc_trim(0)


@functools.cache
def give_back_heap_after_compiles() -> None:
    """From now on in this process, `give_back_heap` after every XLA compile (once per process:
    a JAX monitoring listener)."""
    import jax

    def listener(event: str, seconds: float, **_: object) -> None:
        if event == COMPILE_EVENT and seconds >= _MIN_SECONDS:
            give_back_heap()

    jax.monitoring.register_event_duration_secs_listener(listener)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")

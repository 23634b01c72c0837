"""A process's memory: its peak resident set (`metrics.json`'s `peak_rss_mb`) and glibc
malloc's free heap handed back to the system (`give_back_heap`, after each compile:
`lora_jax.train.compiles`)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import resource
import sys


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (the kernel's `ru_maxrss`). Jobs that
    share a process (a sweep's, under the fused or the basic launcher) share it: each sees the
    largest so far."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes there, KB here


def give_back_heap() -> None:
    """Return glibc malloc's free heap pages to the system (`malloc_trim(0)`); a no-op where
    there is no glibc (macOS, musl)."""
    with contextlib.suppress(OSError, AttributeError):
        _libc().malloc_trim(0)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")

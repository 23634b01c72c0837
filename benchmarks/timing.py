"""Timing shared by our side and the PEFT side of the benchmarks (no JAX or torch import)."""

from __future__ import annotations

import statistics
import time


def timed(fn, steps: int, warmup: int = 3, cpu: list | None = None) -> list[float]:
    """Wall seconds of `steps` calls after `warmup`; `cpu` receives each call's process CPU
    seconds (all threads, user + system): the work done, which other load does not inflate."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - start)
        if cpu is not None:
            cpu.append(time.process_time() - start_cpu)
    return times


def step_summary(times: list[float], cpu: list[float], steps: int, tokens: int) -> dict:
    """The step-time fields both sides of the PEFT comparison report, from `timed`'s lists."""
    median = statistics.median(times)
    return {
        "step_s_median": median,
        "step_s_min": min(times),
        "step_s_max": max(times),
        "cpu_s_per_step_median": statistics.median(cpu),
        "steps": steps,
        "tokens_per_s": tokens / median,
    }

"""Step by step, where a real training run's malloc heap goes: when and why the one-arena
allocator setting (`FAST_MALLOC`) comes to hold a second copy of XLA's per-step scratch.

    python -m benchmarks.heap_trace                        # FAST_MALLOC, 200 steps
    python -m benchmarks.heap_trace --malloc LEAN_MALLOC --steps 60
    python -m benchmarks.heap_trace --tunables glibc.malloc.arena_max=1:glibc.malloc.tcache_count=0

The run is `benchmarks.real_run`'s (`python -m experiments.train model=minilm rank=8`, a sweep
job's work cut to `--steps`, one evaluation and checkpoint at the end), in a child process
under the allocator setting (glibc reads `GLIBC_TUNABLES` only at start), with its train loop
watched: before and after each train step, evaluation, checkpoint and spectra, the process's
RSS and peak, and glibc's heap (`mallinfo2`: its size, in use, free, and the free top chunk);
and each XLA compile with the step it came at. JSON in benchmarks/results/heap_trace-<time>.json:
the records, the steps where the heap grew by at least `--growth-mb`, the peak and the split.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import itertools
import json
import os
import runpy
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.real_run import ROOT, job_overrides, makefile_setting

_FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd")
_FIELDS += ("usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _FIELDS]


@functools.cache
def _mallinfo2() -> Callable[[], _Mallinfo2]:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _Mallinfo2
    return libc.mallinfo2


def heap_mb() -> dict:
    """glibc's heap now (`mallinfo2`), in MB: its size (sbrk'd and mmapped), in use, free, and
    the free chunk at its top (what a trim could give back without moving anything)."""
    m = _mallinfo2()()
    return {
        "heap_mb": (m.arena + m.hblkhd) >> 20,
        "in_use_mb": (m.uordblks + m.hblkhd) >> 20,
        "free_mb": m.fordblks >> 20,
        "top_mb": m.keepcost >> 20,
    }


def proc_status_mb() -> dict:
    """This process's memory from /proc/self/status, in MB: resident now (VmRSS), peak so far
    (VmHWM), and the resident split into anonymous, file-backed and shared pages."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
            out[key] = int(value.split()[0]) // 1024
    return out


def child(out_path: str, overrides: list[str]) -> None:
    """Run `experiments.train` here, writing one JSON line per watched event to `out_path`."""
    import jax

    import lora_jax.train.runner as runner

    out, step = Path(out_path), [0]

    def record(event: str, **extra) -> None:
        status = proc_status_mb()
        row = {"t_s": round(time.perf_counter(), 3), "step": step[0], "event": event}
        row |= {"rss_mb": status["VmRSS"], "peak_mb": status["VmHWM"], **heap_mb(), **extra}
        with out.open("a") as f:  # appended as it happens: a crashed run keeps its trace
            f.write(json.dumps(row) + "\n")

    def on_compile(event: str, seconds: float, **kw) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            record("compile", seconds=round(seconds, 3), program=kw.get("fun_name"))

    def watched(name: str, fn):
        def call(*args, **kwargs):
            record(f"before {name}")
            result = fn(*args, **kwargs)
            record(f"after {name}")
            return result

        return call

    def train_loop(engine, logs, desc, clock):
        train = watched("step", engine.train)

        def train_step(batch, at):
            step[0] = at + 1
            return train(batch, at)

        engine.train = train_step
        engine.evaluate = watched("eval", engine.evaluate)
        for log in logs:
            log.checkpoint = watched("checkpoint", log.checkpoint)
            log.log_spectra = watched("spectra", log.log_spectra)
        return loop(engine, logs, desc, clock)

    loop, runner.train_loop = runner.train_loop, train_loop
    jax.monitoring.register_event_duration_secs_listener(on_compile)
    sys.argv = ["experiments.train", *overrides]
    runpy.run_module("experiments.train", run_name="__main__")


def growths(records: list[dict], at_least_mb: int) -> list[dict]:
    """Where the heap grew by at least `at_least_mb` between two records."""
    return [
        {"step": b["step"], "event": b["event"], "heap_mb": [a["heap_mb"], b["heap_mb"]]}
        for a, b in itertools.pairwise(records)
        if b["heap_mb"] - a["heap_mb"] >= at_least_mb
    ]


def trace(tunables: str, steps: int, growth_mb: int) -> dict:
    env = {**os.environ, "GLIBC_TUNABLES": tunables}
    with tempfile.TemporaryDirectory() as tmp:
        events = Path(tmp) / "events.jsonl"
        cmd = [sys.executable, "-m", "benchmarks.heap_trace", "--child", str(events), "--"]
        cmd += job_overrides(steps, eval_every=steps, run_dir=f"{tmp}/run")
        done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"the traced run failed ({done.returncode}):\n{done.stderr[-3000:]}")
        records = [json.loads(line) for line in events.read_text().splitlines()]
        metrics = json.loads((Path(tmp) / "run" / "metrics.json").read_text())
    return {
        "benchmark": "heap_trace",
        "glibc_tunables": tunables,
        "steps": steps,
        "peak_rss_mb": max(r["peak_mb"] for r in records),
        "heap_growths": growths(records, growth_mb),
        "time_split_s": metrics["time_split_s"],
        "records": records,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--malloc", default="FAST_MALLOC", help="a Makefile setting's name")
    which.add_argument("--tunables", help="a GLIBC_TUNABLES value to trace instead")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--growth-mb", type=int, default=100)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args, overrides = parser.parse_known_args(argv)
    if args.child:
        return child(args.child, [o for o in overrides if o != "--"])
    tunables = args.tunables or makefile_setting(args.malloc)
    result = trace(tunables, args.steps, args.growth_mb)
    path = Path(args.out) / f"heap_trace-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(f"peak RSS {result['peak_rss_mb']} MB; the heap grew by >= {args.growth_mb} MB at:")
    for g in result["heap_growths"]:
        print(
            f"  step {g['step']:>4} {g['event']:<14} {g['heap_mb'][0]:>6} -> {g['heap_mb'][1]} MB"
        )
    print(path)


if __name__ == "__main__":
    main()

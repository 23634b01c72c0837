"""lora_jax vs PEFT, side by side (`python -m benchmarks.run`, the default suite; the procedure
and what the JSON holds are in `benchmarks/run.py`'s docstring, which `--help` prints): interleaved
rounds of fresh `--one` processes of both sides, their medians and ratios, the table, and the JSON
in `benchmarks/results/versus_peft-<time>.json`.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.real_run import print_real_run, real_run
from benchmarks.step import BATCH, CPU_FLAGS, DTYPES, LENGTH, VERSUS_MODES


def cpu_info() -> dict:
    """CPU model, the SIMD/AMX flags that decide the matmul kernels, and core counts."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {
        "model_name": model,
        "flags": {f: f in flags for f in CPU_FLAGS},
        "os_cpu_count": os.cpu_count(),
        "sched_affinity": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else None,
    }


def versus_dtypes(asked: str, flags: dict[str, bool]) -> list[str]:
    """The dtypes to compare: `asked` (comma list), or for `auto` float32, and bfloat16 where
    the CPU multiplies it in hardware (AVX512-BF16 or AMX). Without it torch's bfloat16 4096²
    matmul alone takes minutes (AMD EPYC Zen 3, AVX2) and measures an emulation."""
    if asked != "auto":
        return asked.split(",")
    native = flags.get("avx512_bf16") or flags.get("amx_bf16")
    return ["float32", "bfloat16"] if native else ["float32"]


def _median_row(rows: list[dict]) -> dict:
    times = [r["step_s_median"] for r in rows]
    return {
        "step_s_median": statistics.median(times),
        "step_s_rounds": times,
        "cpu_s_per_step_median": statistics.median(r["cpu_s_per_step_median"] for r in rows),
        "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in rows),
        "peak_rss_mb_rounds": [r["peak_rss_mb"] for r in rows],
        "trainable_params": rows[0]["trainable_params"],
    }


def versus(args, env: dict) -> dict:
    """lora_jax vs PEFT, interleaved rounds of fresh processes (see benchmarks/run.py's
    docstring)."""
    cpu = cpu_info()
    modes, dtypes = args.modes.split(","), versus_dtypes(args.dtypes, cpu["flags"])
    bad = set(modes) - set(VERSUS_MODES) or set(dtypes) - set(DTYPES)
    if bad:
        raise SystemExit(
            f"{sorted(bad)} not valid here; modes: {', '.join(VERSUS_MODES)}; dtypes: "
            f"{', '.join(DTYPES)}."
        )
    module = {"ours": "benchmarks.run", "peer": "benchmarks.peer_peft"}
    # --cpus 0: both sides on one core (torch then runs 1 thread, XLA one worker): on a shared
    # machine the CPU seconds of a 1-core step hardly depend on the other load.
    cpus = {int(c) for c in args.cpus.split(",")} if args.cpus else None

    def child(side: str, job: str) -> dict:
        load = os.getloadavg()[0]
        start = time.perf_counter()
        cmd = [sys.executable, "-m", module[side], "--one", job, "--steps", str(args.steps)]
        cmd += ["--dtypes", ",".join(dtypes)] if job == "matmul" else []
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env=env,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
        if proc.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row.update(side=side, load_1min_before=load, wall_s=time.perf_counter() - start)
        print(
            f"  {side:<4} {job:<17} "
            + (
                f"{1e3 * row['step_s_median']:6.0f} ms  CPU {row['cpu_s_per_step_median']:5.2f} s"
                f"  RSS {row['peak_rss_mb']:5.0f} MB"
                if "step_s_median" in row
                else ", ".join(f"{k} {v:.0f}" for k, v in row["matmul_gflops"].items()) + " GFLOP/s"
            )
            + f"  (load {load:.2f}, {row['wall_s']:.0f} s)",
            flush=True,
        )
        return row

    load_before = os.getloadavg()
    jobs = []
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}", flush=True)
        order = ("ours", "peer") if r % 2 == 0 else ("peer", "ours")
        for side in order:
            jobs.append({"round": r, **child(side, "matmul")})
        for mode in modes:
            for dtype in dtypes:
                for side in order:
                    jobs.append({"round": r, **child(side, f"{mode}:{dtype}")})
    load_after = os.getloadavg()

    steps = {}
    for mode in modes:
        for dtype in dtypes:
            key = f"{mode}:{dtype}"
            sides = {
                side: _median_row(
                    [
                        j
                        for j in jobs
                        if j["side"] == side and j.get("mode") == mode and j.get("dtype") == dtype
                    ]
                )
                for side in ("ours", "peer")
            }
            ours, peer = sides["ours"], sides["peer"]
            steps[key] = {
                **sides,
                "ratio_step_time_ours_over_peer": ours["step_s_median"] / peer["step_s_median"],
                "ratio_step_time_paired_rounds": [
                    o / p for o, p in zip(ours["step_s_rounds"], peer["step_s_rounds"], strict=True)
                ],
                "ratio_peak_rss_ours_over_peer": ours["peak_rss_mb"] / peer["peak_rss_mb"],
                # CPU seconds per step (all threads): less sensitive to other load than wall time
                "ratio_cpu_s_ours_over_peer": ours["cpu_s_per_step_median"]
                / peer["cpu_s_per_step_median"],
            }
        if "float32" in dtypes and "bfloat16" in dtypes:  # ours float32 against PEFT's best
            steps[f"{mode}:float32"]["ratio_step_time_ours_float32_over_peer_bfloat16"] = (
                steps[f"{mode}:float32"]["ours"]["step_s_median"]
                / steps[f"{mode}:bfloat16"]["peer"]["step_s_median"]
            )
    matmul = {}
    for side in ("ours", "peer"):
        rows = [j["matmul_gflops"] for j in jobs if j["side"] == side and "matmul_gflops" in j]
        matmul[side] = {dt: statistics.median(row[dt] for row in rows) for dt in rows[0]}
    peer_matmul = next(j for j in jobs if j["side"] == "peer" and "matmul_gflops" in j)
    import jax  # only for its version; the timed processes are the children

    return {
        "benchmark": "versus_peft",
        "cpu": cpu,
        "batch": BATCH,
        "length": LENGTH,
        "dtypes": dtypes,
        "steps_per_job": args.steps,
        "rounds": args.rounds,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "glibc_tunables": env.get("GLIBC_TUNABLES"),
        "xla_flags": env.get("XLA_FLAGS"),
        "cpus": sorted(cpus) if cpus else "all",
        "threads": {
            "torch_intra_op": peer_matmul["torch_threads"],
            "xla_cpu": "one intra-op pool of os.cpu_count() threads (XLA:CPU default)",
            "omp_num_threads": env.get("OMP_NUM_THREADS"),
        },
        "versions": {"jax": jax.__version__, **peer_matmul["versions"]},
        "matmul_gflops_4096": {
            **matmul,
            "ratio_ours_over_peer": {dt: matmul["ours"][dt] / matmul["peer"][dt] for dt in dtypes},
        },
        "train_step": steps,
        "jobs": jobs,
    }


def print_versus(result: dict) -> None:
    cpu, m = result["cpu"], result["matmul_gflops_4096"]
    flags = ", ".join(f for f, on in cpu["flags"].items() if on) or "none of " + ", ".join(
        CPU_FLAGS
    )
    print(f"\nCPU: {cpu['model_name']}, {cpu['os_cpu_count']} cores ({flags})")
    print(
        f"load average before {result['load_average_before'][0]:.2f}, after "
        f"{result['load_average_after'][0]:.2f}; torch threads {result['threads']['torch_intra_op']}"
        f"; cores used {result['cpus']}; GLIBC_TUNABLES={result['glibc_tunables']}"
        f"; XLA_FLAGS={result['xla_flags']}"
    )
    print(f"{'matmul 4096² GFLOP/s':<22} {'ours (XLA)':>10} {'PEFT (torch)':>12} {'ours/PEFT':>9}")
    for dt in result["dtypes"]:
        print(
            f"  {dt:<20} {m['ours'][dt]:10.0f} {m['peer'][dt]:12.0f} "
            f"{m['ratio_ours_over_peer'][dt]:9.2f}"
        )
    if "bfloat16_f32acc" in m["ours"]:
        print(f"  {'bf16 -> f32 (XLA)':<20} {m['ours']['bfloat16_f32acc']:10.0f}")
    print(
        f"{'train step':<22} {'ours ms':>10} {'PEFT ms':>12} {'ours/PEFT':>9} {'paired':>13}"
        f" {'ours MB':>8} {'PEFT MB':>8} {'RSS ratio':>9} {'CPU-s ratio':>11}"
    )
    for key, row in result["train_step"].items():
        paired = row["ratio_step_time_paired_rounds"]
        print(
            f"  {key:<20} {1e3 * row['ours']['step_s_median']:10.0f} "
            f"{1e3 * row['peer']['step_s_median']:12.0f} {row['ratio_step_time_ours_over_peer']:9.2f}"
            f" {min(paired):6.2f}-{max(paired):<6.2f} {row['ours']['peak_rss_mb']:8.0f}"
            f" {row['peer']['peak_rss_mb']:8.0f} {row['ratio_peak_rss_ours_over_peer']:9.2f}"
            f" {row['ratio_cpu_s_ours_over_peer']:11.2f}"
        )
        if "ratio_step_time_ours_float32_over_peer_bfloat16" in row:
            print(
                f"  {'':<20} ours float32 / PEFT bfloat16: "
                f"{row['ratio_step_time_ours_float32_over_peer_bfloat16']:.2f}"
            )


def run_versus(args, env: dict) -> Path:
    """`versus`, its JSON written to `benchmarks/results/versus_peft-<time>.json`, the table
    printed; returns the JSON's path."""
    result = versus(args, env)
    if args.real_run_steps:
        print("real runs (benchmarks/real_run.py)", flush=True)
        result["real_run"] = real_run(args.real_run_steps, args.real_run_steps // 2, args.rounds)
    out = Path(__file__).parent / "results" / f"versus_peft-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print_versus(result)
    if "real_run" in result:
        print_real_run(result["real_run"])
    print(out)
    return out

"""Speed and memory of a training step on the MiniLM default (batch 32, length 64), against PEFT.

    python -m benchmarks.run                 # = make bench: lora_jax vs PEFT, one JSON, a table
    python -m benchmarks.run --suite ours    # lora_jax alone: every mode + inference latency

**Versus PEFT (the default).** lora_jax's train step and PEFT's (`benchmarks/peer_peft.py`,
torch CPU) on the same MiniLM from the same local files, the same batch, dropout 0 everywhere,
AdamW, HF's head (pooler + classifier: `pooling="cls"` on our side): LoRA r=8 on Wq,Wv and full
fine-tuning, float32, and bfloat16 where the CPU has AVX512-BF16 or AMX (`--dtypes`; PEFT: `torch.autocast("cpu", dtype=torch.bfloat16)`, weights
and optimizer float32; ours: `model.dtype=bfloat16`, the projections as bf16 x bf16 -> float32
dots, the frozen base stored in bfloat16, what trains and the optimizer float32; under full
fine-tuning float32 master weights). `--rounds` rounds; in each, every
(mode, dtype) runs once per side, the two sides back to back, each in a fresh process, the side
that goes first alternating, so drift in machine load hits both alike. Each process reports
the median of `--steps` steps after 3 warm-up steps and its own peak RSS (ours also where it
goes: RSS before and after compiling, after `malloc_trim` hands the compiler's freed heap
back, and XLA's per-step scratch, `xla_temp_mb`); each round also
measures both sides' matmul peak (4096², in the same dtypes) in fresh processes. The JSON
(`benchmarks/results/versus_peft-<time>.json`) holds every job, the medians over rounds, the
ratios ours/peer (step time, peak RSS; of the medians and paired per round), the CPU model and
flags, thread counts, GLIBC_TUNABLES, XLA_FLAGS and the load average before and after. Then
`real_run`: the peak RSS of a whole training run on each side, evaluations and checkpoints
included (`benchmarks/real_run.py`, `--real-run-steps`, the same rounds).

**`--suite ours`.** For each mode (LoRA r = 1, 8, 64 on Wq,Wv; head only; full fine-tuning) a
fresh process loads MiniLM, compiles the real train step (`lora_jax.train.steps.make_train_step`) and
times it: median of `--steps` steps after warm-up, tokens/s, model FLOPs per step (XLA's cost
analysis of the compiled step), the fraction of this machine's float32 matmul peak (measured in
the same run), optimizer-state bytes and the process's peak RSS. Then merged-adapter inference
latency vs the base model (the paper's "no added latency").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.step import (
    BATCH,
    LENGTH,
    MODES,
    VERSUS_MODES,
    bench_inference,
    bench_mode,
    matmul_peak,
    matmul_peaks,
)
from benchmarks.versus_peft import cpu_info, run_versus, versus_dtypes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--suite",
        choices=("versus", "ours"),
        default="versus",
        help="versus: lora_jax vs PEFT (default); ours: every lora_jax mode + inference",
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="steps per job (10 versus, 20 ours)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="versus: interleaved rounds")
    parser.add_argument(
        "--modes",
        default=None,
        help=f"comma list; versus: {', '.join(VERSUS_MODES)}; ours: {', '.join(MODES)}",
    )
    parser.add_argument(
        "--dtypes",
        default="auto",
        help="versus: comma list of float32,bfloat16 (ours: model.dtype; PEFT: torch.autocast "
        "bfloat16); auto: float32, and bfloat16 where the CPU has AVX512-BF16 or AMX",
    )
    parser.add_argument(
        "--cpus", default=None, help="versus: pin both sides' processes to these cores, e.g. 0"
    )
    parser.add_argument(
        "--glibc-tunables",
        default=None,
        help="GLIBC_TUNABLES for the timed processes, e.g. glibc.malloc.arena_max=1:"
        "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967295 (reuse freed memory)",
    )
    parser.add_argument(
        "--real-run-steps",
        type=int,
        default=20,
        help="versus: also a real training run of this many steps on each side, evaluated at "
        "the middle and the end, for peak RSS (benchmarks/real_run.py); 0 skips it",
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one job in this process
    args = parser.parse_args()
    if args.one:
        if args.one == "matmul":
            row = matmul_peaks(versus_dtypes(args.dtypes, cpu_info()["flags"]))
        elif args.one == "inference":
            row = bench_inference(args.steps or 20)
        elif ":" in args.one:  # versus: MODE:DTYPE
            mode, dtype = args.one.split(":")
            row = bench_mode(mode, args.steps or 10, versus=True, dtype=dtype)
        else:
            row = bench_mode(args.one, args.steps or 20)
        print(json.dumps(row))
        return

    env = {**os.environ, **({"GLIBC_TUNABLES": args.glibc_tunables} if args.glibc_tunables else {})}
    if args.suite == "versus":
        args.steps = args.steps or 10
        args.modes = args.modes or ",".join(VERSUS_MODES)
        run_versus(args, env)
        return

    args.steps = args.steps or 20
    args.modes = args.modes or ",".join(MODES)
    unknown = set(args.modes.split(",")) - set(MODES)
    if unknown:
        raise SystemExit(f"--modes {sorted(unknown)} are not valid; allowed: {', '.join(MODES)}.")

    def child(mode: str) -> dict:
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.run", "--one", mode, "--steps", str(args.steps)],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        return json.loads(proc.stdout.strip().splitlines()[-1])

    peak = matmul_peak()
    rows = [child(m) for m in args.modes.split(",")]
    full = next((r for r in rows if r["mode"] == "full_ft"), None)
    for r in rows:
        r["fraction_of_matmul_peak"] = r["gflops_per_s"] / peak
        if full:
            r["optimizer_state_vs_full_ft"] = (
                r["optimizer_state_bytes"] / full["optimizer_state_bytes"]
            )
            r["step_time_vs_full_ft"] = r["step_s_median"] / full["step_s_median"]
    result = {
        "machine": platform.processor() or platform.machine(),
        "batch": BATCH,
        "length": LENGTH,
        "matmul_peak_gflops": peak,
        "glibc_tunables": env.get("GLIBC_TUNABLES"),
        "train_step": rows,
        "inference": child("inference"),
    }
    out = Path(__file__).parent / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"float32 matmul peak: {peak:.0f} GFLOP/s")
    print(
        f"{'mode':<10} {'step ms':>8} {'tok/s':>7} {'GFLOP/step':>10} {'% peak':>6} {'opt state':>11} {'vs FT':>7} {'RSS MB':>7}"
    )
    for r in rows:
        print(
            f"{r['mode']:<10} {1e3 * r['step_s_median']:8.0f} {r['tokens_per_s']:7.0f} {r['flops_per_step'] / 1e9:10.1f} "
            f"{100 * r['fraction_of_matmul_peak']:6.0f} {r['optimizer_state_bytes']:11,d} "
            f"{r.get('optimizer_state_vs_full_ft', float('nan')):7.4f} {r['peak_rss_mb']:7.0f}"
        )
    inf = result["inference"]["forward_s_median"]
    print("forward ms: " + ", ".join(f"{k} {1e3 * v:.1f}" for k, v in inf.items()))
    print(out)


if __name__ == "__main__":
    main()

"""Speed and memory of a training step on the MiniLM default (batch 32, length 64), against PEFT.

    python -m benchmarks.run                 # = make bench: lora_jax vs PEFT, one JSON, a table
    python -m benchmarks.run --suite ours    # lora_jax alone: every mode + inference latency

**Versus PEFT (the default).** lora_jax's train step and PEFT's (`benchmarks/peer_peft.py`,
torch CPU) on the same MiniLM from the same local files, the same batch, dropout 0 everywhere,
AdamW, HF's head (pooler + classifier: `pooling="cls"` on our side): LoRA r=8 on Wq,Wv and full
fine-tuning, float32 and bfloat16 (PEFT: `torch.autocast("cpu", dtype=torch.bfloat16)`, weights
and optimizer float32; ours: `model.dtype=bfloat16`, the projections as bf16 x bf16 -> float32
dots, the frozen base stored in bfloat16, what trains and the optimizer float32; under full
fine-tuning float32 master weights). `--rounds` rounds; in each, every
(mode, dtype) runs once per side, the two sides back to back, each in a fresh process, the side
that goes first alternating, so drift in machine load hits both alike. Each process reports
the median of `--steps` steps after 3 warm-up steps and its own peak RSS (ours also where it
goes: RSS before and after compiling, after `malloc_trim` hands the compiler's freed heap
back, and XLA's per-step scratch, `xla_temp_mb`); each round also
measures both sides' matmul peak (4096², float32 and bfloat16) in fresh processes. The JSON
(`benchmarks/results/versus_peft-<time>.json`) holds every job, the medians over rounds, the
ratios ours/peer (step time, peak RSS; of the medians and paired per round), the CPU model and
flags, thread counts, GLIBC_TUNABLES, XLA_FLAGS and the load average before and after.

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
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.timing import step_summary, timed

MODES = {
    "lora_r1": {"rank": 1},
    "lora_r8": {"rank": 8},
    "lora_r64": {"rank": 64},
    "head_only": {"rank": 0},
    "full_ft": {"rank": 0, "full_finetune": True},
}
BATCH, LENGTH = 32, 64
VERSUS_MODES = ("lora_r8", "full_ft")  # the modes PEFT runs too (benchmarks/peer_peft.py)
DTYPES = ("float32", "bfloat16")  # model.dtype on our side, autocast or not on PEFT's
CPU_FLAGS = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8")


def matmul_peak(n: int = 4096, steps: int = 5) -> float:
    """float32 GFLOP/s of an n x n matmul on the default device (the machine's practical peak)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    return 2 * n**3 / statistics.median(timed(lambda: f(a).block_until_ready(), steps)) / 1e9


def matmul_peaks(n: int = 4096, steps: int = 3) -> dict:
    """XLA's GFLOP/s on an n x n matmul, float32 and bfloat16 (as `peer_peft.matmul_peak`)."""
    import jax
    import jax.numpy as jnp

    out = {}
    for name, dt in (("float32", jnp.float32), ("bfloat16", jnp.bfloat16)):
        a = jax.random.normal(jax.random.key(0), (n, n), dt)
        f = jax.jit(lambda x: x @ x)
        s = statistics.median(timed(lambda f=f, a=a: f(a).block_until_ready(), steps, warmup=1))
        out[name] = 2 * n**3 / s / 1e9
    # bf16 operands, float32 accumulation and result: the dot XLA:CPU sends to AMX kernels
    f = jax.jit(lambda x: jnp.dot(x, x, preferred_element_type=jnp.float32))
    s = statistics.median(timed(lambda: f(a).block_until_ready(), steps, warmup=1))
    out["bfloat16_f32acc"] = 2 * n**3 / s / 1e9
    return {
        "side": "ours",
        "matmul_gflops": out,
        "jax": jax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS"),
    }


def rss_mb() -> float:
    """This process's resident set now (VmRSS), in MB; 0 where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def trim_malloc() -> None:
    """Return glibc malloc's free heap pages to the system (`malloc_trim(0)`); no-op elsewhere."""
    import contextlib
    import ctypes
    import ctypes.util

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


def _batch():
    import numpy as np

    rng = np.random.default_rng(0)
    return {
        "input_ids": rng.integers(1000, 20000, (BATCH, LENGTH)).astype(np.int32),
        "attention_mask": np.ones((BATCH, LENGTH), np.int32),
        "token_type_ids": np.zeros((BATCH, LENGTH), np.int32),
        "labels": rng.integers(0, 2, BATCH).astype(np.int32),
    }


def load_minilm(lora, versus: bool, dtype: str):
    """MiniLM with `lora` for a step benchmark; `versus`: PEFT's setting (dropout 0 everywhere
    and HF's head, pooler + classifier)."""
    import dataclasses

    from lora_jax import models

    if not versus:
        return models.load_pretrained("minilm", lora, num_labels=2, dtype=dtype)
    pre = models.load_pretrained(
        "minilm", lora, num_labels=2, pooling="cls", head_dropout=0.0, dtype=dtype
    )
    config = dataclasses.replace(pre.config, hidden_dropout=0.0, attention_dropout=0.0)
    return pre._replace(module=pre.module.clone(config=config), config=config)


def step_inputs(pre, spec: dict, dtype: str) -> tuple:
    """What one train step of `pre` in mode `spec` (`MODES`) takes: (parts, opt_state, step,
    batch, key), the frozen half cast to `dtype` as `lora_jax.train.setup` does."""
    import jax
    import optax

    from lora_jax import data as data_lib
    from lora_jax.partition import label_params, make_optimizer, split
    from lora_jax.train.objectives import classification
    from lora_jax.train.precision import cast_frozen
    from lora_jax.train.steps import make_train_step, step_compiler_options

    labels = label_params(
        pre.params, trainable=pre.head_rules, full_finetune=spec.get("full_finetune", False)
    )
    parts = cast_frozen(split(pre.params, labels), dtype)
    tx = make_optimizer(split(labels, labels).trainable, optax.adamw, 1e-4)
    opt_state = tx.init(parts.trainable)
    objective = classification(pre.module, data_lib.get_task("mr"))
    step = make_train_step(objective.loss_fn, tx, step_compiler_options())
    return parts, opt_state, step, jax.device_put(_batch()), jax.random.key(0)


def bench_mode(mode: str, steps: int, versus: bool = False, dtype: str = "float32") -> dict:
    """Time the real train step of one mode (run in its own process for a clean peak RSS).

    `versus`: PEFT's setting (benchmarks/peer_peft.py): dropout 0 everywhere and HF's head
    (pooler + classifier). `dtype`: lora_jax's `model.dtype` (float32 or bfloat16: mixed
    precision, the frozen half stored in bfloat16 as `lora_jax.train.setup` does).
    """

    import jax

    from lora_jax.lora import LoRAConfig
    from lora_jax.partition import count_params
    from lora_jax.train.steps import tree_bytes

    spec = MODES[mode]
    lora = LoRAConfig(rank=spec["rank"], targets="qv")
    pre = load_minilm(lora, versus, dtype)
    parts, opt_state, step, batch, key = step_inputs(pre, spec, dtype)
    # bfloat16: the float32 base is not the step's (its frozen half is now a bf16 copy).
    del pre
    rss_before_compile = rss_mb()
    compiled = step.lower(parts.trainable, parts.frozen, opt_state, batch, key).compile()
    cost = compiled.cost_analysis()
    flops = float((cost[0] if isinstance(cost, list) else cost).get("flops", 0.0))
    memory = compiled.memory_analysis()
    rss_after_compile = rss_mb()
    # The compiler's own scratch is freed but stays in malloc's heap: hand it back before the
    # steps, as a long run's loaders and evaluation would reuse it (glibc only; ~90 MB).
    trim_malloc()
    rss_before_steps = rss_mb()
    state = {"t": parts.trainable, "o": opt_state}
    losses = []

    def one():
        state["t"], state["o"], out = step(state["t"], parts.frozen, state["o"], batch, key)
        losses.append(float(out["loss"]))

    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    cpu: list[float] = []
    times = timed(one, steps, cpu=cpu)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / (steps + 3)
    median = statistics.median(times)
    if versus:
        return {
            "side": "ours",
            "mode": mode,
            "dtype": dtype,
            "trainable_params": count_params(parts.trainable),
            **step_summary(times, cpu, steps, BATCH * LENGTH),
            "flops_per_step": flops,
            "minor_page_faults_per_step": faults,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            # where the peak goes: the process before and after compiling, after handing the
            # compiler's freed scratch back, and XLA's per-step scratch (one block, each step)
            "rss_before_compile_mb": rss_before_compile,
            "rss_after_compile_mb": rss_after_compile,
            "rss_before_steps_mb": rss_before_steps,
            "xla_temp_mb": memory.temp_size_in_bytes / 2**20,
            "loss_first_last": [losses[0], losses[-1]],
        }
    spectra_s = None
    if spec["rank"]:  # the live rank logging: one jitted call every trainer.spectrum_every steps
        from lora_jax.analysis.adapter_spectra import adapter_spectra

        def spectra():
            jax.block_until_ready(
                adapter_spectra(state["t"], alpha=lora.alpha, scaling=lora.scaling)
            )

        spectra_s = statistics.median(timed(spectra, steps))
    return {
        "mode": mode,
        "rank": spec["rank"],
        "trainable_params": count_params(parts.trainable),
        "step_s_median": median,
        "step_s_p10": sorted(times)[len(times) // 10],
        "step_s_p90": sorted(times)[9 * len(times) // 10],
        "tokens_per_s": BATCH * LENGTH / median,
        "flops_per_step": flops,
        "gflops_per_s": flops / median / 1e9,
        "optimizer_state_bytes": tree_bytes(opt_state),
        # Pages touched for the first time per step: XLA:CPU maps fresh temp buffers each step.
        "minor_page_faults_per_step": faults,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "spectra_s_median": spectra_s,
        # overhead at the default trainer.spectrum_every = 50
        "spectra_overhead_at_every_50": spectra_s / (50 * median) if spectra_s else None,
    }


def bench_inference(steps: int) -> dict:
    """Forward latency: base model, LoRA r=8 unmerged, and the same adapter merged."""
    import jax
    import numpy as np

    from lora_jax import models
    from lora_jax.lora import LoRAConfig, merge

    lora = LoRAConfig(rank=8, targets="qv")
    adapted = models.load_pretrained("minilm", lora, num_labels=2)
    base = models.load_pretrained("minilm", LoRAConfig(rank=0), num_labels=2)
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda x: x, adapted.params)
    for path in ("q", "v"):  # non-zero B so the merged kernel really differs
        for i in range(adapted.config.num_layers):
            node = params["encoder"][f"layer_{i}"]["attention"][path]
            node["lora_b"] = rng.normal(0, 0.01, node["lora_b"].shape).astype(np.float32)
    merged = merge(params, alpha=lora.alpha)
    b = _batch()
    fns = {}
    for name, module, p in [
        ("base", base.module, base.params),
        ("lora_unmerged", adapted.module, params),
        ("lora_merged", base.module, merged),
    ]:
        f = jax.jit(
            lambda p, b, m=module: m.apply({"params": p}, b["input_ids"], b["attention_mask"])
        )
        f(p, b).block_until_ready()  # compile
        fns[name] = (f, p)
    # Interleaved rounds, so drift in machine load hits every variant alike.
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(steps):
        for name, (f, p) in fns.items():
            start = time.perf_counter()
            f(p, b).block_until_ready()
            times[name].append(time.perf_counter() - start)
    out = {name: statistics.median(t) for name, t in times.items()}
    diff = float(
        np.abs(
            np.asarray(
                jax.jit(
                    lambda p, b: base.module.apply(
                        {"params": p}, b["input_ids"], b["attention_mask"]
                    )
                )(merged, b)
            )
            - np.asarray(
                adapted.module.apply({"params": params}, b["input_ids"], b["attention_mask"])
            )
        ).max()
    )
    return {"forward_s_median": out, "merged_vs_unmerged_max_abs_diff": diff}


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
    """lora_jax vs PEFT, interleaved rounds of fresh processes (see the module docstring)."""
    modes, dtypes = args.modes.split(","), args.dtypes.split(",")
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
    matmul = {
        side: {
            dt: statistics.median(
                j["matmul_gflops"][dt] for j in jobs if j["side"] == side and "matmul_gflops" in j
            )
            for dt in (*DTYPES, "bfloat16_f32acc")
            if side == "ours" or dt in DTYPES
        }
        for side in ("ours", "peer")
    }
    peer_matmul = next(j for j in jobs if j["side"] == "peer" and "matmul_gflops" in j)
    import jax  # only for its version; the timed processes are the children

    return {
        "benchmark": "versus_peft",
        "cpu": cpu_info(),
        "batch": BATCH,
        "length": LENGTH,
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
            "ratio_ours_over_peer": {dt: matmul["ours"][dt] / matmul["peer"][dt] for dt in DTYPES},
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
    for dt in DTYPES:
        print(
            f"  {dt:<20} {m['ours'][dt]:10.0f} {m['peer'][dt]:12.0f} "
            f"{m['ratio_ours_over_peer'][dt]:9.2f}"
        )
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
        default=",".join(DTYPES),
        help="versus: float32,bfloat16 (ours: model.dtype; PEFT: torch.autocast bfloat16)",
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
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one job in this process
    args = parser.parse_args()
    if args.one:
        if args.one == "matmul":
            row = matmul_peaks()
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
        result = versus(args, env)
        out = (
            Path(__file__).parent / "results" / f"versus_peft-{time.strftime('%Y%m%d-%H%M%S')}.json"
        )
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        print_versus(result)
        print(out)
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

"""Speed and memory of a training step on the MiniLM default (batch 32, length 64).

    python -m benchmarks.run            # = make bench; prints a table, writes benchmarks/results/<time>.json

For each mode (LoRA r = 1, 8, 64 on Wq,Wv; head only; full fine-tuning) a fresh process loads
MiniLM, compiles the real train step (`lora_jax.train.steps.make_train_step`) and times it: median
of `--steps` steps after warm-up, tokens/s, model FLOPs per step (XLA's cost analysis of the
compiled step), the fraction of this machine's float32 matmul peak (measured in the same run),
optimizer-state bytes and the process's peak RSS. Then merged-adapter inference latency vs the
base model (the paper's "no added latency").
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

MODES = {
    "lora_r1": {"rank": 1},
    "lora_r8": {"rank": 8},
    "lora_r64": {"rank": 64},
    "head_only": {"rank": 0},
    "full_ft": {"rank": 0, "full_finetune": True},
}
BATCH, LENGTH = 32, 64


def _timed(fn, steps: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def matmul_peak(n: int = 4096, steps: int = 5) -> float:
    """float32 GFLOP/s of an n x n matmul on the default device (the machine's practical peak)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    return 2 * n**3 / statistics.median(_timed(lambda: f(a).block_until_ready(), steps)) / 1e9


def _batch():
    import numpy as np

    rng = np.random.default_rng(0)
    return {
        "input_ids": rng.integers(1000, 20000, (BATCH, LENGTH)).astype(np.int32),
        "attention_mask": np.ones((BATCH, LENGTH), np.int32),
        "token_type_ids": np.zeros((BATCH, LENGTH), np.int32),
        "labels": rng.integers(0, 2, BATCH).astype(np.int32),
    }


def bench_mode(mode: str, steps: int) -> dict:
    """Time the real train step of one mode (run in its own process for a clean peak RSS)."""
    import jax
    import optax

    from lora_jax import data as data_lib
    from lora_jax import models
    from lora_jax.lora import LoRAConfig
    from lora_jax.partition import count_params, label_params, make_optimizer, split
    from lora_jax.train.objectives import classification
    from lora_jax.train.steps import make_train_step, tree_bytes

    spec = MODES[mode]
    lora = LoRAConfig(rank=spec["rank"], targets="qv")
    pre = models.load_pretrained("minilm", lora, num_labels=2)
    labels = label_params(
        pre.params, trainable=pre.head_rules, full_finetune=spec.get("full_finetune", False)
    )
    parts = split(pre.params, labels)
    tx = make_optimizer(split(labels, labels).trainable, optax.adamw, 1e-4)
    opt_state = tx.init(parts.trainable)
    objective = classification(pre.module, data_lib.get_task("mr"))
    step = make_train_step(objective.loss_fn, tx)
    batch = jax.device_put(_batch())
    key = jax.random.key(0)
    compiled = step.lower(parts.trainable, parts.frozen, opt_state, batch, key).compile()
    cost = compiled.cost_analysis()
    flops = float((cost[0] if isinstance(cost, list) else cost).get("flops", 0.0))
    state = {"t": parts.trainable, "o": opt_state}

    def one():
        state["t"], state["o"], out = step(state["t"], parts.frozen, state["o"], batch, key)
        out["loss"].block_until_ready()

    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times = _timed(one, steps)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / (steps + 3)
    median = statistics.median(times)
    spectra_s = None
    if spec["rank"]:  # the live rank logging: one jitted call every trainer.spectrum_every steps
        from lora_jax.analysis.adapters import adapter_spectra

        def spectra():
            jax.block_until_ready(
                adapter_spectra(state["t"], alpha=lora.alpha, scaling=lora.scaling)
            )

        spectra_s = statistics.median(_timed(spectra, steps))
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)}"
    )
    parser.add_argument(
        "--glibc-tunables",
        default=None,
        help="GLIBC_TUNABLES for the timed processes, e.g. glibc.malloc.arena_max=1:"
        "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967295 (reuse freed memory)",
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one mode in this process
    args = parser.parse_args()
    if args.one:
        print(
            json.dumps(
                bench_mode(args.one, args.steps)
                if args.one != "inference"
                else bench_inference(args.steps)
            )
        )
        return
    unknown = set(args.modes.split(",")) - set(MODES)
    if unknown:
        raise SystemExit(f"--modes {sorted(unknown)} are not valid; allowed: {', '.join(MODES)}.")

    env = {**os.environ, **({"GLIBC_TUNABLES": args.glibc_tunables} if args.glibc_tunables else {})}

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

"""What one benchmark process measures (`python -m benchmarks.run --one JOB`): the workload
(MiniLM, batch 32, length 64, the modes), the real train step of one mode timed in this process,
merged-adapter inference latency, XLA's matmul peak, and the process's own memory.

`benchmarks/run.py` is the entry point; `benchmarks/versus_peft.py` runs these jobs against PEFT.
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from collections.abc import Callable, Sequence
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


def matmul_peaks(dtypes: Sequence[str] = DTYPES, n: int = 4096, steps: int = 3) -> dict:
    """XLA's GFLOP/s on an n x n matmul in each of `dtypes` (as `peer_peft.matmul_peak`), and
    with bfloat16 operands accumulated in float32 when bfloat16 is asked for."""
    import jax
    import jax.numpy as jnp

    def gflops(f: Callable, a: jax.Array) -> float:
        s = statistics.median(timed(lambda: f(a).block_until_ready(), steps, warmup=1))
        return 2 * n**3 / s / 1e9

    out = {}
    for name in dtypes:
        a = jax.random.normal(jax.random.key(0), (n, n), getattr(jnp, name))
        out[name] = gflops(jax.jit(lambda x: x @ x), a)
        if name == "bfloat16":  # bf16 operands, float32 result: the dot XLA:CPU sends to AMX
            f32acc = jax.jit(lambda x: jnp.dot(x, x, preferred_element_type=jnp.float32))
            out["bfloat16_f32acc"] = gflops(f32acc, a)
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
    from lora_jax.train.memory import give_back_heap
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
    give_back_heap()
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

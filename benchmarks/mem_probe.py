"""Where the peak RSS of the versus-PEFT LoRA step process goes, phase by phase.

    python -m benchmarks.mem_probe --mode lora_r8 --dtype float32 --steps 10

The same work as `benchmarks.run --one lora_r8:float32` (`benchmarks.step.bench_mode`,
`versus=True`), with the process's VmRSS / VmHWM / RssAnon / RssFile (from /proc/self/status)
and glibc's heap in use (mallinfo2) after each phase, the heavy modules imported, and XLA's
memory analysis of the compiled step; then the steps' median time, CPU seconds and minor page
faults, and a digest of the trained leaves (to check that a change keeps the numerics). One
JSON line on stdout, the phases on stderr as they happen. Run it under the allocator setting
(GLIBC_TUNABLES) and XLA_FLAGS you want to study; `--trim` hands malloc's free heap back after
compiling, as `benchmarks.step.bench_mode` does; `--remat-gelu` recomputes the FFN's GELU in
the backward pass (an experiment: 144 MB less XLA scratch, not bit-identical); `--as-trained`
takes MiniLM as a real run trains it (its dropout 0.1, mean pooling, the head's dropout) instead
of the versus setting (dropout 0, HF's head), to see what dropout's random bits cost;
`--rolled-threefry` lowers Threefry on CPU as JAX does (a loop) instead of unrolled as
`lora_jax.train.threefry_cpu` does, to compare the two.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time

from benchmarks.heap_trace import heap_mb, proc_status_mb

HEAVY = (
    "tensorflow",
    "torch",
    "tensorflow_datasets",
    "grain",
    "orbax",
    "wandb",
    "transformers",
    "pandas",
    "matplotlib",
    "scipy",
    "hydra",
    "array_record",
    "sklearn",
    "PIL",
)
# The lora_jax modules `benchmarks.step.load_minilm` and `step_inputs` import.
STEP_MODULES = (
    "lora_jax.data",
    "lora_jax.models",
    "lora_jax.lora",
    "lora_jax.partition",
    "lora_jax.train.objectives",
    "lora_jax.train.precision",
    "lora_jax.train.steps",
)


PHASES: list[dict] = []
T0 = time.perf_counter()


def mark(name: str, **extra) -> None:
    PHASES.append(
        {
            "phase": name,
            "t_s": round(time.perf_counter() - T0, 2),
            **proc_status_mb(),
            **heap_mb(),
            **extra,
        }
    )
    print(PHASES[-1], file=sys.stderr, flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", default="lora_r8")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--trim", action="store_true", help="malloc_trim(0) after compile")
    p.add_argument("--remat-gelu", action="store_true", help="experiment: jax.checkpoint(gelu)")
    p.add_argument(
        "--as-trained", action="store_true", help="MiniLM's own dropout and pooling, as a run"
    )
    p.add_argument(
        "--rolled-threefry", action="store_true", help="JAX's own CPU lowering of Threefry"
    )
    args = p.parse_args()
    mark("start")
    import jax

    if args.remat_gelu:
        import functools

        import flax.linen as nn

        def gelu(x, approximate=True, _gelu=nn.gelu):
            return jax.checkpoint(functools.partial(_gelu, approximate=approximate))(x)

        nn.gelu = gelu

    if args.rolled_threefry:
        from jax._src.interpreters import mlir
        from jax._src.random import threefry2x32

        from lora_jax.train.threefry_cpu import unroll_threefry_on_cpu

        unroll_threefry_on_cpu()  # once per process: the step's own call is then a no-op
        rolled = threefry2x32._threefry2x32_cpu_lowering_rule
        mlir.register_lowering(threefry2x32.threefry2x32_p, rolled, platform="cpu")

    mark("import jax")
    import importlib

    # What the step's set-up imports, loaded here so the phase is measured on its own.
    for name in STEP_MODULES:
        importlib.import_module(name)
    from lora_jax.lora import LoRAConfig

    mark(
        "import lora_jax",
        heavy=sorted(m for m in HEAVY if m in sys.modules),
        n_modules=len(sys.modules),
    )
    from benchmarks.step import MODES, load_minilm, step_inputs
    from lora_jax.train.memory import give_back_heap

    spec = MODES[args.mode]
    lora = LoRAConfig(rank=spec["rank"], targets="qv")
    pre = load_minilm(lora, versus=not args.as_trained, dtype=args.dtype)
    mark("load model", heavy=sorted(m for m in HEAVY if m in sys.modules))
    parts, opt_state, step, batch, key = step_inputs(pre, spec, args.dtype)
    mark("params, optimizer, batch", heavy=sorted(m for m in HEAVY if m in sys.modules))
    lowered = step.lower(parts.trainable, parts.frozen, opt_state, batch, key)
    mark("lower")
    compiled = lowered.compile()
    ma = compiled.memory_analysis()
    mem = {
        k: getattr(ma, k) >> 20
        for k in (
            "temp_size_in_bytes",
            "argument_size_in_bytes",
            "output_size_in_bytes",
            "alias_size_in_bytes",
            "generated_code_size_in_bytes",
        )
        if hasattr(ma, k)
    }
    mark("compile", memory_analysis_mb=mem)
    if args.trim:
        give_back_heap()
        mark("malloc_trim")
    del lowered
    state = {"t": parts.trainable, "o": opt_state}
    losses, times, cpu = [], [], []
    faults = 0
    for i in range(args.steps + 3):
        if i == 3:
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start, start_cpu = time.perf_counter(), time.process_time()
        state["t"], state["o"], out = step(state["t"], parts.frozen, state["o"], batch, key)
        losses.append(float(out["loss"]))
        if i >= 3:
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        if i in (0, 1, 2) or i == args.steps + 2:
            mark(f"step {i + 1}")
    import hashlib

    import numpy as np

    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(state["t"]):
        digest.update(np.asarray(leaf).tobytes())
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / max(args.steps, 1)
    print(
        json.dumps(
            {
                "step_s_median": statistics.median(times) if times else None,
                "cpu_s_median": statistics.median(cpu) if cpu else None,
                "minor_faults_per_step": faults,
                "mode": args.mode,
                "dtype": args.dtype,
                "as_trained": args.as_trained,
                "rolled_threefry": args.rolled_threefry,
                "phases": PHASES,
                "losses": losses,
                "trainable_sha256": digest.hexdigest()[:16],
            }
        )
    )


if __name__ == "__main__":
    main()

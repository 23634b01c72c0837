"""Sweep cost: wall time of the four-rank default sweep, sequential vs fused, split into compile
and run time.

    python -m benchmarks.sweep_cost --steps 40    # writes benchmarks/results/sweep_cost-<time>.json

The default sweep (MiniLM + MR, LoRA on Wq,Wv, r = 1, 2, 4, 8, seed 0, batch 32, bucketed
length <= 64, the validation set evaluated at the last step, a checkpoint at the end), with
`trainer.steps` shortened to `--steps`. Each engine runs in a fresh process with an empty
persistent compilation cache, as a first sweep would:

- sequential: `lora_jax.train.run` for one rank after another in one process (what the basic
  launcher does);
- fused: `lora_jax.train.fused.train_fused` on the four runs (what `hydra/launcher=fused` does), by
  default a loop over the members inside one program on CPU (`chunk=1`);
- fused_vmap: the same with all members vmapped together (the accelerator default).

Compile time is the sum of JAX's own compile events over the process (`jax.monitoring`:
jaxpr tracing, lowering to MLIR, XLA backend compilation); run time is the rest of the wall
time (model loading, data, steps, evaluation, checkpoints, adapter export). Hydra start-up
and the sweep-end analysis (the same for both engines) are not included.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPILE_EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace_s",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
    "/jax/core/compile/backend_compile_duration": "backend_compile_s",
}


def _configs(workdir: Path, ranks: list[int], steps: int, extra: list[str]) -> list:
    from hydra import compose, initialize_config_dir

    from lora_jax.config import register_configs, run_config

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return [
            run_config(
                compose(
                    "config",
                    [
                        f"rank={r}",
                        f"trainer.steps={steps}",
                        "trainer.progress=false",
                        "logger=none",
                        *extra,
                        f"workdir={workdir / f'r{r}'}",
                    ],
                )
            )
            for r in ranks
        ]


def run_engine(engine: str, ranks: list[int], steps: int, extra: list[str]) -> dict:
    """Train the sweep with one engine in this process; time it (see the module docstring)."""
    import jax

    from lora_jax.train.compile_cache import enable_compilation_cache

    compile_s: dict[str, float] = defaultdict(float)
    compiles: dict[str, int] = defaultdict(int)

    def listen(event: str, duration: float, **_: object) -> None:
        if event in COMPILE_EVENTS:
            compile_s[COMPILE_EVENTS[event]] += duration
            compiles[COMPILE_EVENTS[event]] += 1

    jax.monitoring.register_event_duration_secs_listener(listen)
    with tempfile.TemporaryDirectory() as tmp:
        enable_compilation_cache(str(Path(tmp) / "jax_cache"))  # empty: a first sweep
        cfgs = _configs(Path(tmp) / engine, ranks, steps, extra)
        start = time.perf_counter()
        if engine == "sequential":
            from lora_jax.train import run

            results = [run(cfg, cfg.workdir) for cfg in cfgs]
        else:
            from lora_jax.train.fused import plan_groups, train_fused

            groups = plan_groups(cfgs)
            assert groups == [list(range(len(cfgs)))], groups
            results = train_fused(cfgs, chunk=len(cfgs) if engine == "fused_vmap" else None)
        wall = time.perf_counter() - start
    total_compile = sum(compile_s.values())
    return {
        "engine": engine,
        "wall_s": wall,
        "compile_s": total_compile,
        "run_s": wall - total_compile,
        "compile_breakdown_s": dict(compile_s),
        "compiled_programs": compiles["backend_compile_s"],
        "runs": [
            {
                "rank": r["rank"],
                "final": r["final"],
                "wall_time_s": r["wall_time_s"],
                "trainable_params": r["trainable_params"],
            }
            for r in results
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=40, help="trainer.steps of every run")
    parser.add_argument("--ranks", default="1,2,4,8")
    parser.add_argument("--engines", default="sequential,fused", help="and/or fused_vmap")
    parser.add_argument(
        "--override", action="append", default=[], help="extra Hydra override, e.g. model=tiny_bert"
    )
    parser.add_argument("--engine", help=argparse.SUPPRESS)  # internal: one engine, this process
    args = parser.parse_args()
    ranks = [int(r) for r in args.ranks.split(",")]
    if args.engine:
        print(json.dumps(run_engine(args.engine, ranks, args.steps, args.override)))
        return

    results = {}
    for engine in args.engines.split(","):
        command = [sys.executable, "-m", "benchmarks.sweep_cost", "--engine", engine]
        command += ["--steps", str(args.steps), "--ranks", args.ranks]
        command += [f"--override={o}" for o in args.override]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{engine} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        results[engine] = json.loads(proc.stdout.strip().splitlines()[-1])
        r = results[engine]
        print(
            f"{engine:>10}: wall {r['wall_s']:7.1f} s = compile {r['compile_s']:6.1f} s "
            f"({r['compiled_programs']} programs) + run {r['run_s']:7.1f} s"
        )
    report = {
        "what": "four-rank default sweep (MiniLM + MR, r=1,2,4,8), sequential vs fused",
        "method": __doc__.split("\n\n", 2)[2].strip(),
        "steps": args.steps,
        "ranks": ranks,
        "overrides": args.override,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "engines": results,
    }
    for engine in results.keys() - {"sequential"}:
        if "sequential" in results:
            seq, fus = results["sequential"], results[engine]
            speedup = {k: seq[k] / max(fus[k], 1e-9) for k in ("wall_s", "compile_s", "run_s")}
            report.setdefault("speedup_over_sequential", {})[engine] = speedup
            print(f"{engine} speedup: " + ", ".join(f"{k} {v:.2f}x" for k, v in speedup.items()))
    out = ROOT / "benchmarks" / "results" / f"sweep_cost-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2))
    print(out)


if __name__ == "__main__":
    main()

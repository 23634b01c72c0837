"""Peak memory of a real training run, ours against PEFT's doing the same work.

    python -m benchmarks.real_run --steps 20 --rounds 2     # JSON in benchmarks/results/

`make bench` runs it after the step comparison and puts it in the same JSON (`real_run`).
Ours is `python -m experiments.train model=minilm rank=8` as a sweep's job runs it (W&B
offline, Orbax checkpoints, the evaluations, the spectra), cut to `--steps` steps with an
evaluation and a checkpoint every `--eval-every`; the peer is `benchmarks/peer_peft_run.py`
(PEFT LoRA r=8 on the same MiniLM and MR split, the same batches, evaluations and checkpoints).
Each run is a fresh process; its peak RSS is the kernel's `ru_maxrss` from `wait4` (the process
and the helpers it waited for). Ours runs under both allocator settings the Makefile defines
(`FAST_MALLOC`, which `make sweep` exports: one arena that keeps freed memory, for speed, and
`LEAN_MALLOC`), PEFT under glibc's default as its users run it, in interleaved rounds (the
order reverses every round); the JSON holds the ratio ours/PEFT under each setting and the
time of the steps beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def makefile_setting(name: str) -> str:
    """A GLIBC_TUNABLES value the Makefile defines (`FAST_MALLOC`, which `make sweep` and `make
    bench` export, or `LEAN_MALLOC`)."""
    text = (ROOT / "Makefile").read_text()
    return re.search(rf"^{name} := (\S+)$", text, re.M).group(1)


def _measured(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """Run `cmd`; (peak RSS MB from wait4, wall seconds, stdout). Output goes to files, not
    pipes, so a chatty child cannot block on a full pipe while we wait4 it."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        if proc.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err.read()[-3000:]}")
        return usage.ru_maxrss / 1024, wall, out.read()


def job_overrides(steps: int, eval_every: int, run_dir: str) -> list[str]:
    """`experiments.train`'s overrides for our side's job (also `benchmarks.heap_trace`'s)."""
    return [
        "model=minilm",
        "rank=8",
        f"trainer.steps={steps}",
        f"trainer.eval_every={eval_every}",
        f"trainer.checkpoint_every={eval_every}",
        "trainer.progress=false",
        f"hydra.run.dir={run_dir}",
    ]


def ours(steps: int, eval_every: int, env: dict) -> dict:
    with tempfile.TemporaryDirectory() as run_dir:
        cmd = [
            sys.executable,
            "-m",
            "experiments.train",
            *job_overrides(steps, eval_every, run_dir),
        ]
        rss, wall, _ = _measured(cmd, env)
        metrics = json.loads(next(Path(run_dir).rglob("metrics.json")).read_text())
    split = metrics["time_split_s"]
    return {
        "side": "ours",
        "peak_rss_mb": rss,
        "wall_s": wall,
        "steps_s": split["steps"],
        "time_split_s": split,
        "accuracy": metrics.get("eval/accuracy", metrics.get("accuracy")),
    }


def peer(steps: int, eval_every: int, env: dict) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "benchmarks.peer_peft_run", "--steps", str(steps)]
        cmd += ["--eval-every", str(eval_every), "--out", out]
        rss, wall, stdout = _measured(cmd, env)
    row = json.loads(stdout.strip().splitlines()[-1])
    return {**row, "peak_rss_mb": rss, "wall_s": wall}


def real_run(steps: int, eval_every: int, rounds: int) -> dict:
    """Ours under the Makefile's two allocator settings, PEFT under glibc's default (as its
    users run it), in interleaved rounds; medians and ratios ours/PEFT."""
    base = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    settings = {name: makefile_setting(name) for name in ("FAST_MALLOC", "LEAN_MALLOC")}
    jobs_of = [(ours, name, {**base, "GLIBC_TUNABLES": value}) for name, value in settings.items()]
    jobs_of.append((peer, "glibc default", base))
    jobs = []
    for r in range(rounds):
        for side, allocator, env in jobs_of if r % 2 == 0 else jobs_of[::-1]:
            load = os.getloadavg()[0]
            row = {"round": r, "allocator": allocator, "load_1min_before": load}
            row.update(side(steps, eval_every, env))
            jobs.append(row)
            print(
                f"  {row['side']:<4} {allocator:<13} peak RSS {row['peak_rss_mb']:6.0f} MB  "
                f"steps {row['steps_s']:6.1f} s  wall {row['wall_s']:6.1f} s  (load {load:.2f})",
                flush=True,
            )

    def median(side: str, allocator: str) -> dict:
        rows = [j for j in jobs if j["side"] == side and j["allocator"] == allocator]
        keys = ("peak_rss_mb", "steps_s", "wall_s")
        return {
            **{k: statistics.median(j[k] for j in rows) for k in keys},
            "peak_rss_mb_rounds": [j["peak_rss_mb"] for j in rows],
        }

    peft = median("peft", "glibc default")
    summary = {"peft": peft}
    for name in settings:
        o = median("ours", name)
        summary[f"ours {name}"] = {
            **o,
            "ratio_peak_rss_ours_over_peft": o["peak_rss_mb"] / peft["peak_rss_mb"],
            "ratio_steps_s_ours_over_peft": o["steps_s"] / peft["steps_s"],
        }
    return {
        "benchmark": "real_run",
        "steps": steps,
        "eval_every": eval_every,
        "rounds": rounds,
        "allocators": {**settings, "glibc default": None},
        "summary": summary,
        "jobs": jobs,
    }


def print_real_run(result: dict) -> None:
    s = result["summary"]
    print(f"\nreal run, {result['steps']} steps, medians of {result['rounds']} rounds")
    print(f"  PEFT (glibc default): peak RSS {s['peft']['peak_rss_mb']:.0f} MB")
    for name, row in s.items():
        if name != "peft":
            print(
                f"  {name:<17} peak RSS {row['peak_rss_mb']:6.0f} MB = "
                f"{row['ratio_peak_rss_ours_over_peft']:.2f}x PEFT's; steps "
                f"{row['ratio_steps_s_ours_over_peft']:.2f}x PEFT's time"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    result = real_run(args.steps, args.eval_every, args.rounds)
    out = ROOT / "benchmarks" / "results" / f"real_run-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print_real_run(result)
    print(out)


if __name__ == "__main__":
    main()

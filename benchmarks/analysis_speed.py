"""Speed of the rank analysis (`python -m experiments.analyze <sweep>`), and whether it still
writes the same `analysis.json` bits as the original code.

    python -m benchmarks.analysis_speed    # -> benchmarks/results/analysis_speed-<time>.json

Fixtures (built once under outputs/bench/analysis/, skipped when present): the default sweep
(r = 1, 2, 4, 8) and the Table 6 grid (`experiment=table6_cpu`, 15 runs), both cut to 10 steps
and 64 validation examples. The adapters have the full-length sweeps' shapes, so the analysis
costs the same. Each folder keeps `analysis.reference.json`, written by the code of commit
REFERENCE (a git worktree, `PYTHONPATH` pointing at it), which also trains the fixtures.

Each timing is the wall and CPU time of a fresh `python -m experiments.analyze <folder>`
process (imports, reading the runs, the analysis, figures, the report): the median of
`--repeats` runs with an empty JAX compilation cache (cold: every program compiled, as the
first analysis of a new sweep shape) and of as many with the cache the first cold run filled
(warm: `JAX_COMPILATION_CACHE_DIR`, as a re-analysis when the cache is on).
The new `analysis.json` is then compared with the reference: identical bytes, or the JSON
paths whose values differ (numbers compared exactly) and those added or removed; a sweep
passes when it meets its target and no reference value changed or went missing. The
REFERENCE code's own analysis is timed in the same run (`--reference-timing`), for ratios.
A CPU-time cProfile of a cold analysis of the default folder says where the time goes: top
cumulative entries, time per category, the number of XLA programs compiled. Profiling
inflates Python-heavy parts (matplotlib) about 2-3x against the timed runs.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "outputs" / "bench" / "analysis"
REFERENCE = "d622679"  # the code before issue 13 ("Speed of the analysis")
CUTS = ["trainer.steps=10", "trainer.eval_every=10", "data.eval_limit=64", "logger=none"]
SWEEPS = {
    "default": {"overrides": ["rank=1,2,4,8"], "target_s": 8.0, "repeats": 3},
    "table6": {"overrides": ["experiment=table6_cpu"], "target_s": 60.0, "repeats": 1},
}
# Same allocator tuning as `make sweep` (Makefile FAST_MALLOC).
FAST_MALLOC = (
    "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967295"
)
# cProfile categories: label -> functions ("file.py:name") whose cumulative times are summed.
# They overlap a little (a first call's imports count under both imports and its category).
CATEGORIES = {
    "imports": ["_bootstrap>:_find_and_load"],
    "xla compile (all programs)": ["compiler.py:compile_or_get_cached"],
    # lora_jax.analysis functions that call QR/SVD, wrapped by on_one_blas_thread (`run`):
    # dw_vs_w, kernel_svd, phi grids, spectra; their compiles included.
    "analysis QR/SVD calls (with their compiles)": ["numerics.py:run"],
    "summarize_spectrum": ["spectrum.py:summarize_spectrum"],
    "figures (analysis/figures.py)": ["figures.py:phi_figure", "figures.py:spectrum_plot"],
    "base kernels read": ["base_kernels.py:read_kernels", "sweep.py:base_kernels"],
    "report build (Markdown, HTML, its figure)": ["build.py:make_report"],
}


def cpu_model() -> str:
    """The CPU's model name and its wider vector units (machines of one name differ)."""
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((x.split(":", 1)[1].strip() for x in info if x.startswith("model name")), "?")
    flags = next((x.split(":", 1)[1].split() for x in info if x.startswith("flags")), [])
    wide = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    return f"{name} ({', '.join(wide) or 'no AVX2'})"


def _env(pythonpath: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(pythonpath), "GLIBC_TUNABLES": FAST_MALLOC}


def _reference_tree() -> Path:
    """A git worktree of commit REFERENCE (made once, in the temp folder)."""
    tree = Path(tempfile.gettempdir()) / f"lora_jax_ref_{REFERENCE}"
    if not tree.exists():
        subprocess.run(
            ["git", "worktree", "add", "--force", "--detach", str(tree), REFERENCE],
            cwd=ROOT,
            check=True,
        )
    return tree


def _run_reference(args: list[str]) -> None:
    tree = _reference_tree()
    # cwd = the worktree: `-m` puts the cwd first on sys.path, ahead of PYTHONPATH.
    command = [sys.executable, "-m", *args]
    subprocess.run(command, cwd=tree, env=_env(tree), check=True, stdout=subprocess.DEVNULL)


def build_fixture(name: str) -> Path:
    """The sweep folder `name`, trained once (minutes), reused when its summary exists.

    Trained by the REFERENCE code, whose analysis reads only its own adapter format (the
    extras moved to lora_jax.json later); the sweep ends with that code's analysis of this
    very folder, kept as `analysis.reference.json`.
    """
    folder = FIXTURES / name
    if (folder / "sweep_summary.json").exists():
        return folder
    print("building", folder, "(minutes) ...", flush=True)
    overrides = [*SWEEPS[name]["overrides"], *CUTS, "trainer.progress=false"]
    _run_reference(["experiments.sweep", *overrides, f"hydra.sweep.dir={folder}"])
    shutil.copyfile(folder / "analysis.json", folder / "analysis.reference.json")
    return folder


def reference(folder: Path) -> Path:
    """`analysis.reference.json`: the analysis of `folder` by the code of commit REFERENCE."""
    out = folder / "analysis.reference.json"
    if not out.exists():
        print("reference analysis of", folder, "...", flush=True)
        _run_reference(["experiments.analyze", str(folder)])
        shutil.copyfile(folder / "analysis.json", out)
    return out


def time_analysis(folder: Path, cache: Path) -> dict[str, float]:
    """Wall and CPU time of one fresh `python -m experiments.analyze folder` (current tree).

    `cache`: JAX's persistent compilation cache for the run (an empty folder: a cold start,
    every program compiled; a folder an earlier run filled: compiled programs loaded).
    """
    env = {
        **_env(ROOT),
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "LORA_JAX_COMPILE_CACHE": str(cache),  # in case the entry point turns the cache on
    }
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    command = [sys.executable, "-m", "experiments.analyze", str(folder)]
    subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3)}


def time_reference(folder: Path) -> dict[str, float]:
    """Wall and CPU time of the REFERENCE code's `experiments.analyze folder` (no cache)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    _run_reference(["experiments.analyze", str(folder)])
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3)}


def _timings(folder: Path, repeats: int) -> dict[str, Any]:
    """`repeats` cold runs (each with an empty compilation cache) and `repeats` warm ones."""
    with tempfile.TemporaryDirectory() as tmp:
        cold = [time_analysis(folder, Path(tmp) / f"cold{i}") for i in range(repeats)]
        warm_cache = Path(tmp) / "cold0"  # filled by the first cold run
        warm = [time_analysis(folder, warm_cache) for _ in range(repeats)]
    out = {}
    for name, runs in (("cold", cold), ("warm_cache", warm)):
        out[name] = {
            "runs": runs,
            "median_wall_s": statistics.median(r["wall_s"] for r in runs),
            "median_cpu_s": statistics.median(r["cpu_s"] for r in runs),
        }
    return out


def _diff(a: Any, b: Any, path: str, out: dict[str, list[str]]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in a.keys() - b.keys():
            out["removed"].append(f"{path}/{k}")
        for k in b.keys() - a.keys():
            out["added"].append(f"{path}/{k}")
        for k in a.keys() & b.keys():
            _diff(a[k], b[k], f"{path}/{k}", out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _diff(x, y, f"{path}[{i}]", out)
    elif type(a) is not type(b) or a != b:  # exact: 0.1 vs 0.1000000001 differs
        out["changed"].append(path or "/")


def compare(reference_file: Path, new_file: Path) -> dict[str, Any]:
    """Identical bytes, or the JSON paths that changed, were added or removed (sorted)."""
    if reference_file.read_bytes() == new_file.read_bytes():
        return {"identical_bytes": True, "numbers_identical": True}
    out: dict[str, list[str]] = {"changed": [], "added": [], "removed": []}
    _diff(json.loads(reference_file.read_text()), json.loads(new_file.read_text()), "", out)
    return {
        "identical_bytes": False,
        # Every value of the reference is still there, exactly (added keys aside).
        "numbers_identical": not out["changed"] and not out["removed"],
        "added_keys": sorted({p.rsplit("/", 1)[-1] for p in out["added"]}),
        **{k: sorted(v) for k, v in out.items()},
    }


def profile(folder: Path, top: int = 30) -> dict[str, Any]:
    """CPU-time cProfile of a cold analysis in a child process: top entries, categories, and
    the number of XLA programs compiled."""
    with tempfile.TemporaryDirectory() as tmp:
        stats_file = Path(tmp) / "analyze.prof"
        command = [sys.executable, "-m", "benchmarks.analysis_speed", "--_profile", str(folder)]
        command += ["--_out", str(stats_file)]
        cache = str(Path(tmp) / "empty_cache")  # cold: every program compiled
        env = {**_env(ROOT), "JAX_COMPILATION_CACHE_DIR": cache, "LORA_JAX_COMPILE_CACHE": cache}
        subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
        stats = pstats.Stats(str(stats_file))
    rows = []
    for (file, line, func), (_, ncalls, _, cum, _) in stats.stats.items():
        rows.append((cum, ncalls, f"{Path(file).name}:{func}" if line else func, file, line))
    rows.sort(key=lambda r: -r[0])
    total = rows[0][0] if rows else 0.0

    def cumulative(names: list[str]) -> tuple[float, int]:
        hits = [r for r in rows if any(r[2].endswith(n) for n in names)]
        return sum(r[0] for r in hits), sum(r[1] for r in hits)

    categories = {label: round(cumulative(names)[0], 3) for label, names in CATEGORIES.items()}
    return {
        "profiled_total_s": round(total, 3),
        "categories_s": categories,
        "xla_compiles": cumulative(["compiler.py:backend_compile_and_load"])[1],
        "top_cumulative": [
            {"cumulative_s": round(cum, 3), "calls": n, "function": name, "where": f"{file}:{line}"}
            for cum, n, name, file, line in rows[:top]
        ],
    }


def _profile_child(folder: str, out: str) -> None:
    sys.argv = ["experiments.analyze", folder]
    import runpy

    # CPU time of the process, not wall time: on a shared machine the waits for a core would
    # otherwise land on whatever function was running.
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    runpy.run_module("experiments.analyze", run_name="__main__")
    profiler.disable()
    profiler.dump_stats(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sweeps", default=",".join(SWEEPS), help="comma list of " + str(list(SWEEPS))
    )
    parser.add_argument("--repeats", type=int, help="cold and warm runs per sweep (3 / 1)")
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile run")
    parser.add_argument(
        "--reference-timing",
        default="default",
        help="sweeps whose analysis is also timed with the REFERENCE code, in the same run "
        "(table6 takes minutes); 'none' for none",
    )
    parser.add_argument("--_profile", help=argparse.SUPPRESS)  # internal: profile this folder
    parser.add_argument("--_out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._profile:
        _profile_child(args._profile, args._out)
        return

    names = args.sweeps.split(",")
    folders = {name: build_fixture(name) for name in names}
    references = {name: reference(folder) for name, folder in folders.items()}
    sweeps = {}
    load = {"before": os.getloadavg()}
    for name, folder in folders.items():
        repeats = args.repeats or SWEEPS[name]["repeats"]
        target = SWEEPS[name]["target_s"]
        # The reference first: it rewrites analysis.json, which the current runs then replace.
        ref = time_reference(folder) if name in args.reference_timing.split(",") else None
        timing = _timings(folder, repeats)
        cold, warm = timing["cold"]["median_wall_s"], timing["warm_cache"]["median_wall_s"]
        diff = compare(references[name], folder / "analysis.json")
        sweeps[name] = {
            "folder": str(folder.relative_to(ROOT)),
            "runs": len(json.loads((folder / "sweep_summary.json").read_text())),
            **timing,
            "reference_code": ref,
            "speedup_cold_vs_reference": (
                {k: round(ref[k] / timing["cold"][f"median_{k}"], 2) for k in ("wall_s", "cpu_s")}
                if ref
                else None
            ),
            "target_s": target,
            "meets_target_cold": cold <= target,
            "meets_target_warm_cache": warm <= target,
            "analysis_json": diff,
        }
        same = (
            "identical bytes"
            if diff["identical_bytes"]
            else f"same numbers, {len(diff['added'])} paths added"
            if diff["numbers_identical"]
            else f"DIFFERS: {len(diff['changed'])} changed, {len(diff['removed'])} removed"
        )
        if ref:
            print(f"{name:>8}: reference code {ref['wall_s']:5.1f} s (CPU {ref['cpu_s']:5.1f} s)")
        print(
            f"{name:>8}: cold {cold:5.1f} s (CPU {timing['cold']['median_cpu_s']:5.1f} s), "
            f"warm cache {warm:5.1f} s (CPU {timing['warm_cache']['median_cpu_s']:5.1f} s); "
            f"target {target:.0f} s; analysis.json vs {REFERENCE}: {same}",
            flush=True,
        )
    load["after"] = os.getloadavg()
    result = {
        "what": "wall time of python -m experiments.analyze <sweep> and its analysis.json bits",
        "method": __doc__.split("\n\n", 2)[2].strip(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "reference_commit": REFERENCE,
        "glibc_tunables": FAST_MALLOC,
        # 1-minute load averages: the machine is shared; CPU times move less than wall times.
        "load_average_1min": {k: round(v[0], 2) for k, v in load.items()},
        "sweeps": sweeps,
        "all_pass_cold": all(
            s["meets_target_cold"] and s["analysis_json"]["numbers_identical"]
            for s in sweeps.values()
        ),
    }
    if not args.no_profile and "default" in folders:
        result["profile_default"] = profile(folders["default"])
        print("profile (default):", result["profile_default"]["categories_s"])
    out = ROOT / "benchmarks" / "results" / f"analysis_speed-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(out)


if __name__ == "__main__":
    main()

"""The base-free audit of LLM-scale PEFT adapters against gradience's, side by side in one run.

    python -m benchmarks.audit_speed    # -> benchmarks/results/audit_speed-<time>.json

Fixtures (written once under outputs/bench/audit/ by scripts/make_llm_adapters.py, skipped
when present): a Llama-3-8B-shaped adapter (r = 64 on q, k, v, o, gate, up, down of 32 layers:
224 matrices, 671 MB float32) and two Llama-3.2-1B-shaped ones (r = 16, seeds 0 and 1).

Each measurement is a fresh process, as a user runs it: its wall time and its own peak RSS
(`os.wait4`). Ours: `python -m experiments.analyze --adapters ... --suggest` (the audit, the rank
advice, audit.json/csv and the report page with its figure); gradience 0.11: `gradience audit
--peft-dir DIR --json --layers` (one adapter per call: it has no pair comparison). The tools
alternate for `--rounds` rounds, so load on the machine hits both alike; medians and the ratio
gradience / ours are reported. Needs the interop extra (gradience).

`--with-base` adds the analysis against a 1B-shaped random-weight Llama base (the pair of r = 16
adapters, `--base`: dW against W, intruders; W's 112 SVDs), twice into one fresh `--svd-cache`:
cold (every SVD computed and saved) and warm (read back), beside each other in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "outputs" / "bench" / "audit"
ADAPTERS = {  # name: make_llm_adapters.py arguments
    "8b_r64": ["--shape", "llama3_8b", "--rank", "64"],
    "1b_r16_s0": ["--shape", "llama_1b", "--rank", "16", "--seed", "0"],
    "1b_r16_s1": ["--shape", "llama_1b", "--rank", "16", "--seed", "1"],
}
BASE, BASE_WITH = FIXTURES / "1b_base", "1b_r16_s1"  # the random-weight base, written with
TARGETS = {"8b_r64": {"wall_s": 3.0, "peak_rss_gb": 0.5}}  # issue 26's, on 2 cores


def _fixtures() -> dict[str, Path]:
    out = {}
    for name, arguments in ADAPTERS.items():
        folder = FIXTURES / name
        if not (folder / "adapter_model.safetensors").is_file():
            script = ROOT / "scripts" / "make_llm_adapters.py"
            base = ["--base", str(BASE)] if name == BASE_WITH else []
            cmd = [sys.executable, script, *arguments, "--out", folder, *base]
            subprocess.run(cmd, check=True)
        out[name] = folder
    return out


def _run(cmd: list[str]) -> dict:
    """Wall seconds and peak RSS (GB) of one fresh process running `cmd`."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-2000:]}")
    return {"wall_s": wall, "peak_rss_gb": usage.ru_maxrss / 2**20}


def _ours(folders: list[Path], out: Path, *extra: str) -> list[str]:
    shutil.rmtree(out, ignore_errors=True)
    adapters = [str(f) for f in folders]
    return [
        sys.executable,
        "-m",
        "experiments.analyze",
        "--adapters",
        *adapters,
        "--suggest",
        "--out",
        str(out),
        *extra,
    ]


def _gradience(folder: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gradience",
        "audit",
        "--peft-dir",
        str(folder),
        "--json",
        "--layers",
    ]


def _summary(runs: list[dict]) -> dict:
    return {
        "wall_s_median": statistics.median(r["wall_s"] for r in runs),
        "peak_rss_gb_median": statistics.median(r["peak_rss_gb"] for r in runs),
        "runs": runs,
    }


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--with-base", action="store_true", help="also cold and warm --base")
    args = parser.parse_args()
    fixtures = _fixtures()
    cases = {  # name: (our command's adapters, gradience's adapters: one call each)
        "8b_r64": ([fixtures["8b_r64"]], [fixtures["8b_r64"]]),
        "1b_r16_pair": (
            [fixtures["1b_r16_s0"], fixtures["1b_r16_s1"]],
            [fixtures["1b_r16_s0"], fixtures["1b_r16_s1"]],
        ),
    }
    results: dict[str, dict] = {name: {"ours": [], "gradience": []} for name in cases}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for name, (ours, theirs) in cases.items():
                results[name]["ours"].append(_run(_ours(ours, Path(tmp) / name)))
                calls = [_run(_gradience(f)) for f in theirs]
                results[name]["gradience"].append(
                    {
                        "wall_s": sum(c["wall_s"] for c in calls),
                        "peak_rss_gb": max(c["peak_rss_gb"] for c in calls),
                    }
                )
        if args.with_base:
            pair, cache = [fixtures["1b_r16_s0"], fixtures["1b_r16_s1"]], Path(tmp) / "svd"
            based = ["--base", str(BASE), "--svd-cache", str(cache)]
            cold = _run(_ours(pair, Path(tmp) / "base", *based))
            warm = _run(_ours(pair, Path(tmp) / "base", *based))
    report = {
        "benchmark": "audit_speed",
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpu": _cpu(),
        "cores": os.cpu_count(),
        "rounds": args.rounds,
        "cases": {},
    }
    for name, r in results.items():
        ours, theirs = _summary(r["ours"]), _summary(r["gradience"])
        report["cases"][name] = {
            "ours": ours,
            "gradience": theirs,
            "gradience_over_ours_wall": theirs["wall_s_median"] / ours["wall_s_median"],
            "gradience_over_ours_rss": theirs["peak_rss_gb_median"] / ours["peak_rss_gb_median"],
            "target": TARGETS.get(name),
        }
    if args.with_base:
        report["with_base_1b_pair"] = {
            "cold": cold,
            "warm": warm,
            "cold_over_warm_wall": cold["wall_s"] / warm["wall_s"],
            "target": {"peak_rss_gb": 2.0},
        }
    out = ROOT / "benchmarks" / "results" / f"audit_speed-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2))
    for name, case in report["cases"].items():
        print(
            f"{name}: ours {case['ours']['wall_s_median']:.2f} s {case['ours']['peak_rss_gb_median']:.2f} GB; "
            f"gradience {case['gradience']['wall_s_median']:.2f} s "
            f"{case['gradience']['peak_rss_gb_median']:.2f} GB"
        )
    if args.with_base:
        b = report["with_base_1b_pair"]
        print(
            f"1B pair with base: cold {b['cold']['wall_s']:.0f} s {b['cold']['peak_rss_gb']:.2f} GB"
            f", warm {b['warm']['wall_s']:.0f} s {b['warm']['peak_rss_gb']:.2f} GB"
        )
    print(out)


if __name__ == "__main__":
    main()

"""lora_jax against PEFT on one GPU, real model shapes, bfloat16 on both sides (issue 32).

    python -m benchmarks.gpu_versus              # on a GPU machine: ~9 minutes, one JSON
    python -m benchmarks.gpu_versus --tiny       # the same code at tiny shapes (CPU, ~4 min)
    python -m benchmarks.gpu_versus --only 'llama_1b:*'   # a subset (fnmatch on case ids)

Each case is `shape:mode:side`, run in a fresh process (its own memory peak; a crash or an OOM
loses only that case) under a per-case timeout, in the priority order below until the total
budget is spent; the JSON (`$OUT/gpu_versus-<time>.json` when `$OUT` is set, else
`benchmarks/results/`) is rewritten after every case, the cases not run listed with why;
with `$OUT` set, each case's output goes to `gpu_versus-<time>/<case>.log` beside it.
Without a GPU (no `nvidia-smi`) it runs `--tiny`; without torch/transformers/peft the PEFT
cases are skipped, with that reason, and ours still run.

* **Shapes** (random weights, configs in `gpu_versus_shapes.py`, never downloaded):
  RoBERTa-base (12 x 768, 12 heads, FFN 3072, vocab 50265) at 16 x 128 with HF's
  classification head (2 labels); GPT-2 Medium (24 x 1024, 16 heads, vocab 50257) at 8 x 512,
  causal LM; Llama-3.2-1B (16 x 2048, 32 heads / 8 KV heads, FFN 8192, vocab 128256, tied
  embeddings, llama3 RoPE), causal LM at 4 x 2048 for LoRA and 2 x 2048 for full fine-tuning.
  Why not 8 x 2048: our attention is materialised (float32 scores and probabilities,
  (B, 32, L, L) per layer; no flash kernel) and so are the float32 logits; XLA's memory analysis
  of our step (on CPU, memory-minimising scheduler, 1 and 2 layers extrapolated to 16) puts a
  2048-token sequence at ~16.5 GiB under LoRA (0.85 GiB per layer, 2.9 for logits and loss):
  8 x 2048 needs ~135 GiB, 4 x 2048 ~69 GiB with the bf16 weights, of an H100's ~75 usable.
  Full FT holds 13.8 GiB of float32 weights and AdamW moments, 4.6 of gradients and ~15.5
  per sequence: 2 x 2048, ~50 GiB. Our side compares XLA's memory analysis of the
  compiled step with the device's limit before the first step; a step that does not fit is
  compiled again at half the batch, and the PEFT cases of that shape and mode use the batch
  ours ran at (the JSON's `batch`, `not_fit`).
* **Modes**: LoRA r=8 and r=16 on the attention's query and value projections (the paper's
  targets, lora_jax's default `targets="qv"`, for every shape; on GPT-2 PEFT's only choice is
  its fused `c_attn`, which adapts q, k and v with the same parameter count, 4 r d per layer),
  alpha 8, no dropout anywhere (the models' dropout is set to 0 on both sides, as
  `benchmarks/step.py`'s PEFT setting); full fine-tuning. AdamW, lr 1e-4.
* **Sides**: `ours`: lora_jax's real train step (`make_train_step` over the trainable half,
  `model.dtype=bfloat16`: frozen base stored in bf16, bf16 x bf16 -> float32 products, LoRA,
  head and optimizer float32; full FT keeps float32 master weights); `peft_eager`:
  transformers' model (SDPA attention) + PEFT as its users run it: bf16 base weights, float32
  LoRA (and head) params, `torch.autocast(bfloat16)`, AdamW (`fused=True` on CUDA); full FT is
  the float32 model under autocast (AMP); `peft_compile`: the same model under
  `torch.compile` (default mode), the strongest torch peer (skipped on CPU unless
  `--compile-on-cpu`: inductor builds C++ kernels for ~1 min per case there).
* **Reported per case**: median step time over `--steps` steps after `--warmup`, tokens/s,
  MFU, peak device memory (JAX `peak_bytes_in_use`, torch `max_memory_allocated` after a reset;
  peak RSS on CPU), first-step/compile seconds, and this side's bf16 matmul peak.
* **MFU** = model FLOPs per step / step time / the card's bf16 peak, the peak being the
  larger of JAX's and torch's 8192^2 bf16 matmul rate measured in this run (each case measures
  its side's after its steps). Model FLOPs, ONE formula for both sides (`model_flops`; PaLM's
  convention, causal attention counted in full): per token, 6 N_trained + 4 N_frozen + 6 N_lora
  + 12 n_layers L d_attn, N being the parameters of the weight matrices (every projection and
  the tied LM head; no embeddings lookups, biases or norms): a frozen matrix does the forward
  and the input-gradient product but no weight gradient; plus, per sequence, 6 x the
  classification head (trained in every mode). XLA's own count for ours is reported beside;
  at these shapes it is within 1.1% of the formula (RoBERTa-base, GPT-2 M, 2 Llama layers).
* **Fused** (`lora_jax.train.fused`'s step, `members.fused_steps`, at RoBERTa-base shapes):
  the four-member group r = 1, 2, 4, 8 (one program, the launcher's default chunking: all
  members vmapped on a GPU) against the same four runs' steps one after another in one process
  (the sum of their medians); the ratio is member-steps per second. `--tiny`: r = 4, 8.
* **Targets**: ours >= 1.5x PEFT eager's tokens/s and >= torch.compile's, every (shape, mode);
  MFU >= 40% at GPT-2 M and 1B; fused >= 2x sequential.

Order: LoRA r=8 (all shapes, all sides), fused, full FT, LoRA r=16; one invocation of ~9 min
may not reach the last ones (they are listed as skipped: run them with `--only`).
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from benchmarks.gpu_versus_shapes import MODES, model_flops, shapes

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("ours", "peft_eager", "peft_compile")
TARGETS = {"ours_over_peft_eager": 1.5, "ours_over_peft_compile": 1.0, "mfu": 0.40, "fused": 2.0}
MFU_SHAPES = ("gpt2_medium", "llama_1b")
PEFT_PACKAGES = ("torch", "transformers", "peft")


def plan(tiny: bool) -> list[str]:
    """Every case id, in priority order."""
    names = list(shapes(tiny))
    train = lambda mode: [f"{s}:{mode}:{side}" for s in names for side in SIDES]  # noqa: E731
    fused = ["roberta_base:fused_sequential:ours", "roberta_base:fused_group:ours"]
    return train("lora_r8") + fused + train("full_ft") + train("lora_r16")


def has_gpu() -> str | None:
    """The first GPU's `nvidia-smi` line (name, memory, driver), None without one."""
    try:
        query = "--query-gpu=name,memory.total,driver_version"
        out = subprocess.run(
            ["nvidia-smi", query, "--format=csv,noheader"], capture_output=True, text=True
        )
    except OSError:
        return None
    line = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout else ""
    return line or None


def versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for name in ("jax", "jaxlib", "flax", "optax", *PEFT_PACKAGES):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def skip_reason(case: str, tiny_reason: str | None, args) -> str | None:
    """Why a planned case is not run at all (before the budget), None if it runs."""
    side = case.rsplit(":", 1)[1]
    if side.startswith("peft"):
        missing = [p for p in PEFT_PACKAGES if importlib.util.find_spec(p) is None]
        if missing:
            return f"{', '.join(missing)} not installed: the PEFT side needs the interop extra"
    if side == "peft_compile" and tiny_reason and not args.compile_on_cpu:
        return "torch.compile on CPU: inductor's C++ build, ~1 min a case (--compile-on-cpu)"
    return None


def run_case(case: str, args, tiny: bool, timeout: float, batch: int | None, log: Path | None):
    """One case in a fresh process (its own session: a timeout kills it with its compile
    workers); its JSON row, or why it has none. `log`: where its output goes, if anywhere."""
    cmd = [sys.executable, "-m", "benchmarks.gpu_versus", "--case", case]
    cmd += ["--batch", str(batch)] if batch else []
    cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup)] + ["--tiny"] * tiny
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "2"}
    # JAX reserves 75% of the GPU by default; our 1B step needs more than that.
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    timed_out = False
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    wall = time.perf_counter() - start
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"$ {' '.join(cmd)}\n{out}\n--- stderr ---\n{err}")
    row = {"wall_s": wall, "stderr_tail": err[-3000:]}
    if timed_out:
        return {"status": "timeout", "reason": f"over {timeout:.0f} s", **row}
    if proc.returncode:
        oom = ("RESOURCE_EXHAUSTED", "OutOfMemoryError", "out of memory", "does not fit")
        return {"status": "oom" if any(s in err for s in oom) else "failed", **row}
    return {"status": "ok", "wall_s": wall, **json.loads(out.strip().splitlines()[-1])}


def summarize(rows: list[dict], tiny: bool) -> dict:
    """MFU of every case, the ratios and the targets, from the rows so far."""
    ok = [r for r in rows if r["status"] == "ok"]
    peaks = {}
    for side in ("ours", "peft"):
        got = [r["matmul_peak_flops"] for r in ok if r["side"].startswith(side)]
        peaks[side] = max(got) if got else None
    peak = max((p for p in peaks.values() if p), default=None)
    for r in ok:
        if "step_s_median" in r and peak and r.get("model_flops_per_step"):
            r["mfu"] = r["model_flops_per_step"] / r["step_s_median"] / peak
    by = {(r["shape"], r["mode"], r["side"]): r for r in ok}
    ratios, targets = {}, []
    for name in shapes(tiny):
        for mode in MODES:
            ours = by.get((name, mode, "ours"))
            row = {}
            for peer in ("peft_eager", "peft_compile"):
                theirs = by.get((name, mode, peer))
                value = ours["tokens_per_s"] / theirs["tokens_per_s"] if ours and theirs else None
                row[f"ours_over_{peer}"] = value
                targets.append(_target(f"{name}:{mode}: ours/{peer}", value, f"ours_over_{peer}"))
            ratios[f"{name}:{mode}"] = row
            if name in MFU_SHAPES:
                targets.append(_target(f"{name}:{mode}: MFU", ours and ours.get("mfu"), "mfu"))
    seq = by.get(("roberta_base", "fused_sequential", "ours"))
    group = by.get(("roberta_base", "fused_group", "ours"))
    fused = seq["step_s_total"] / group["step_s_median"] if seq and group else None
    ratios["fused_over_sequential"] = fused
    targets.append(_target("roberta_base: fused / sequential", fused, "fused"))
    return {
        "matmul_peak_flops": {**peaks, "used": peak},
        "ratios": ratios,
        "targets": targets,
    }


def _target(name: str, value: float | None, key: str) -> dict:
    met = None if value is None else bool(value >= TARGETS[key])
    return {"target": name, "threshold": TARGETS[key], "value": value, "met": met}


def orchestrate(args, gpu: str | None) -> Path:
    tiny = args.tiny or gpu is None
    tiny_reason = ("--tiny" if args.tiny else "no GPU (nvidia-smi)") if tiny else None
    budget = args.budget_s or (540 if not tiny else 900)
    case_timeout = args.case_timeout_s or (300 if not tiny else 180)
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "benchmarks" / "results"
    out = args.out or out_dir / f"gpu_versus-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    logs = bool(os.environ.get("OUT"))  # on the device machine: every case's output beside
    from benchmarks.versus_peft import cpu_info  # stdlib only: no jax, no torch

    cases = [c for c in plan(tiny) if _selected(c, args)]
    report = {
        "benchmark": "gpu_versus",
        "method": __doc__.split("\n\n", 2)[2].strip(),
        "tiny": tiny_reason,
        "device": gpu or "cpu",
        "cpu": cpu_info(),
        "versions": versions(),
        "settings": {"steps": args.steps, "warmup": args.warmup, "budget_s": budget}
        | {"case_timeout_s": case_timeout, "xla_flags": os.environ.get("XLA_FLAGS")},
        "cases": [],
    }
    start, batches = time.perf_counter(), {}  # (shape, mode) -> the batch ours ran at
    for case in cases:
        name, mode, side = case.split(":")
        shape = shapes(tiny)[name]
        row = {"case": case, "shape": name, "mode": mode, "side": side}
        batch = batches.get((name, mode))
        if mode in MODES:
            row |= {"batch": batch or shape.batch_of(mode), "length": shape.length}
        left = budget - (time.perf_counter() - start)
        why = skip_reason(case, tiny_reason, args)
        if why is None and left < min(30, case_timeout):
            why = f"total budget of {budget} s spent"
        if why:
            row |= {"status": "skipped", "reason": why}
        else:
            print(f"[{time.perf_counter() - start:5.0f} s] {case}", flush=True)
            log = out.with_suffix("") / f"{case.replace(':', '-')}.log" if logs else None
            row |= run_case(case, args, tiny, min(case_timeout, left), batch, log)
            print(f"         {_line(row)}", flush=True)
        if mode in MODES:
            row["model_flops_per_step"] = model_flops(shape, mode, row["batch"], shape.length)
            if side == "ours" and row["status"] == "ok":
                batches[(name, mode)] = row["batch"]
        report["cases"].append(row)
        report |= summarize(report["cases"], tiny)
        report["elapsed_s"] = time.perf_counter() - start
        out.write_text(json.dumps(report, indent=1))
    print_table(report)
    print(out)
    return out


def _selected(case: str, args) -> bool:
    match = lambda pats: any(fnmatch.fnmatch(case, p) for p in pats.split(","))  # noqa: E731
    return (not args.only or match(args.only)) and not (args.skip and match(args.skip))


def _line(r: dict) -> str:
    if r["status"] != "ok":
        return f"{r['status']}: {r.get('reason') or (r.get('stderr_tail') or '')[-300:]}"
    mem = r.get("peak_memory_bytes") or 0
    return (
        f"step {1e3 * r['step_s_median']:.1f} ms, {r['tokens_per_s']:,.0f} tok/s, "
        f"peak {mem / 2**30:.2f} GiB, {r['wall_s']:.0f} s"
    )


def print_table(report: dict) -> None:
    print(f"\n{report['device']}; bf16 peak {report['matmul_peak_flops']}")
    print(f"{'case':<36} {'status':<8} {'step ms':>9} {'tok/s':>10} {'MFU':>6} {'GiB':>7}")
    for r in report["cases"]:
        ok = r["status"] == "ok" and "step_s_median" in r
        print(
            f"{r['case']:<36} {r['status']:<8} "
            + (
                f"{1e3 * r['step_s_median']:9.1f} {r['tokens_per_s']:10,.0f} "
                f"{100 * r.get('mfu', float('nan')):5.1f}% "
                f"{(r.get('peak_memory_bytes') or 0) / 2**30:7.2f}"
                if ok
                else ""
            )
        )
    missing = sum(t["value"] is None for t in report["targets"])
    print(f"targets ({missing} without both sides measured):")
    for t in report["targets"]:
        if t["value"] is not None:
            verdict = "met" if t["met"] else "MISSED"
            print(f"  {t['target']:<44} {t['value']:7.3f} >= {t['threshold']}: {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (the default on CPU)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (10; tiny 2)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (3; tiny 1)")
    parser.add_argument("--only", help="comma list of fnmatch patterns on case ids")
    parser.add_argument("--skip", help="comma list of fnmatch patterns on case ids")
    parser.add_argument("--budget-s", type=float, default=None, help="total (540; tiny 900)")
    parser.add_argument("--case-timeout-s", type=float, default=None, help="(300; tiny 180)")
    parser.add_argument("--compile-on-cpu", action="store_true", help="run torch.compile on CPU")
    parser.add_argument("--out", type=Path, default=None, help="the JSON's path")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: one case, this process
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)  # internal: its batch
    args = parser.parse_args()
    gpu = None if args.tiny or args.case else has_gpu()
    tiny = args.tiny or (not args.case and gpu is None)
    args.steps = args.steps or (2 if tiny else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if tiny else 3)
    if not args.case:
        orchestrate(args, gpu)
        return
    name, mode, side = args.case.split(":")
    shape = shapes(args.tiny)[name]
    batch = args.batch or shape.batch_of(mode)
    if side == "ours":
        from benchmarks import gpu_versus_ours as ours

        row = ours.run_case(shape, mode, batch, args.steps, args.warmup, args.tiny)
    else:
        from benchmarks import gpu_versus_peft as peft

        row = peft.run_case(shape, mode, side, batch, args.steps, args.warmup, args.tiny)
    print(json.dumps(row))


if __name__ == "__main__":
    main()

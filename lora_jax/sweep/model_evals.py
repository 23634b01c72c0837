"""LoRA against full fine-tuning, the measurements that evaluate models (`analysis.json`'s
`versus_full[i].model_evals`), for each full fine-tuning run and its LoRA peers:

- **truncation curve** (full fine-tuning and the highest-rank LoRA): the task metric with
  W_0 + SVD_k(dW) in every adapted matrix, k = 0, 1, 2, 4, ... up to the update's full rank,
  and the smallest k keeping 90% of the gain over k = 0 (the task's own rank);
- **forgetting** (every run, and along the truncation curve): the Spearman correlation of the
  pairwise cosine similarities of held-out sentences' mean-pooled embeddings under the
  fine-tuned model and the pretrained one (`similarity_kept`; forgetting = 1 - it);
- **intruder intervention** (every run): each intruder's singular value scaled by lambda
  (`analysis.scale_intruders`, PEFT's top 10 and epsilon 0.5), task metric and forgetting again.

k = 0 is the run's model with every adapted matrix back at W_0; the rest stays as the run left
it: the trained head, and for full fine-tuning also its biases, LayerNorms and embeddings (so
the curve is about the matrices' rank). `pretrained_with_head` is the model with nothing of
the run but its head. Encoder tasks only; cost: `seconds` per run in the JSON.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from lora_jax.analysis.full_update import update_svd
from lora_jax.analysis.intruders import EPSILON, TOP_K, scale_intruders
from lora_jax.analysis.jsonable import finite_or_none
from lora_jax.analysis.truncation import (
    rank_for_gain,
    similarity_kept,
    truncated_kernels,
    truncation_ranks,
)
from lora_jax.analysis.updates import ANALYSIS_FILE
from lora_jax.run_record import RunRecord, write_atomic
from lora_jax.train.kernel_eval import (
    FORGET_SENTENCES,
    FORGET_SPLIT,
    FORGET_TASK,
    RunModel,
    load_run_model,
)

LAMBDAS = (0.75, 0.5, 0.0)  # PEFT's default, then stronger


def truncation_curve(model: RunModel, base_embedding: np.ndarray) -> dict[str, Any]:
    """The task metric and `similarity_kept` at every k of `truncation_ranks(full rank)`."""
    svds = {key: update_svd(dw) for key, dw in model.dw.items()}
    ks = truncation_ranks(model.full_rank)
    values, kept = [], []
    for k in ks:
        kernels = truncated_kernels(model.w0, svds, k)
        values.append(model.evaluate(kernels)[model.main_metric])
        kept.append(similarity_kept(base_embedding, model.embed(kernels)))
    return {
        "ks": ks,
        "values": values,
        "similarity_kept": kept,
        "rank_for_90": rank_for_gain(ks, values),
    }


def intruder_intervention(
    model: RunModel,
    base_embedding: np.ndarray,
    lambdas: Iterable[float] = LAMBDAS,
    top_k: int = TOP_K,
    epsilon: float = EPSILON,
) -> dict[str, Any]:
    """Task metric and `similarity_kept` with the intruders' singular values scaled by each
    lambda (no evaluation when there is no intruder: the model is the run's)."""
    lambdas = list(lambdas)
    out: dict[str, Any] = {"top_k": top_k, "epsilon": epsilon, "lambdas": lambdas}
    merged = model.merged()
    counts = {
        key: scale_intruders(model.w0[key], w, top_k, epsilon, 1.0)[1] for key, w in merged.items()
    }
    out["intruders"] = int(sum(counts.values()))
    if out["intruders"] == 0:
        return {**out, "values": None, "similarity_kept": None}
    values, kept = [], []
    for lam in lambdas:
        kernels = {
            key: scale_intruders(model.w0[key], w, top_k, epsilon, lam)[0] if counts[key] else w
            for key, w in merged.items()
        }
        values.append(model.evaluate(kernels)[model.main_metric])
        kept.append(similarity_kept(base_embedding, model.embed(kernels)))
    return {**out, "values": values, "similarity_kept": kept}


def run_evals(run: RunRecord, curve: bool, eval_limit: int | None = None) -> dict[str, Any]:
    """Every model evaluation of one run (module docstring); `curve`: also the truncation."""
    start = time.perf_counter()
    model = load_run_model(run, eval_limit)
    base = model.embed_pretrained()
    own = model.evaluate()
    out: dict[str, Any] = {
        "run_dir": str(run.run_dir),
        "rank": run.rank,
        "full_finetune": run.full_finetune,
        "metric": model.main_metric,
        "run_value": (run.metrics.get("final") or {}).get(model.main_metric),
        "value": own[model.main_metric],
        "eval_examples": model.eval_examples,
        "similarity_kept": similarity_kept(base, model.embed()),
        "intervention": intruder_intervention(model, base),
    }
    # The base model: for LoRA the same as k = 0; for full fine-tuning without its changes to
    # biases, LayerNorms and embeddings.
    out["pretrained_with_head"] = model.evaluate_pretrained()[model.main_metric]
    if curve:
        out["truncation"] = truncation_curve(model, base)
    out["seconds"] = time.perf_counter() - start
    print(f"[lora_jax] model evaluations of {run.name}: {out['seconds']:.0f} s", flush=True)
    return out


def model_evals(
    analysis: dict[str, Any], runs: list[RunRecord], eval_limit: int | None = None
) -> dict[str, Any]:
    """`analysis` with `model_evals` added to each `versus_full` entry of an encoder task."""
    # By folder name: the JSON's folders are as the sweep was given (maybe relative, or moved).
    by_name = {r.name: r for r in runs}
    for entry in analysis.get("versus_full", []):
        full = by_name[entry["run"]]
        peers = [by_name[name] for name in entry["lora"]]
        top = max(peers, key=lambda r: r.rank, default=None)
        try:
            evals = {
                r.name: run_evals(r, curve=r is full or r is top, eval_limit=eval_limit)
                for r in [full, *peers]
            }
        except NotImplementedError as err:  # a decoder task: said in the JSON, not fatal
            entry["model_evals"] = {"skipped": str(err)}
            continue
        entry["model_evals"] = {
            "forget_text": f"{FORGET_TASK} {FORGET_SPLIT}[:{FORGET_SENTENCES}]",
            "runs": evals,
        }
    return analysis


def add_model_evals(
    sweep_dir: str | Path,
    analysis: dict[str, Any],
    runs: list[RunRecord],
    eval_limit: int | None = None,
) -> dict[str, Any]:
    """`model_evals`, written into `<sweep_dir>/analysis.json`; returns the new analysis."""
    analysis = finite_or_none(model_evals(analysis, runs, eval_limit))
    text = json.dumps(analysis, indent=1, allow_nan=False)
    write_atomic(Path(sweep_dir) / ANALYSIS_FILE, text)
    return analysis


def model_eval_rows(analysis: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per evaluated model (run, what was done to it, metric, similarity kept):
    the W&B table of the sweep's `analysis` run."""
    rows = []
    for entry in analysis.get("versus_full", []):
        for name, e in (entry.get("model_evals") or {}).get("runs", {}).items():
            row = {
                "full_ft_run": entry["run"],
                "run": name,
                "rank": e["rank"],
                "metric": e["metric"],
            }
            rows.append(
                {
                    **row,
                    "change": "none",
                    "value": e["value"],
                    "similarity_kept": e["similarity_kept"],
                }
            )
            curve = e.get("truncation") or {}
            for k, v, kept in zip(
                curve.get("ks", []),
                curve.get("values", []),
                curve.get("similarity_kept", []),
                strict=True,
            ):
                rows.append(
                    {**row, "change": f"truncated to k={k}", "value": v, "similarity_kept": kept}
                )
            iv = e["intervention"]
            for lam, v, kept in zip(
                iv["lambdas"], iv["values"] or [], iv["similarity_kept"] or [], strict=False
            ):
                rows.append(
                    {**row, "change": f"intruders x {lam}", "value": v, "similarity_kept": kept}
                )
    return rows


__all__ = [
    "LAMBDAS",
    "add_model_evals",
    "intruder_intervention",
    "model_eval_rows",
    "model_evals",
    "run_evals",
    "truncation_curve",
]

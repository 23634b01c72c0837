"""LoRA against full fine-tuning, the measurements that evaluate models, for each full
fine-tuning run of `analysis.json`'s `versus_full` and its LoRA peers. A stage of its own: it
reads the analysis and writes `evals.json` (`{"versus_full": {full run: model_evals}}`), never
`analysis.json`; the report joins the two (`lora_jax.report.sections.rank_analysis.load_analysis`).

- **truncation curve** (full fine-tuning and the highest-rank LoRA): the task metric with
  W_0 + SVD_k(dW) in every adapted matrix, k = 0, 1, 2, 4, ... up to the update's full rank,
  and the smallest k keeping 90% of the gain over k = 0 (the task's own rank); for a
  generation task the metric is the eval LM loss (lower is better), not BLEU;
- **forgetting** (every run, and along the truncation curve), one number, higher = more lost:
  encoders, 1 - the Spearman correlation of the pairwise cosine similarities of held-out
  sentences' mean-pooled embeddings under the fine-tuned model and the pretrained one
  (`similarity_kept`); decoders, the increase of the LM loss on the held-out sentences over
  the pretrained model's (`held_out_loss` - `pretrained_held_out_loss`, nats per token);
- **intruder intervention** (every run): each intruder's singular value scaled by lambda
  (`analysis.scale_intruders`, PEFT's top 10 and epsilon 0.5), task metric and forgetting again.

k = 0 is the run's model with every adapted matrix back at W_0; the rest stays as the run left
it: the trained head, and for full fine-tuning also its biases, LayerNorms and embeddings (so
the curve is about the matrices' rank). `pretrained_with_head` is the model with nothing of
the run but its head (a decoder's LM head is pretrained: there it is the pretrained model).
Cost: `seconds` per run in the JSON. A run whose evaluations the sweep's `evals.json` already
holds, for the same run identity, last checkpoint, `eval_limit` and curve, keeps them
(`reused` in its `key`): adding seeds to a sweep evaluates the new runs only, and
`model_evals=false` keeps the evaluations of the runs that did not change.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lora_jax.analysis.full_update import update_svd
from lora_jax.analysis.intruders import EPSILON, TOP_K, scale_intruders
from lora_jax.analysis.jsonable import finite_or_none
from lora_jax.analysis.truncation import (
    rank_for_gain,
    similarity_kept,
    truncated_kernels,
    truncation_ranks,
)
from lora_jax.evals.kernel_eval import (
    FORGET_SENTENCES,
    FORGET_SPLIT,
    FORGET_TASK,
    RunModel,
    load_run_model,
)
from lora_jax.runs.files import write_atomic
from lora_jax.runs.layout import EVALS_FILE, SweepFolder
from lora_jax.runs.record import RunRecord

# Part of every record's key: bump it when the records change, so older ones are recomputed.
RECORD_VERSION = 2
LAMBDAS = (0.75, 0.5, 0.0)  # PEFT's default, then stronger
MEASURES = {  # the forgetting of each kind of model, as analysis.json names it
    "encoder": "1 - Spearman of the pairwise cosine similarities of mean-pooled embeddings",
    "decoder": "LM loss increase over the pretrained model (nats per token)",
}


class Forgetting:
    """A run's forgetting measure: the pretrained model's side computed once, then
    `forgetting(kernels)` -> {"forgetting": x, and the measure's own number} for any kernels
    (None: the run's W_0 + dW)."""

    def __init__(self, model: RunModel):
        self.model = model
        self.base = model.lm_loss_pretrained() if model.decoder else model.embed_pretrained()
        self.keys = ("forgetting", "held_out_loss" if model.decoder else "similarity_kept")

    def __call__(self, kernels: dict | None = None) -> dict[str, float]:
        if self.model.decoder:
            loss = self.model.lm_loss(kernels)["loss"]
            return {"forgetting": loss - self.base["loss"], "held_out_loss": loss}
        kept = similarity_kept(self.base, self.model.embed(kernels))
        return {"forgetting": 1.0 - kept, "similarity_kept": kept}


def _columns(points: list[dict[str, float]]) -> dict[str, list[float]]:
    """[{key: x}] per point -> {key: [x per point]}."""
    return {key: [p[key] for p in points] for key in points[0]} if points else {}


def truncation_curve(model: RunModel, forgetting: Forgetting) -> dict[str, Any]:
    """The task metric and the forgetting at every k of `truncation_ranks(full rank)`."""
    svds = {key: update_svd(dw) for key, dw in model.dw.items()}
    ks = truncation_ranks(model.full_rank)
    values, points = [], []
    for k in ks:
        kernels = truncated_kernels(model.w0, svds, k)
        values.append(model.evaluate(kernels)[model.main_metric])
        points.append(forgetting(kernels))
    return {
        "ks": ks,
        "values": values,
        **_columns(points),
        "rank_for_90": rank_for_gain(ks, values, lower_is_better=model.lower_is_better),
    }


def intruder_intervention(
    model: RunModel,
    forgetting: Forgetting,
    lambdas: Iterable[float] = LAMBDAS,
    top_k: int = TOP_K,
    epsilon: float = EPSILON,
) -> dict[str, Any]:
    """Task metric and forgetting with the intruders' singular values scaled by each lambda
    (no evaluation when there is no intruder: the model is the run's)."""
    lambdas = list(lambdas)
    out: dict[str, Any] = {"top_k": top_k, "epsilon": epsilon, "lambdas": lambdas}
    merged = model.merged()
    counts = {
        key: scale_intruders(model.w0[key], w, top_k, epsilon, 1.0)[1] for key, w in merged.items()
    }
    out["intruders"] = int(sum(counts.values()))
    if out["intruders"] == 0:
        return {**out, "values": None, **dict.fromkeys(forgetting.keys)}
    values, points = [], []
    for lam in lambdas:
        kernels = {
            key: scale_intruders(model.w0[key], w, top_k, epsilon, lam)[0] if counts[key] else w
            for key, w in merged.items()
        }
        values.append(model.evaluate(kernels)[model.main_metric])
        points.append(forgetting(kernels))
    return {**out, "values": values, **_columns(points)}


def run_evals(run: RunRecord, curve: bool, eval_limit: int | None = None) -> dict[str, Any]:
    """Every model evaluation of one run (module docstring); `curve`: also the truncation."""
    start = time.perf_counter()
    model = load_run_model(run, eval_limit)
    forgetting = Forgetting(model)
    own = model.evaluate()
    out: dict[str, Any] = {
        "run_dir": str(run.run_dir),
        "rank": run.rank,
        "full_finetune": run.full_finetune,
        "metric": model.main_metric,
        "lower_is_better": model.lower_is_better,
        "run_value": (run.metrics.get("final") or {}).get(model.main_metric),
        "value": own[model.main_metric],
        "eval_examples": model.eval_examples,
        **forgetting(),
        "intervention": intruder_intervention(model, forgetting),
    }
    if model.decoder:
        out["held_out_perplexity"] = model.lm_loss()["perplexity"]
        out["pretrained_held_out_loss"] = forgetting.base["loss"]
        out["pretrained_held_out_perplexity"] = forgetting.base["perplexity"]
    # The base model: for LoRA the same as k = 0; for full fine-tuning without its changes to
    # biases, LayerNorms and embeddings.
    out["pretrained_with_head"] = model.evaluate_pretrained()[model.main_metric]
    if curve:
        out["truncation"] = truncation_curve(model, forgetting)
    out["seconds"] = time.perf_counter() - start
    print(f"[lora_jax] model evaluations of {run.name}: {out['seconds']:.0f} s", flush=True)
    return out


def eval_key(run: RunRecord, curve: bool, eval_limit: int | None) -> dict[str, Any] | None:
    """What a run's evaluations depend on: the record's version, the run's identity hash and
    last checkpoint, `eval_limit` and whether the truncation curve is asked; None where the run
    has no identity file."""
    try:
        identity = json.loads(run.folder.identity.read_text())["hash"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    steps = run.checkpoint_steps
    return {
        "version": RECORD_VERSION,
        "identity": identity,
        "checkpoint": steps[-1] if steps else None,
        "eval_limit": eval_limit,
        "curve": curve,
    }


def previous_evals(sweep_dir: str | Path) -> dict[str, dict[str, Any]]:
    """The per-run model evaluations of the sweep's `evals.json`, by run name; {} if none."""
    try:
        evals = json.loads(SweepFolder(sweep_dir).evals.read_text())["versus_full"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {
        name: record
        for entry in evals.values()
        for name, record in (entry.get("runs") or {}).items()
    }


def evals_of(
    run: RunRecord,
    curve: bool,
    eval_limit: int | None,
    previous: dict[str, dict[str, Any]],
    evaluate: bool,
) -> dict[str, Any] | None:
    """The previous analysis' record of the run where its key is unchanged, else `run_evals`
    (None when not `evaluate`)."""
    key = eval_key(run, curve, eval_limit)
    old = previous.get(run.name) or {}
    if (
        key is not None
        and {k: v for k, v in (old.get("key") or {}).items() if k != "reused"} == key
    ):
        print(f"[lora_jax] model evaluations of {run.name}: kept from {EVALS_FILE}", flush=True)
        return {**old, "key": {**key, "reused": True}}
    return {**run_evals(run, curve, eval_limit), "key": key} if evaluate else None


def model_evals(
    analysis: dict[str, Any],
    runs: list[RunRecord],
    eval_limit: int | None = None,
    previous: dict[str, dict[str, Any]] | None = None,
    evaluate: bool = True,
) -> dict[str, dict[str, Any]]:
    """{full fine-tuning run: its `model_evals`} for the `versus_full` entries of `analysis`.
    `previous` (`previous_evals`) supplies the records of unchanged runs; with
    `evaluate=False` nothing is computed and an entry is there only if every one of its runs
    is unchanged."""
    # By folder name: the JSON's folders are as the sweep was given (maybe relative, or moved).
    by_name = {r.name: r for r in runs}
    out: dict[str, dict[str, Any]] = {}
    for entry in analysis.get("versus_full", []):
        full = by_name[entry["run"]]
        peers = [by_name[name] for name in entry["lora"]]
        top = max(peers, key=lambda r: r.rank, default=None)
        try:
            evals = {
                r.name: evals_of(r, r is full or r is top, eval_limit, previous or {}, evaluate)
                for r in [full, *peers]
            }
        except NotImplementedError as err:  # a task of another kind: said in the JSON
            out[full.name] = {"skipped": str(err)}
            continue
        if None in evals.values():  # not evaluated, and not all known from before
            continue
        kind = "decoder" if "held_out_loss" in evals[full.name] else "encoder"
        out[full.name] = {
            "forget_text": f"{FORGET_TASK} {FORGET_SPLIT}[:{FORGET_SENTENCES}]",
            "forgetting_measure": MEASURES[kind],
            "runs": evals,
        }
    return out


def write_model_evals(
    sweep_dir: str | Path,
    analysis: dict[str, Any],
    runs: list[RunRecord],
    eval_limit: int | None = None,
    evaluate: bool = True,
) -> dict[str, dict[str, Any]]:
    """`model_evals` of the sweep, keeping those of its `evals.json` whose key is unchanged,
    written to `<sweep_dir>/evals.json`; returns them."""
    previous = previous_evals(sweep_dir)
    evals = finite_or_none(model_evals(analysis, runs, eval_limit, previous, evaluate))
    text = json.dumps({"versus_full": evals}, indent=1, allow_nan=False)
    write_atomic(SweepFolder(sweep_dir).evals, text)
    return evals


def model_eval_rows(analysis: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per evaluated model (run, what was done to it, metric, forgetting): the
    W&B table of the sweep's `analysis` run."""
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
                {**row, "change": "none", "value": e["value"], "forgetting": e["forgetting"]}
            )
            curve = e.get("truncation") or {}
            for k, v, lost in zip(
                curve.get("ks", []),
                curve.get("values", []),
                curve.get("forgetting", []),
                strict=True,
            ):
                rows.append(
                    {**row, "change": f"truncated to k={k}", "value": v, "forgetting": lost}
                )
            iv = e["intervention"]
            for lam, v, lost in zip(
                iv["lambdas"], iv["values"] or [], iv["forgetting"] or [], strict=False
            ):
                rows.append({**row, "change": f"intruders x {lam}", "value": v, "forgetting": lost})
    return rows


__all__ = [
    "LAMBDAS",
    "MEASURES",
    "Forgetting",
    "intruder_intervention",
    "model_eval_rows",
    "model_evals",
    "run_evals",
    "truncation_curve",
    "write_model_evals",
]

"""`python -m benchmarks.gpu_versus --tiny`: the GPU side-by-side against PEFT, its CPU path.

Our side runs without torch: the processes here start with torch hidden (a `sitecustomize`
that puts None in `sys.modules["torch"]`, so `import torch` fails and `find_spec` finds
nothing), and the PEFT cases are then skipped with that reason. The interop test runs the PEFT
side too (eager; torch.compile is skipped on CPU, with its reason).
"""

from __future__ import annotations

import json
import math
import os

import pytest
from conftest import ROOT, run_module

NUMBERS = (
    "step_s_median",
    "tokens_per_s",
    "peak_memory_bytes",
    "matmul_peak_flops",
    "model_flops_per_step",
    "mfu",
    "wall_s",
)


def _run(tmp_path, only: str, hide_torch: bool) -> dict:
    env = {}
    if hide_torch:
        site = tmp_path / "no_torch"
        site.mkdir()
        (site / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\n")
        env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT)])
    out = tmp_path / "gpu_versus.json"
    run_module(
        "benchmarks.gpu_versus",
        *("--tiny", "--only", only, "--out", str(out)),
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    return json.loads(out.read_text())


def _check_ok_row(row: dict, report: dict) -> None:
    assert row["status"] == "ok", row
    for key in NUMBERS:
        assert math.isfinite(row[key]) and row[key] > 0, (key, row[key])
    assert row["tokens_per_s"] == pytest.approx(row["batch"] * row["length"] / row["step_s_median"])
    # MFU = model FLOPs per step / step time / the run's bf16 matmul peak (the larger side's)
    peak = report["matmul_peak_flops"]["used"]
    assert row["mfu"] == pytest.approx(row["model_flops_per_step"] / row["step_s_median"] / peak)


def test_tiny_path_runs_our_side_without_torch(tmp_path):
    report = _run(tmp_path, "roberta_base:lora_r8:*,gpt2_medium:full_ft:ours", hide_torch=True)
    assert report["benchmark"] == "gpu_versus" and report["tiny"] == "--tiny"
    assert {"device", "cpu", "versions", "settings", "method", "ratios", "targets"} <= set(report)
    cases = {r["case"]: r for r in report["cases"]}
    assert list(cases) == [
        "roberta_base:lora_r8:ours",
        "roberta_base:lora_r8:peft_eager",
        "roberta_base:lora_r8:peft_compile",
        "gpt2_medium:full_ft:ours",
    ]
    for case in ("roberta_base:lora_r8:ours", "gpt2_medium:full_ft:ours"):
        _check_ok_row(cases[case], report)
    for peer in ("peft_eager", "peft_compile"):
        row = cases[f"roberta_base:lora_r8:{peer}"]
        assert row["status"] == "skipped" and "torch" in row["reason"], row
    assert report["matmul_peak_flops"]["peft"] is None
    assert report["ratios"]["roberta_base:lora_r8"] == {
        "ours_over_peft_eager": None,
        "ours_over_peft_compile": None,
    }
    mfu = next(t for t in report["targets"] if t["target"] == "gpt2_medium:full_ft: MFU")
    assert mfu["value"] == cases["gpt2_medium:full_ft:ours"]["mfu"] and mfu["threshold"] == 0.4

    # The model-FLOPs formula, by hand, for tiny RoBERTa (2 layers, d 64, FFN 128), LoRA r=8 on
    # q and v, batch 4 x 32, 2 labels: per token 4 x the frozen matrices (forward + input
    # gradient), 6 x the adapters, 12 x layers x L x d for attention; 6 x the head per sequence.
    ours = cases["roberta_base:lora_r8:ours"]
    assert (ours["batch"], ours["length"]) == (4, 32)
    frozen = 2 * (4 * 64 * 64 + 2 * 64 * 128)  # q, k, v, o; FFN in and out
    lora = 2 * 2 * 8 * (64 + 64)  # 2 layers x (q, v) x r (in + out)
    attention = 12 * 2 * 32 * 64
    head = 64 * 64 + 64 * 2  # dense + out
    assert ours["model_flops_per_step"] == 4 * 32 * (4 * frozen + 6 * lora + attention) + 4 * (
        6 * head
    )
    assert ours["model_flops_per_step"] == 43_092_992
    # XLA's own count of the compiled step agrees within what the formula leaves out
    # (softmax, norms, GELU, AdamW)
    assert 0.8 < ours["xla_flops_per_step"] / ours["model_flops_per_step"] < 1.25


@pytest.mark.interop
def test_tiny_path_runs_both_sides_and_their_ratios(tmp_path):
    report = _run(tmp_path, "roberta_base:lora_r8:*,llama_1b:full_ft:peft_eager", hide_torch=False)
    cases = {r["case"]: r for r in report["cases"]}
    ours, peft = cases["roberta_base:lora_r8:ours"], cases["roberta_base:lora_r8:peft_eager"]
    _check_ok_row(ours, report)
    _check_ok_row(peft, report)
    assert (ours["batch"], ours["length"]) == (peft["batch"], peft["length"])
    # the same model on both sides: LoRA on q and v plus the head train
    assert ours["trainable_params"] == peft["trainable_params"]
    ratio = report["ratios"]["roberta_base:lora_r8"]["ours_over_peft_eager"]
    assert ratio == pytest.approx(ours["tokens_per_s"] / peft["tokens_per_s"])
    target = next(
        t for t in report["targets"] if t["target"] == "roberta_base:lora_r8: ours/peft_eager"
    )
    assert target["value"] == ratio and target["met"] == (ratio >= 1.5)
    compiled = cases["roberta_base:lora_r8:peft_compile"]
    assert compiled["status"] == "skipped" and "torch.compile" in compiled["reason"]
    assert report["ratios"]["roberta_base:lora_r8"]["ours_over_peft_compile"] is None
    # the decoder side (Llama 3's RoPE scaling, tied embeddings), full fine-tuning under AMP
    llama = cases["llama_1b:full_ft:peft_eager"]
    _check_ok_row(llama, report)
    assert llama["trainable_params"] > 0 and llama["frozen_params"] == 0
    assert report["ratios"]["llama_1b:full_ft"]["ours_over_peft_eager"] is None  # ours not run
    peaks = report["matmul_peak_flops"]
    assert peaks["used"] == max(peaks["ours"], peaks["peft"]) > 0
    assert report["versions"]["peft"] and report["versions"]["torch"]

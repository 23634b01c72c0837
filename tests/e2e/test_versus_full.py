"""LoRA against full fine-tuning through the real entry points: a full fine-tuning run saves
W_ft - W_0 of every adaptable matrix, and the sweep's analysis and report measure it against
the LoRA run of the same seed (spectra beside a random matrix, intruders, phi)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import FAST, call_main
from safetensors.numpy import load_file

from lora_jax.report.sections.rank_analysis import load_analysis

# A LoRA and a full fine-tuning sweep into one folder, then its model evaluations: ~1 min.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def full_and_lora(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("versus_full")
    sweep = cwd / "sw"
    common = [*FAST, "logger=none", f"hydra.sweep.dir={sweep}"]
    call_main("experiments.sweep", "rank=2", *common, cwd=cwd)
    call_main("experiments.sweep", "rank=0", "lora=full", *common, cwd=cwd)
    return sweep


def test_full_finetuning_run_saves_its_update(full_and_lora):
    (full_dir,) = [p for p in full_and_lora.iterdir() if p.name.startswith("lora=full")]
    update, base = (
        load_file(full_dir / "full_update.safetensors"),
        load_file(full_dir / "base_kernels.safetensors"),
    )
    # every attention and FFN matrix of tiny BERT's 2 layers, in the base's (in, out) layout
    assert sorted(update) == sorted(
        f"layer_{i}/{t}" for i in (0, 1) for t in ("q", "k", "v", "o", "ffn_in", "ffn_out")
    )
    for name, dw in update.items():
        assert dw.shape == base[name].shape and 0 < np.linalg.norm(dw) < np.linalg.norm(base[name])


def test_analysis_and_report_compare_lora_with_full_finetuning(full_and_lora):
    analysis = load_analysis(full_and_lora)
    (entry,) = analysis["versus_full"]
    (full_dir,) = [p for p in full_and_lora.iterdir() if p.name.startswith("lora=full")]
    update = load_file(full_dir / "full_update.safetensors")
    for name, m in entry["matrices"].items():
        s = np.linalg.svd(update[name].astype(np.float64), compute_uv=False)
        np.testing.assert_allclose(m["singular_values"], s, rtol=1e-4, atol=1e-7)
        energy = np.cumsum(s**2) / np.sum(s**2)
        assert m["energy_rank_90"] == int(np.sum(energy < 0.9)) + 1
        assert len(m["intruders"]) == len(entry["epsilons"])
    (peer,) = entry["lora"].values()
    assert peer["rank"] == 2 and sorted(peer["matrices"]) == [
        "layer_0/q",
        "layer_0/v",
        "layer_1/q",
        "layer_1/v",
    ]
    grid = np.array(peer["matrices"]["layer_0/q"]["phi_input"], dtype=float)
    assert grid.shape == (32, 2) and np.nanmin(grid) >= 0 and np.nanmax(grid) <= 1 + 1e-6
    report = (full_and_lora / "report.md").read_text()
    assert (
        "## LoRA vs full fine-tuning" in report and "Rank of the full fine-tuning update" in report
    )
    assert (full_and_lora / "figures" / f"versus_full_energy_{full_dir.name}.png").exists()


def test_model_evals_reproduce_the_run_at_full_rank_and_the_base_at_zero(full_and_lora):
    analysis = load_analysis(full_and_lora)
    (entry,) = analysis["versus_full"]
    evals = entry["model_evals"]["runs"]
    assert sorted(e["rank"] for e in evals.values()) == [0, 2]
    for e in evals.values():
        assert e["eval_examples"] == 256  # debug=fast's data.eval_limit, as the run's own eval
        # W_0 + dW in every matrix is the run itself: its own final metric, from training.
        assert e["value"] == pytest.approx(e["run_value"], abs=1e-9)
        curve = e["truncation"]  # full fine-tuning and the highest LoRA rank
        # Eckart-Young: at full k, SVD_k(dW) = dW; the LoRA curve stops at its rank.
        assert curve["ks"] == ([0, 1, 2] if e["rank"] else [0, 1, 2, 4, 8, 16, 32])
        assert curve["values"][-1] == pytest.approx(e["run_value"], abs=1e-9)
        assert len(curve["similarity_kept"]) == len(curve["forgetting"]) == len(curve["ks"])
        assert -1 <= e["similarity_kept"] <= 1 and e["intervention"]["lambdas"] == [0.75, 0.5, 0]
        assert e["forgetting"] == 1 - e["similarity_kept"] and not e["lower_is_better"]
    (lora,) = [e for e in evals.values() if e["rank"] == 2]
    # k = 0 for LoRA is the pretrained model with the run's trained head.
    assert lora["truncation"]["values"][0] == pytest.approx(lora["pretrained_with_head"], abs=1e-9)
    report = (full_and_lora / "report.md").read_text()
    assert "Truncation curve" in report and "Forgetting: 1 - the Spearman" in report
    # The audit's advice for that run carries its truncation curve's answer.
    from lora_jax.audit.measure import advise, audit

    (name,) = [n for n, e in evals.items() if e["rank"] == 2]
    (advice,) = advise(audit([full_and_lora / name / "adapter"])).values()
    assert advice["task"]["rank_for_90"] == lora["truncation"]["rank_for_90"]
    assert advice["task"]["ks"] == [0, 1, 2]
    (full_dir,) = [p for p in full_and_lora.iterdir() if p.name.startswith("lora=full")]
    for kind in ("truncation", "forgetting"):
        assert (full_and_lora / "figures" / f"versus_full_{kind}_{full_dir.name[:40]}.png").exists()


def test_run_model_with_w0_is_the_pretrained_encoder(full_and_lora):
    from lora_jax.analysis.truncation import similarity_kept
    from lora_jax.evals.kernel_eval import load_run_model
    from lora_jax.runs.record import read_runs
    from lora_jax.weights.base_kernels import load_kernels

    for run in read_runs(full_and_lora):
        model = load_run_model(run, forget_sentences=32)
        base = model.embed_pretrained()
        if not run.full_finetune:  # full FT keeps its own embeddings and LayerNorms at W_0
            np.testing.assert_array_equal(model.embed(model.w0), base)
            assert similarity_kept(base, model.embed(model.w0)) == pytest.approx(1.0, abs=1e-12)
        else:  # W_0 + dW is the trained kernel, and dW the update the run saved
            saved = load_kernels(run.run_dir / "full_update.safetensors")
            assert sorted(saved) == sorted(model.dw)
            for key, dw in model.dw.items():
                np.testing.assert_allclose(dw, saved[key], atol=1e-6)
        assert base.shape == (32, 32)  # tiny BERT's hidden size


def test_model_eval_rows_flatten_every_evaluated_model(full_and_lora):
    from lora_jax.evals.model_evals import model_eval_rows

    analysis = load_analysis(full_and_lora)
    rows = model_eval_rows(analysis)
    evals = analysis["versus_full"][0]["model_evals"]["runs"].values()
    expected = sum(
        1 + len(e["truncation"]["ks"]) + len(e["intervention"]["values"] or []) for e in evals
    )
    assert len(rows) == expected and all(len(r) == len(rows[0]) for r in rows)


def test_a_new_analysis_keeps_the_model_evals_of_unchanged_runs(full_and_lora, monkeypatch):
    from lora_jax.evals import model_evals
    from lora_jax.runs.record import read_runs
    from lora_jax.stages import finish_sweep

    def before():
        return load_analysis(full_and_lora)["versus_full"][0]

    def runs_of(entry):  # the records without their keys
        return {n: {k: v for k, v in e.items() if k != "key"} for n, e in entry.items()}

    old = before()["model_evals"]["runs"]
    assert all(e["key"]["identity"] and e["key"]["checkpoint"] for e in old.values())

    def no_evaluation(*args, **kwargs):
        raise AssertionError("an unchanged run was evaluated again")

    monkeypatch.setattr(model_evals, "run_evals", no_evaluation)
    for evaluate in (False, True):  # model_evals=false keeps them; true keeps them too
        finish_sweep(full_and_lora, use_wandb=False, model_evals=evaluate)
        new = before()["model_evals"]["runs"]
        assert runs_of(new) == runs_of(old) and all(e["key"]["reused"] for e in new.values())
    # Each stage writes its own file: analysis.json holds no evaluation, evals.json holds them.
    assert "model_evals" not in (full_and_lora / "analysis.json").read_text()
    evals = json.loads((full_and_lora / "evals.json").read_text())["versus_full"]
    assert list(evals) == [before()["run"]]
    # A run whose checkpoint (or identity, eval_limit, curve) differs is not kept.
    run = next(r for r in read_runs(full_and_lora) if r.rank == 2)
    changed = {run.name: {**old[run.name], "key": {**old[run.name]["key"], "checkpoint": 1}}}
    assert model_evals.evals_of(run, True, None, changed, evaluate=False) is None
    assert model_evals.evals_of(run, True, 8, old, evaluate=False) is None
    assert model_evals.evals_of(run, True, None, old, evaluate=False)["key"]["reused"]

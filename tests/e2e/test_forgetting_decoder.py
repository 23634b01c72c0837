"""Forgetting of a decoder: the LM loss of held-out text (MR's test sentences) under the
fine-tuned model against the pretrained one, through a real tiny-Llama E2E sweep with a full
fine-tuning run beside a LoRA run; the loss itself against numpy on the model's logits; and
on SmolLM2 (a real pretrained LM), a large random update raises it."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from conftest import run_module
from test_lm import write_synthetic_e2e

from lora_jax.report.sections.rank_analysis import load_analysis

# Two tiny-Llama runs and their model evaluations (about 80 s) before the first test.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def decoder_sweep(tmp_path_factory):
    from lora_jax.data import assets

    assets.ensure_mr(fetch=False)  # MR from the usual cache; E2E synthetic beside it
    cwd = tmp_path_factory.mktemp("forget_decoder")
    cache = cwd / "cache"
    write_synthetic_e2e(cache)
    (cache / "tensorflow_datasets").mkdir()
    os.symlink(assets.data_dir() / "mr_polarity", cache / "tensorflow_datasets" / "mr_polarity")
    sweep = cwd / "sw"
    common = [
        "model=tiny_llama",
        "data=e2e",
        "debug=fast",
        "logger=none",
        "generate.max_new_tokens=4",
        f"hydra.sweep.dir={sweep}",
    ]
    env = {"LORA_JAX_CACHE": str(cache)}
    run_module("experiments.sweep", "rank=2", *common, cwd=cwd, env=env)
    run_module("experiments.sweep", "rank=0", "lora=full", *common, cwd=cwd, env=env)
    return sweep, cache


def test_decoder_sweep_reports_lm_loss_forgetting(decoder_sweep):
    sweep, _ = decoder_sweep
    (entry,) = load_analysis(sweep)["versus_full"]
    evals = entry["model_evals"]
    assert "skipped" not in evals and evals["forget_text"] == "mr test[:256]"
    assert evals["forgetting_measure"].startswith("LM loss increase")
    runs = evals["runs"]
    assert sorted(e["rank"] for e in runs.values()) == [0, 2]
    pretrained = {e["pretrained_held_out_loss"] for e in runs.values()}
    assert len(pretrained) == 1  # the same pretrained model (same seed) under every run
    for e in runs.values():
        # The task metric is the eval LM loss; W_0 + dW is the run: its own final eval loss.
        assert e["metric"] == "loss" and e["lower_is_better"]
        assert e["value"] == pytest.approx(e["run_value"], rel=1e-6)
        assert e["forgetting"] == e["held_out_loss"] - e["pretrained_held_out_loss"]
        assert e["held_out_perplexity"] == pytest.approx(math.exp(e["held_out_loss"]), rel=1e-9)
        curve = e["truncation"]
        assert curve["ks"] == ([0, 1, 2] if e["rank"] else [0, 1, 2, 4, 8, 16, 32])
        assert curve["values"][-1] == pytest.approx(e["run_value"], rel=1e-6)
        assert len(curve["forgetting"]) == len(curve["held_out_loss"]) == len(curve["ks"])
        assert curve["forgetting"][-1] == pytest.approx(e["forgetting"], abs=1e-5)
        # The LoRA run trained nothing but its adapters: the update's loss drop needs k > 0.
        assert curve["rank_for_90"] in curve["ks"][1:]
    (lora,) = [e for e in runs.values() if e["rank"] == 2]
    # dW = 0 (k = 0 of a LoRA run) is the pretrained model: forgetting exactly 0.
    assert lora["truncation"]["forgetting"][0] == 0.0
    assert lora["truncation"]["values"][0] == lora["pretrained_with_head"]
    report = (sweep / "report.md").read_text()
    assert "Forgetting: the increase of the LM loss" in report
    assert "loss is the eval split's LM loss" in report
    (full_dir,) = [p for p in sweep.iterdir() if "lora=full" in p.name]
    for kind in ("truncation", "forgetting"):
        assert (sweep / "figures" / f"versus_full_{kind}_{full_dir.name[:40]}.png").exists()


def test_pretrained_lm_loss_is_numpy_cross_entropy(decoder_sweep, monkeypatch):
    from lora_jax import data as data_lib
    from lora_jax import models
    from lora_jax.evals.kernel_eval import load_run_model
    from lora_jax.lora import LoRAConfig
    from lora_jax.runs.record import read_runs
    from lora_jax.train.setup import model_rng

    sweep, cache = decoder_sweep
    monkeypatch.setenv("LORA_JAX_CACHE", str(cache))
    (run,) = [r for r in read_runs(sweep) if not r.full_finetune]
    n = 24
    model = load_run_model(run, forget_sentences=n)
    pretrained = model.lm_loss_pretrained()

    # Independently: a fresh LoRA-free tiny Llama of the run's seed, one sentence at a time
    # (no padding), log-softmax and cross-entropy in numpy on its logits.
    pre = models.load_model("tiny_llama", LoRAConfig(), rng=model_rng(run.config["seed"]))
    eos, max_len = pre.config.eos_token_id, run.config["data"]["max_len"]
    nll, count = 0.0, 0
    source = data_lib.load_split("mr", f"test[:{n}]")
    for i in range(n):
        text = source[i]["sentence"]
        text = text.decode() if isinstance(text, bytes) else str(text)
        ids = ([*pre.tokenizer.encode(text, add_special_tokens=False).ids, eos])[:max_len]
        logits = np.asarray(pre.module.apply({"params": pre.params}, np.asarray([ids])), float)[0]
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        nll -= logp[np.arange(len(ids) - 1), ids[1:]].sum()
        count += len(ids) - 1
    assert pretrained["loss"] == pytest.approx(nll / count, rel=1e-5)
    assert pretrained["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)

    # dW = 0 is the pretrained model exactly (a random-init model knows nothing to lose: the
    # large random update is tested on SmolLM2 below).
    assert model.lm_loss(model.w0) == pretrained


# SmolLM2-135M: a 2-step run and its model rebuilt, about 2.5 min on 2 cores.
def test_a_large_random_update_makes_smollm2_forget(decoder_sweep, monkeypatch, tmp_path):
    """A tiny random-init decoder knows nothing, so only a real pretrained LM can lose
    something: SmolLM2's loss on the MR sentences is far below uniform (log 49152 = 10.8),
    dW = 0 keeps it exactly, and a large random dW in its adapted matrices raises it a lot."""
    from lora_jax.evals.kernel_eval import load_run_model
    from lora_jax.runs.record import read_run
    from lora_jax.weights.gguf import smollm2_path

    try:
        smollm2_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    _, cache = decoder_sweep
    monkeypatch.setenv("LORA_JAX_CACHE", str(cache))
    run_dir = tmp_path / "run"
    run_module(
        "experiments.train",
        "model=smollm2",
        "data=e2e",
        "rank=2",
        "logger=none",
        "trainer.steps=2",
        "trainer.eval_every=2",
        "trainer.checkpoint_every=2",
        "trainer.spectrum_every=0",
        "trainer.progress=false",
        "data.max_len=32",
        "data.batch_size=2",
        "data.eval_limit=8",
        "generate.num_beams=1",
        "generate.max_new_tokens=2",
        "generate.eval_limit=2",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        env={"LORA_JAX_CACHE": str(cache)},
    )
    model = load_run_model(read_run(run_dir), forget_sentences=16)
    pretrained = model.lm_loss_pretrained()
    assert 2.0 < pretrained["loss"] < 7.0  # measured 5.17 on these 16 sentences at 32 tokens
    assert model.lm_loss(model.w0) == pretrained
    rng = np.random.default_rng(0)
    noisy = {
        k: w + 3.0 * np.linalg.norm(w) / math.sqrt(w.size) * rng.standard_normal(w.shape)
        for k, w in model.w0.items()
    }
    assert model.lm_loss(noisy)["loss"] > pretrained["loss"] + 5.0  # measured +13.3

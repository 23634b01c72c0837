"""A run evaluates on W + s·BA through a model without adapters (`Objective.merged_predict`),
and a decoder decodes so: the predictions are the adapted model's, and every rank of a sweep
(one process, the basic launcher) evaluates and decodes with the same compiled programs."""

from __future__ import annotations

import jax
import numpy as np
from conftest import FIXTURES, compose_config

from lora_jax.config import run_config
from lora_jax.models import generate
from lora_jax.train import lm, objectives
from lora_jax.train.runner import OneRun
from lora_jax.train.setup import plan, prepare_run


def _engine(tmp_path, rank: int, *overrides: str) -> OneRun:
    workdir = tmp_path / f"r{rank}"
    workdir.mkdir(parents=True)
    model = [] if any(o.startswith("model=") for o in overrides) else ["model=tiny_bert"]
    cfg = run_config(compose_config(*model, f"rank={rank}", f"workdir={workdir}", *overrides))
    engine = OneRun(prepare_run(cfg, plan(cfg), workdir))
    # A trained-looking B (it starts at 0, where merging changes nothing)
    rng = np.random.default_rng(rank)
    engine.trainable = jax.tree_util.tree_map_with_path(
        lambda path, x: (
            x + 0.3 * rng.standard_normal(x.shape).astype(x.dtype)
            if path[-1].key == "lora_b"
            else x
        ),
        engine.trainable,
    )
    return engine


def _predictions(engine: OneRun, merged: bool) -> np.ndarray:
    engine.merged_eval = merged
    captured = []
    objective = engine.s.objective
    engine.s.objective = objective._replace(metrics=lambda p, labels: captured.append(p) or {})
    engine.evaluate()
    engine.s.objective = objective
    return captured[0]


def test_merged_evaluation_predicts_what_the_adapted_model_predicts(tmp_path):
    engine = _engine(tmp_path, 4, "targets=q+k+v+o+ffn_in+ffn_out")
    assert engine.merged_eval  # float32, one device, a classification task
    adapted, merged = _predictions(engine, False), _predictions(engine, True)
    assert adapted.shape == merged.shape == (engine.s.data.eval_size, 2)
    np.testing.assert_allclose(merged, adapted, rtol=1e-4, atol=1e-5)
    # B moved the logits: the comparison is not one of two unadapted models
    engine.trainable = jax.tree.map(np.zeros_like, engine.trainable)
    assert np.abs(_predictions(engine, True) - merged).max() > 1e-3


def test_every_rank_evaluates_with_the_first_ranks_programs(tmp_path):
    _predictions(_engine(tmp_path, 1), True)
    programs = objectives._predict_jit._cache_size()
    assert programs >= 1
    _predictions(_engine(tmp_path, 2), True)
    _predictions(_engine(tmp_path, 8, "lora.rank_pattern={q:3}"), True)
    assert objectives._predict_jit._cache_size() == programs


DECODER = (
    "model=tiny_llama",
    "data=local",
    "data.kind=completion",
    f"data.path={FIXTURES / 'local_mr' / 'completion.jsonl'}",
    "data.max_len=48",
    "generate.num_beams=1",
    "generate.max_new_tokens=4",
    "generate.eval_limit=8",
)


def test_a_decoder_evaluates_and_decodes_every_rank_with_one_program(tmp_path):
    engine = _engine(tmp_path, 2, *DECODER)
    assert engine.merged_eval
    adapted, merged = _predictions(engine, False), _predictions(engine, True)
    np.testing.assert_allclose(merged, adapted, rtol=1e-4, atol=1e-4)  # summed NLL per example
    decoders = len(generate._COMPILED)
    programs = lm._predict_jit._cache_size()
    for rank in (2, 4):
        e = _engine(tmp_path / "d", rank, *DECODER) if rank != 2 else engine
        _predictions(e, True)
        assert e.s.objective.final(e.member_params(0))["decoded"] == 8
    assert len(generate._COMPILED) == decoders + 1  # rank 4 decoded with rank 2's program
    assert lm._predict_jit._cache_size() == programs


def test_a_bfloat16_base_evaluates_unmerged(tmp_path):
    """Folding dW into a bfloat16 kernel would round most of it away."""
    assert not _engine(tmp_path, 2, "model.dtype=bfloat16").merged_eval

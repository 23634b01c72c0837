"""LoRADense and its weight helpers: exactness at init, merge/unmerge, options, errors."""

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tolerance import reordered_atol

from lora_jax.lora import (
    LoRAConfig,
    LoRADense,
    adapters,
    delta_w,
    lora_scale,
    merge,
    parse_targets,
    unmerge,
)
from lora_jax.partition import label_params, make_optimizer, split
from lora_jax.train.steps import make_train_step, step_compiler_options

IN, OUT = 24, 16
X = jax.random.normal(jax.random.key(1), (8, IN))


def _init(layer, x=X):
    return layer.init(jax.random.key(0), x)["params"]


def test_rank_zero_is_plain_dense():
    params = _init(LoRADense(OUT, rank=0))
    assert sorted(params) == ["bias", "kernel"]
    ref = nn.Dense(OUT).init(jax.random.key(0), X)["params"]
    chex.assert_trees_all_equal(params, ref)


@pytest.mark.parametrize("a_init", ["gaussian", "kaiming_uniform"])
@pytest.mark.parametrize("scaling", ["alpha_over_r", "alpha_over_sqrt_r", "none"])
def test_at_init_output_equals_dense(a_init, scaling):
    layer = LoRADense(OUT, rank=4, alpha=16.0, scaling=scaling, a_init=a_init)
    params = _init(layer)
    assert params["lora_a"].shape == (IN, 4) and params["lora_b"].shape == (4, OUT)
    assert not np.any(params["lora_b"])  # B starts at zero
    dense = {"kernel": params["kernel"], "bias": params["bias"]}
    want = nn.Dense(OUT).apply({"params": dense}, X)
    np.testing.assert_allclose(
        layer.apply({"params": params}, X), want, rtol=0, atol=reordered_atol(want, ops=IN)
    )


def test_param_count_is_r_times_in_plus_out():
    for r in (1, 3, 16):
        p = _init(LoRADense(OUT, rank=r))
        assert p["lora_a"].size + p["lora_b"].size == r * (IN + OUT)


@pytest.mark.parametrize(
    ("scaling", "expected"),
    [("alpha_over_r", 16 / 4), ("alpha_over_sqrt_r", 16 / 2), ("none", 1.0)],
)
def test_scaling_enters_the_output_as_documented(scaling, expected):
    assert lora_scale(4, 16.0, scaling) == pytest.approx(expected)
    layer = LoRADense(OUT, rank=4, alpha=16.0, scaling=scaling)
    params = _init(layer)
    params["lora_b"] = jax.random.normal(jax.random.key(2), params["lora_b"].shape)
    base = X @ params["kernel"] + params["bias"]
    lora = X @ params["lora_a"] @ params["lora_b"]
    np.testing.assert_allclose(
        layer.apply({"params": params}, X), base + expected * lora, rtol=1e-5, atol=1e-5
    )


def test_a_init_distributions():
    big_in, r = 4096, 64
    x = jnp.ones((1, big_in))
    gauss = _init(LoRADense(128, rank=r, a_init="gaussian"), x)["lora_a"]
    unif = _init(LoRADense(128, rank=r, a_init="kaiming_uniform"), x)["lora_a"]
    # Gaussian: N(0, 1/in). Kaiming-uniform (loralib): U(-1/sqrt(in), 1/sqrt(in)).
    assert float(jnp.std(gauss)) == pytest.approx(1 / math.sqrt(big_in), rel=0.02)
    bound = 1 / math.sqrt(big_in)
    assert float(jnp.max(jnp.abs(unif))) <= bound
    assert float(jnp.max(jnp.abs(unif))) > 0.99 * bound
    assert float(jnp.std(unif)) == pytest.approx(bound / math.sqrt(3), rel=0.02)


def test_dropout_only_on_lora_path_and_deterministic_flag():
    layer = LoRADense(OUT, rank=4, dropout=0.5)
    params = _init(layer)
    params["lora_b"] = jnp.ones_like(params["lora_b"])
    det = layer.apply({"params": params}, X, deterministic=True)
    sto = layer.apply(
        {"params": params}, X, deterministic=False, rngs={"dropout": jax.random.key(3)}
    )
    assert not np.allclose(det, sto)
    params["lora_b"] = jnp.zeros_like(params["lora_b"])  # no LoRA path -> dropout has no effect
    det = layer.apply({"params": params}, X, deterministic=True)
    sto = layer.apply(
        {"params": params}, X, deterministic=False, rngs={"dropout": jax.random.key(3)}
    )
    np.testing.assert_array_equal(det, sto)


class _TwoLayer(nn.Module):
    lora: LoRAConfig

    @nn.compact
    def __call__(self, x):
        h = nn.relu(self.lora.dense("q", 0, 32)(x))
        h = self.lora.dense("v", 0, 32)(h)
        return nn.Dense(3, name="head")(h)


def _train_few_steps(model, params, steps=5):
    labels = label_params(params, trainable=["head/"])
    parts = split(params, labels)
    tx = make_optimizer(split(labels, labels).trainable, optax.adam, 1e-2)
    y = jnp.arange(X.shape[0]) % 3

    def loss_fn(p, batch, rng):
        logits = model.apply({"params": p}, batch["x"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean(), {}

    step = make_train_step(loss_fn, tx)
    trainable, opt_state = parts.trainable, tx.init(parts.trainable)
    for _ in range(steps):
        trainable, opt_state, _ = step(
            trainable, parts.frozen, opt_state, {"x": X, "y": y}, jax.random.key(0)
        )
    return trainable, parts.frozen


def test_merge_unmerge_after_training():
    cfg = LoRAConfig(rank=4, alpha=8.0, targets="qv")
    model = _TwoLayer(cfg)
    params = model.init(jax.random.key(0), X)["params"]
    trainable, frozen = _train_few_steps(model, params)
    from lora_jax.partition import combine

    trained = combine(trainable, frozen)
    assert np.any(trained["q"]["lora_b"])  # training moved B
    merged = merge(trained, alpha=8.0)
    assert sorted(merged["q"]) == ["bias", "kernel"]
    plain = _TwoLayer(LoRAConfig(rank=0))
    np.testing.assert_allclose(
        plain.apply({"params": merged}, X),
        model.apply({"params": trained}, X),
        rtol=1e-5,
        atol=1e-5,
    )
    dw = delta_w(trained["q"]["lora_a"], trained["q"]["lora_b"], 8.0)
    np.testing.assert_allclose(merged["q"]["kernel"], trained["q"]["kernel"] + dw, rtol=1e-6)
    restored = unmerge(merged, adapters(trained), alpha=8.0)
    chex.assert_trees_all_close(restored, trained, atol=1e-6)


def test_invalid_rank_and_names_raise_clear_errors():
    with pytest.raises(ValueError, match=r"rank=-1"):
        _init(LoRADense(OUT, rank=-1))
    with pytest.raises(ValueError, match=r"rank=2\.5"):
        _init(LoRADense(OUT, rank=2.5))
    with pytest.raises(ValueError, match=r"rank=17 is larger than min\(in, out\)=16"):
        _init(LoRADense(OUT, rank=17))
    with pytest.raises(ValueError, match=r"scaling='alpha/r'.*alpha_over_r"):
        _init(LoRADense(OUT, rank=2, scaling="alpha/r"))
    with pytest.raises(ValueError, match=r"a_init='xavier'.*gaussian"):
        LoRAConfig(rank=2, a_init="xavier")
    with pytest.raises(ValueError, match=r"targets='qx'.*ffn_in"):
        parse_targets("qx")
    with pytest.raises(ValueError, match=r"rank_pattern key='k'"):
        LoRAConfig(rank=2, targets="qv", rank_pattern={"k": 4})


def test_parse_targets_short_forms():
    assert parse_targets("q") == ("q",)
    assert parse_targets("qv") == ("q", "v")
    assert parse_targets("qkvo") == ("q", "k", "v", "o")
    assert parse_targets("v,q,ffn_out") == ("q", "v", "ffn_out")
    assert LoRAConfig(rank=4, targets="qv", rank_pattern={"v": 2}).rank_for("v", 0) == 2
    assert LoRAConfig(rank=4, targets="qv", layers=(1,)).rank_for("q", 0) == 0


def test_train_step_memory_scheduler_keeps_results():
    """On CPU the step is compiled with XLA's memory-minimising scheduler (lora_jax.train.steps):
    bit-identical to the default (concurrency) schedule. (Its scratch saving is MiniLM's, 529
    -> 461 MB, `benchmarks.mem_probe`; on this toy the heuristic schedules differ the other way.)"""
    if jax.default_backend() != "cpu":
        pytest.skip("a CPU compiler option")
    cfg = LoRAConfig(rank=4, alpha=8.0, targets="qv")
    model = _TwoLayer(cfg)
    params = model.init(jax.random.key(0), X)["params"]
    labels = label_params(params, trainable=["head/"])
    parts = split(params, labels)
    tx = make_optimizer(split(labels, labels).trainable, optax.adam, 1e-2)
    batch = {"x": X, "y": jnp.arange(X.shape[0]) % 3}

    def loss_fn(p, batch, rng):
        logits = model.apply({"params": p}, batch["x"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean(), {}

    step = make_train_step(loss_fn, tx, step_compiler_options())
    default = make_train_step(loss_fn, tx)
    out = {}
    for name, f in (("ours", step), ("default", default)):
        t = jax.tree.map(jnp.copy, parts.trainable)
        o = tx.init(t)
        for _ in range(3):
            t, o, _ = f(t, parts.frozen, o, batch, jax.random.key(0))
        out[name] = t
    jax.tree.map(np.testing.assert_array_equal, out["ours"], out["default"])

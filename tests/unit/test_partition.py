"""Freezing: labels, split/combine, optimizer state only for trainable leaves, one compile."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lora_jax.lora import LoRAConfig
from lora_jax.partition import (
    combine,
    count_params,
    freeze_rules,
    label_params,
    make_optimizer,
    split,
)
from lora_jax.train.steps import make_train_step, tree_bytes


class _Net(nn.Module):
    lora: LoRAConfig

    @nn.compact
    def __call__(self, x):
        h = self.lora.dense("q", 0, 32)(x)
        h = self.lora.dense("v", 0, 32)(nn.relu(h))
        return nn.Dense(2, name="head")(nn.relu(h))


X = jax.random.normal(jax.random.key(1), (16, 20))
Y = jnp.arange(16) % 2


def _setup(rank=4, **label_kw):
    model = _Net(LoRAConfig(rank=rank, targets="qv"))
    params = model.init(jax.random.key(0), X)["params"]
    labels = label_params(params, **label_kw)

    def loss_fn(p, batch, rng):
        logits = model.apply({"params": p}, batch["x"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean(), {}

    return params, labels, loss_fn


def test_labels():
    params, labels, _ = _setup(trainable=["head/"])
    assert labels["q"] == {"kernel": "frozen", "bias": "frozen", "lora_a": "lora", "lora_b": "lora"}
    assert labels["head"] == {"kernel": "trainable", "bias": "trainable"}
    full = label_params(params, full_finetune=True)
    assert set(jax.tree.leaves(full)) == {"trainable"}


def test_split_combine_roundtrip():
    params, labels, _ = _setup(trainable=["head/"])
    parts = split(params, labels)
    assert sorted(parts.trainable) == ["head", "q", "v"]
    assert sorted(parts.trainable["q"]) == ["lora_a", "lora_b"]
    assert sorted(parts.frozen["q"]) == ["bias", "kernel"]
    chex.assert_trees_all_equal(combine(*parts), params)
    assert count_params(parts.trainable) == 4 * (20 + 32) + 4 * (32 + 32) + (32 * 2 + 2)


def test_only_trainable_leaves_change_and_frozen_have_no_state():
    params, labels, loss_fn = _setup(trainable=["head/"])
    parts = split(params, labels)
    tx = make_optimizer(split(labels, labels).trainable, optax.adamw, 1e-2, weight_decay=0.01)
    opt_state = tx.init(parts.trainable)
    # Adam holds two moments per trainable scalar, nothing for frozen ones.
    n_trainable = count_params(parts.trainable)
    assert tree_bytes(opt_state) == pytest.approx(2 * 4 * n_trainable, abs=64)
    step = make_train_step(loss_fn, tx)
    frozen_before = jax.tree.map(np.array, parts.frozen)
    trainable_before = jax.tree.map(np.array, parts.trainable)
    trainable = parts.trainable
    for _ in range(5):
        trainable, opt_state, metrics = step(
            trainable, parts.frozen, opt_state, {"x": X, "y": Y}, jax.random.key(0)
        )
    chex.assert_trees_all_equal(parts.frozen, frozen_before)  # bitwise
    for path_leaf_before, path_leaf_after in zip(
        jax.tree.leaves(trainable_before), jax.tree.leaves(trainable), strict=True
    ):
        assert not np.array_equal(path_leaf_before, path_leaf_after)
    assert np.isfinite(metrics["grad_norm"])


def test_optimizer_takes_only_the_trainable_half():
    """One freezing mechanism: frozen leaves are never differentiated, so an optimizer over the
    full tree's labels (the removed `set_to_zero` path) is refused."""
    params, labels, _loss_fn = _setup(trainable=["head/"])
    with pytest.raises(ValueError, match=r"split\(labels, labels\).trainable"):
        make_optimizer(labels, optax.adam, 1e-2)
    tx = make_optimizer(split(labels, labels).trainable, optax.adam, 1e-2)
    parts = split(params, labels)
    state = tx.init(parts.trainable)
    assert tree_bytes(state) == pytest.approx(2 * 4 * count_params(parts.trainable), abs=64)


def test_every_leaf_is_covered_by_exactly_one_rule():
    params, _, _ = _setup()
    rules = freeze_rules(["head/"])
    assert rules[-1] == (".*", "frozen")  # the last rule covers what the others leave
    labels = label_params(params, trainable=["head/", "q/lora_a"])
    assert labels["q"]["lora_a"] == "trainable"  # the first matching rule wins
    assert labels["q"]["lora_b"] == "lora" and labels["v"]["kernel"] == "frozen"


def test_lr_multipliers_lora_plus():
    params, labels, _ = _setup()
    sub = split(labels, labels).trainable
    tx = make_optimizer(sub, optax.sgd, 1.0, lr_multipliers={"lora_b": 16.0})
    trainable = split(params, labels).trainable
    grads = jax.tree.map(jnp.ones_like, trainable)
    updates, _ = tx.update(grads, tx.init(trainable), trainable)
    np.testing.assert_allclose(updates["q"]["lora_b"], -16.0)
    np.testing.assert_allclose(updates["q"]["lora_a"], -1.0)
    with pytest.raises(ValueError, match="lora_c"):
        make_optimizer(sub, optax.sgd, 1.0, lr_multipliers={"lora_c": 2.0})


def test_rule_that_matches_nothing_is_an_error_with_near_matches():
    params, _, _ = _setup()
    with pytest.raises(ValueError, match=r"'haed/' matches no parameter; near matches: \['head/"):
        label_params(params, trainable=["haed/"])


def test_train_step_compiles_once_per_shape():
    params, labels, loss_fn = _setup(trainable=["head/"])
    parts = split(params, labels)
    tx = make_optimizer(split(labels, labels).trainable, optax.adam, 1e-3)

    traced_loss = chex.assert_max_traces(loss_fn, n=1)
    step = make_train_step(traced_loss, tx)
    trainable, opt_state = parts.trainable, tx.init(parts.trainable)
    for i in range(4):
        trainable, opt_state, _ = step(
            trainable, parts.frozen, opt_state, {"x": X, "y": Y}, jax.random.key(i)
        )


def test_train_step_reports_the_adapters_gradient_norm_apart():
    """grad_norm_lora covers lora_a and lora_b only: the rsLoRA experiments read it."""
    import optax

    from lora_jax.train.steps import make_train_step

    params = {
        "dense": {
            "kernel": jnp.zeros((2, 2)),
            "lora_a": jnp.zeros((2, 1)),
            "lora_b": jnp.zeros((1, 2)),
        }
    }

    def loss_fn(p, batch, rng):  # gradients 1 (kernel), 3 (lora_a), 4 (lora_b) everywhere
        d = p["dense"]
        return jnp.sum(d["kernel"]) + 3 * jnp.sum(d["lora_a"]) + 4 * jnp.sum(d["lora_b"]), {}

    step = make_train_step(loss_fn, optax.sgd(0.0))
    _, _, out = step(params, {}, optax.sgd(0.0).init(params), {}, jax.random.key(0))
    assert float(out["grad_norm_lora"]) == pytest.approx(np.sqrt(2 * 9 + 2 * 16))
    assert float(out["grad_norm"]) == pytest.approx(np.sqrt(4 * 1 + 2 * 9 + 2 * 16))

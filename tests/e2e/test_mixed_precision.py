"""`model.dtype=bfloat16`: mixed precision bounded against float32.

`mixed_dot`'s custom backward against autodiff of the same bf16 product and against float32;
a few real train steps of tiny BERT (LoRA and full fine-tuning) and a tiny Llama in both
dtypes: the loss trajectories agree within `LOSS_RTOL`, what trains and the optimizer state
stay float32, the frozen base is bfloat16; the entry point runs end to end in bfloat16. The
float32 default is the code path the parity tests (tests/unit/test_models_*.py, test_interop.py)
already pin.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import FAST, call_main, compose_config

from lora_jax import data as data_lib
from lora_jax import models
from lora_jax.config import run_config
from lora_jax.lora import LoRAConfig, LoRADense, mixed_dot
from lora_jax.partition import label_params, make_optimizer, split
from lora_jax.train.lm import causal_lm_loss
from lora_jax.train.objectives import classification
from lora_jax.train.precision import BF16_CPU_FLAGS, cast_frozen, slow_bf16_notice
from lora_jax.train.setup import plan, prepare_run
from lora_jax.train.steps import make_train_step, tree_bytes

BF16, F32 = jnp.bfloat16, jnp.float32
# bfloat16 keeps 8 significant bits (relative rounding 2^-9 = 0.002 per operand): after a few
# steps of tiny models the loss stays within 2% of float32's (measured: at most 0.94%, full
# fine-tuning of tiny BERT; 0.83% its LoRA; 0.001% tiny Llama, whose 0.02-std weights keep
# activations small).
LOSS_RTOL = 2e-2
STEPS = 8


def _rel(a, b) -> float:
    return float(jnp.linalg.norm(a.astype(F32) - b.astype(F32)) / jnp.linalg.norm(b.astype(F32)))


def test_mixed_dot_backward_matches_autodiff_and_float32():
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (4, 6, 48), F32)  # (batch, length, in), as a projection sees it
    w = jax.random.normal(kw, (48, 40), F32)
    g = jax.random.normal(kg, (4, 6, 40), F32)  # a cotangent that is not all ones

    def plain(x, w):  # the same product, differentiated by JAX
        return jnp.dot(x.astype(BF16), w.astype(BF16), preferred_element_type=F32)

    def loss(f):
        return lambda x, w: jnp.sum(f(x, w) * g)

    ours = jax.grad(loss(mixed_dot), argnums=(0, 1))(x, w)
    auto = jax.grad(loss(plain), argnums=(0, 1))(x, w)
    exact = jax.grad(loss(lambda x, w: x @ w), argnums=(0, 1))(x, w)
    np.testing.assert_array_equal(mixed_dot(x, w), plain(x, w))  # the same forward
    for o, a, e in zip(ours, auto, exact, strict=True):
        assert o.dtype == F32
        assert _rel(o, a) < 1e-2 and _rel(o, e) < 1e-2  # bf16 rounding of one operand each
    # A bfloat16 weight (a frozen kernel) gets a gradient of its own dtype.
    assert jax.grad(loss(mixed_dot), argnums=1)(x, w.astype(BF16)).dtype == BF16


def test_mixed_dot_backward_multiplies_in_bfloat16_only():
    """Why the custom VJP: autodiff of the forward multiplies the float32 cotangent with a bf16
    operand (a float32 GEMM on CPU); ours keeps all three products bf16 x bf16 -> float32."""
    x, w = jnp.ones((2, 5, 8)), jnp.ones((8, 3))
    jaxpr = jax.make_jaxpr(jax.grad(lambda x, w: mixed_dot(x, w).sum(), argnums=(0, 1)))(x, w)
    dots = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "dot_general"]
    dots += [
        e
        for eq in jaxpr.jaxpr.eqns
        for sub in jax.core.jaxprs_in_params(eq.params)
        for e in sub.eqns
        if e.primitive.name == "dot_general"
    ]
    assert len(dots) == 3
    for e in dots:
        assert [v.aval.dtype for v in e.invars] == [BF16, BF16]
        assert e.outvars[0].aval.dtype == F32


def test_lora_dense_bfloat16_keeps_the_lora_path_float32():
    x = jax.random.normal(jax.random.key(1), (3, 16))
    layer = LoRADense(features=8, rank=2, dtype="bfloat16")
    params = layer.init(jax.random.key(0), x)["params"]
    params = {**params, "lora_b": jnp.ones_like(params["lora_b"])}
    assert all(v.dtype == F32 for v in params.values())
    y = layer.apply({"params": params}, x)
    base = layer.apply({"params": {**params, "lora_b": jnp.zeros_like(params["lora_b"])}}, x)
    assert y.dtype == F32
    np.testing.assert_allclose(base, mixed_dot(x, params["kernel"]) + params["bias"], rtol=1e-6)
    lora = 4.0 * (x @ params["lora_a"]) @ params["lora_b"]  # alpha 8 / r 2, in float32
    np.testing.assert_allclose(y - base, lora, rtol=1e-5, atol=1e-5)


def _train(model: str, dtype: str, full_finetune: bool = False, lr: float = 3e-3):
    """STEPS real train steps (AdamW) of a tiny model on one fixed random batch."""
    pre = models.load_model(
        model, LoRAConfig(rank=4, targets="qv"), num_labels=2, head_dropout=0.0, dtype=dtype
    )
    rng = np.random.default_rng(0)
    ids = rng.integers(4, 100, (8, 16)).astype(np.int32)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": 0 * ids}
    if pre.head_rules:  # the encoder: sentence classification
        batch["labels"] = rng.integers(0, 2, 8).astype(np.int32)
        loss_fn = classification(pre.module, data_lib.get_task("mr")).loss_fn
    else:  # the decoder: next-token prediction
        batch["loss_mask"] = np.ones_like(ids)

        def loss_fn(params, batch, key):
            logits = pre.module.apply({"params": params}, batch["input_ids"])
            return causal_lm_loss(logits, batch["input_ids"], batch["loss_mask"]), {}

    labels = label_params(pre.params, trainable=pre.head_rules, full_finetune=full_finetune)
    parts = cast_frozen(split(pre.params, labels), dtype)
    tx = make_optimizer(split(labels, labels).trainable, optax.adamw, lr)
    opt_state = tx.init(parts.trainable)
    step = make_train_step(loss_fn, tx)
    trainable, losses, key = parts.trainable, [], jax.random.key(0)
    for _ in range(STEPS):
        # one dropout key for both dtypes: the same masks
        trainable, opt_state, out = step(trainable, parts.frozen, opt_state, batch, key)
        losses.append(float(out["loss"]))
    return np.array(losses), trainable, parts.frozen, opt_state


def _dtypes(tree) -> set[str]:
    return {str(leaf.dtype) for leaf in jax.tree.leaves(tree) if hasattr(leaf, "dtype")}


@pytest.mark.parametrize(
    "model, full_finetune, lr",
    # Full fine-tuning at LoRA's rate memorises the batch (loss 0.01 in 8 steps), where a
    # relative bound means little; 10x lower, as usual for full fine-tuning.
    # tiny_gpt2 full FT: the tied LM head's table trains (its bf16 gradient once failed on
    # XLA:CPU, `mixed_dot(w_out_in=True)`).
    [
        pytest.param("tiny_bert", False, 3e-3, marks=pytest.mark.slow),
        pytest.param("tiny_bert", True, 3e-4, marks=pytest.mark.slow),
        ("tiny_llama", False, 3e-3),
        ("tiny_gpt2", True, 3e-4),
    ],
    ids=["tiny_bert-lora", "tiny_bert-full_ft", "tiny_llama-lora", "tiny_gpt2-full_ft"],
)
def test_bfloat16_training_tracks_float32(model, full_finetune, lr):
    ref, *_ = _train(model, "float32", full_finetune, lr)
    losses, trainable, frozen, opt_state = _train(model, "bfloat16", full_finetune, lr)
    assert ref[-1] < ref[0]  # the trajectory moves, so agreeing along it means something
    np.testing.assert_allclose(losses, ref, rtol=LOSS_RTOL)
    # Mixed precision: what trains and its optimizer state float32, the frozen base bfloat16.
    assert _dtypes(trainable) == {"float32"}
    assert _dtypes(opt_state) <= {"float32", "int32"}  # int32: Adam's step count
    assert _dtypes(frozen) == (set() if full_finetune else {"bfloat16"})


def test_slow_cpu_notice():
    none: frozenset[str] = frozenset()
    notice = slow_bf16_notice("bfloat16", "cpu", none)
    assert notice and "model.dtype=bfloat16" in notice and "amx_bf16" in notice
    assert "\n" not in notice  # one line
    for flag in BF16_CPU_FLAGS:
        assert slow_bf16_notice("bfloat16", "cpu", frozenset({flag})) is None
    assert slow_bf16_notice("float32", "cpu", none) is None
    assert slow_bf16_notice("bfloat16", "gpu", none) is None


def test_bfloat16_run_end_to_end(tmp_path):
    """`python -m experiments.train model=tiny_bert debug=fast model.dtype=bfloat16`."""
    run = tmp_path / "run"
    call_main(
        "experiments.train",
        *FAST,
        "logger=none",
        "model.dtype=bfloat16",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    assert "dtype: bfloat16" in (run / "config.yaml").read_text()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "complete" and 0.0 <= metrics["final"]["accuracy"] <= 1.0
    losses = [
        json.loads(line).get("train/loss")
        for line in (run / "history.jsonl").read_text().splitlines()
    ]
    logged = [v for v in losses if v is not None]
    assert logged and all(np.isfinite(logged))
    assert (run / "adapter" / "adapter_model.safetensors").is_file()


def test_bfloat16_run_keeps_no_float32_base(tmp_path):
    """A bfloat16 run holds its frozen base once, in bf16: the float32 weights it was loaded in
    are not kept alive beside it (they were, through `RunSetup.pre.params`)."""

    def live_f32_bytes() -> int:
        return sum(a.nbytes for a in jax.live_arrays() if a.dtype == jnp.float32)

    cfg = run_config(compose_config(*FAST, "logger=none", "model.dtype=bfloat16"))
    before = live_f32_bytes()
    s = prepare_run(cfg, plan(cfg), tmp_path)
    grown = live_f32_bytes() - before
    assert s.pre.params is None
    assert _dtypes(s.parts.frozen) == {"bfloat16"}
    # What a bf16 run keeps in float32: the trainable half and AdamW's two moments of it.
    trainable = tree_bytes(s.parts.trainable)
    assert grown <= 3 * trainable + 4096, (grown, trainable, tree_bytes(s.parts.frozen))

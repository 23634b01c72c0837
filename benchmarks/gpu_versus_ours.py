"""Our side of `benchmarks.gpu_versus`: lora_jax's real train step (and the fused launcher's
group step) at one shape and mode, timed in this process; JSON-able rows.

The step is what a run compiles (`lora_jax.train.setup` / `steps.make_train_step`): labels by
`partition.label_params` (the model's head rules, or everything under full fine-tuning), the
frozen half cast to bfloat16 (`precision.cast_frozen`), AdamW over the trainable half
(`partition.make_optimizer`), the task's loss (`objectives.classification`, `lm.objective`).
The weights are random (`module.init`), drawn and cast in one jitted call, so no float32 copy of
a frozen base outlives it.
"""

from __future__ import annotations

import dataclasses
import resource
import statistics
import time

from benchmarks.gpu_versus_shapes import (
    LORA_ALPHA,
    MODES,
    NUM_LABELS,
    Shape,
    fused_ranks,
    make_batch,
)
from benchmarks.timing import step_summary, timed

DTYPE = "bfloat16"


def _device():
    import jax

    device = jax.devices()[0]
    return device, device.platform


def check_backend(tiny: bool) -> None:
    import jax

    if not tiny and jax.default_backend() == "cpu":
        raise SystemExit("JAX sees no GPU (jax.default_backend() == 'cpu'): install jax[cuda].")


def build(shape: Shape, rank: int, full_finetune: bool, key=None) -> tuple:
    """(module, parts, tx, opt_state, objective) of a random-weight model of `shape`."""
    import jax
    import jax.numpy as jnp
    import optax

    from lora_jax.lora import LoRAConfig
    from lora_jax.models.registry import family_module
    from lora_jax.partition import label_params, make_optimizer, split
    from lora_jax.train import lm
    from lora_jax.train.objectives import classification
    from lora_jax.train.precision import cast_frozen

    family = family_module(shape.hf)
    config = dataclasses.replace(family.Config.from_hf(shape.hf), dtype=DTYPE)
    lora = LoRAConfig(rank=rank, alpha=LORA_ALPHA, targets="qv")
    head = {} if family.DECODER else dict(num_labels=NUM_LABELS, pooling="cls", head_dropout=0.0)
    module = family.build(config, lora, **head)
    ids = jnp.zeros((1, 2), jnp.int32)

    def init(k):
        return module.init(k, ids, jnp.ones_like(ids))["params"]

    key = jax.random.key(0) if key is None else key
    labels = label_params(
        jax.eval_shape(init, key), trainable=module.head_rules, full_finetune=full_finetune
    )
    parts = jax.jit(lambda k: cast_frozen(split(init(k), labels), DTYPE))(key)
    tx = make_optimizer(split(labels, labels).trainable, optax.adamw, 1e-4)
    if family.DECODER:
        objective = lm.objective(
            module, None, tokenizer=None, eval_source=None, prompt="", eos_id=0, pad_id=0
        )
    else:
        objective = classification(module, _task())
    return module, parts, tx, tx.init(parts.trainable), objective


def compile_step(step, *args) -> tuple:
    """(compiled, compile seconds, XLA's FLOPs, its memory analysis in bytes); raises when the
    step's buffers do not fit the device (XLA's count against the allocator's limit)."""
    start = time.perf_counter()
    compiled = step.lower(*args).compile()
    seconds = time.perf_counter() - start
    cost = compiled.cost_analysis()
    flops = float((cost[0] if isinstance(cost, list) else cost).get("flops", 0.0))
    m = compiled.memory_analysis()
    memory = {
        k: int(getattr(m, f"{k}_size_in_bytes", 0) or 0)
        for k in ("argument", "output", "temp", "alias", "generated_code")
    }
    need = memory["argument"] + memory["output"] + memory["temp"] - memory["alias"]
    stats = _device()[0].memory_stats() or {}
    limit = stats.get("bytes_limit")
    if limit and need > limit:
        raise DoesNotFit(
            f"does not fit: the step needs {need / 2**30:.1f} GiB (XLA's memory analysis), "
            f"the device allows {limit / 2**30:.1f} GiB"
        )
    return compiled, seconds, flops, memory


class DoesNotFit(Exception):
    """The compiled step's buffers exceed the device's memory."""


def memory_peak() -> dict:
    """This process's peak device memory (JAX's allocator), or its peak RSS on CPU."""
    device, platform = _device()
    stats = device.memory_stats() if platform != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:
        return {"peak_memory_bytes": int(stats["peak_bytes_in_use"]), "memory_source": "jax"}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_memory_bytes": rss, "memory_source": "ru_maxrss (CPU: the whole process)"}


def matmul_peak(tiny: bool) -> float:
    """bf16 FLOP/s of n x n products (8192 on a GPU), four in one program: its median."""
    import jax
    import jax.numpy as jnp

    n, reps = (256, 3) if tiny else (8192, 10)
    keys = jax.random.split(jax.random.key(1), 5)
    a, *bs = [jax.random.normal(k, (n, n), jnp.bfloat16) for k in keys]
    f = jax.jit(lambda a, bs: [a @ b for b in bs])
    seconds = statistics.median(timed(lambda: jax.block_until_ready(f(a, bs)), reps, warmup=2))
    return 4 * 2 * n**3 / seconds


def _common(tiny: bool) -> dict:
    import jax

    device, platform = _device()
    return {
        "device_kind": device.device_kind,
        "platform": platform,
        "jax": jax.__version__,
    }


def run_case(shape: Shape, mode: str, batch_size: int, steps: int, warmup: int, tiny: bool):
    """One case's row; a step that does not fit at `batch_size` is compiled again at half the
    batch (the row's `batch`; the PEFT cases of the same shape and mode then use it too)."""
    check_backend(tiny)
    if mode.startswith("fused"):
        return run_fused(shape, mode, steps, warmup, tiny)
    import jax

    from lora_jax.partition import count_params
    from lora_jax.train.steps import make_train_step, step_compiler_options

    spec, not_fit = MODES[mode], []
    _, parts, tx, opt_state, objective = build(shape, spec["rank"], spec["full_finetune"])
    step = make_train_step(objective.loss_fn, tx, step_compiler_options())
    key = jax.random.key(0)
    while True:
        batch = jax.device_put(make_batch(shape, batch_size))
        try:
            compiled, compile_s, xla_flops, memory = compile_step(
                step, parts.trainable, parts.frozen, opt_state, batch, key
            )
            break
        except DoesNotFit as err:
            not_fit.append({"batch": batch_size, "why": str(err)})
            if batch_size == 1:
                raise SystemExit(str(err)) from None
            batch_size //= 2
    state, losses = {"t": parts.trainable, "o": opt_state}, []

    def one():
        state["t"], state["o"], out = compiled(state["t"], parts.frozen, state["o"], batch, key)
        losses.append(float(out["loss"]))  # waits for the step

    cpu: list[float] = []
    times = timed(one, steps, warmup=warmup, cpu=cpu)
    return {
        **_common(tiny),
        "batch": batch_size,
        "not_fit": not_fit,
        "trainable_params": count_params(state["t"]),
        "frozen_params": count_params(parts.frozen),
        **step_summary(times, cpu, steps, batch_size * shape.length),
        "compile_s": compile_s,
        "xla_flops_per_step": xla_flops,
        "xla_memory_bytes": memory,
        **memory_peak(),
        "loss_first_last": [losses[0], losses[-1]],
        "matmul_peak_flops": matmul_peak(tiny),
    }


def run_fused(shape: Shape, mode: str, steps: int, warmup: int, tiny: bool) -> dict:
    """`fused_group`: the fused launcher's step over the members r = `fused_ranks` (one program,
    `members.default_chunk()`); `fused_sequential`: each member's own step, one after another."""

    import jax
    import jax.numpy as jnp
    import numpy as np

    from lora_jax.lora import LoRAConfig
    from lora_jax.train.members import (
        FACTORS,
        adapter_factors,
        default_chunk,
        fused_steps,
        stack_padded,
    )
    from lora_jax.train.objectives import classification
    from lora_jax.train.steps import make_train_step, step_compiler_options

    if shape.family != "roberta":
        raise SystemExit("the fused cases are defined for the encoder (classification) only")
    tokens, ranks = shape.batch * shape.length, fused_ranks(tiny)
    host_batch = make_batch(shape, shape.batch)
    members = [build(shape, r, False, jax.random.key(i)) for i, r in enumerate(ranks)]
    if mode == "fused_sequential":
        rows = []
        for rank, (_, parts, tx, opt_state, objective) in zip(ranks, members, strict=True):
            step = make_train_step(objective.loss_fn, tx, step_compiler_options())
            batch, key = jax.device_put(host_batch), jax.random.key(0)
            compiled, compile_s, _, _ = compile_step(
                step, parts.trainable, parts.frozen, opt_state, batch, key
            )
            state = {"t": parts.trainable, "o": opt_state}

            def one(state=state, compiled=compiled, parts=parts, batch=batch, key=key):
                state["t"], state["o"], out = compiled(
                    state["t"], parts.frozen, state["o"], batch, key
                )
                float(out["loss"])

            cpu: list[float] = []
            times = timed(one, steps, warmup=warmup, cpu=cpu)
            rows.append(
                {"rank": rank, "compile_s": compile_s, **step_summary(times, cpu, steps, tokens)}
            )
        total = sum(r["step_s_median"] for r in rows)
        return {
            **_common(tiny),
            "members": rows,
            "step_s_total": total,
            "step_s_median": total,  # one step of every member: the sum of their medians
            "tokens_per_s": len(rows) * tokens / total,
            "compile_s": sum(r["compile_s"] for r in rows),
            **memory_peak(),
            "matmul_peak_flops": matmul_peak(tiny),
        }
    module_max = members[-1][0]
    trainables = [m[1].trainable for m in members]
    frozen = members[0][1].frozen  # one shared base, as FusedGroup keeps when members agree
    trainable = stack_padded(trainables)
    opt_state = stack_padded([m[3] for m in members])
    padded = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), trainable)
    factors = stack_padded(
        [
            adapter_factors(t, padded, LoRAConfig(rank=r, alpha=LORA_ALPHA, targets="qv"))
            for t, r in zip(trainables, ranks, strict=True)
        ]
    )
    objective = classification(module_max, _task())  # the model at the largest rank
    chunk = default_chunk()
    train_step, _ = fused_steps(objective, members[-1][2], None, chunk)
    del members, trainables
    n = len(ranks)
    batch = {k: np.stack([v] * n) for k, v in host_batch.items()}
    batch = jax.device_put({**batch, FACTORS: factors})
    keys = jnp.stack([jax.random.key(i) for i in range(n)])
    compiled, compile_s, xla_flops, memory = compile_step(
        train_step, trainable, frozen, opt_state, batch, keys, 0
    )
    state = {"t": trainable, "o": opt_state}

    def one():
        state["t"], state["o"], out = compiled(state["t"], frozen, state["o"], batch, keys, 0)
        float(out["loss"][0])

    cpu: list[float] = []
    times = timed(one, steps, warmup=warmup, cpu=cpu)
    return {
        **_common(tiny),
        "ranks": list(ranks),
        "chunk": chunk,
        **step_summary(times, cpu, steps, n * tokens),
        "compile_s": compile_s,
        "xla_flops_per_step": xla_flops,
        "xla_memory_bytes": memory,
        **memory_peak(),
        "matmul_peak_flops": matmul_peak(tiny),
    }


def _task():
    """A two-class sentence task's spec (the loss reads only the batch's labels)."""
    from lora_jax import data as data_lib

    return data_lib.get_task("mr")

"""A task whose intrinsic rank is known: recover a planted rank-k update.

The teacher is the pretrained encoder with dW* = U diag(s) V^T (rank k) added to chosen
kernels; the student is the same frozen base with LoRA. The student learns the teacher's
last hidden states on real sentences (masked MSE). A correct pipeline recovers k: the
validation error stops improving once r >= k, the learned dW has effective rank about k,
and its top-k input directions span U (phi(k, k) near 1).

The planted factors are saved as `planted.safetensors` in the run folder, so the sweep
analysis can score the recovery (`RunRecord.planted_factors`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from safetensors.numpy import save_file

from lora_jax.lora import LoRAConfig, layer_index, parse_targets
from lora_jax.runs.layout import RunFolder
from lora_jax.train.steps import Objective


def _orthonormal(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((n, k)))
    return q.astype(np.float32)


def plant(
    frozen: dict, k: int, targets: str, layers: list[int] | None, strength: float, seed: int
) -> tuple[dict, dict[str, np.ndarray]]:
    """Add a random rank-k dW* to the kernels of `targets` (in `layers`, None = all).

    dW*'s singular values fall linearly from `strength` to `strength / 2` times the
    kernel's largest one, so its directions are ordered and it changes the model clearly.

    Returns:
        The teacher's params (the other leaves are shared with `frozen`, not copied) and the
        factors {"layer_<i>/<target>/{u,s,v}": array} with u (in, k), v (out, k).
    """
    names = parse_targets(targets)
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(frozen)
    factors: dict[str, np.ndarray] = {}
    for path, kernel in sorted(flat.items()):
        layer = layer_index(path)
        if path[-1] != "kernel" or path[-2] not in names or layer is None:
            continue
        if layers is not None and layer not in layers:
            continue
        w = np.asarray(kernel)
        if k > min(w.shape):
            raise ValueError(
                f"planted.k={k} is larger than min(in, out)={min(w.shape)} of {'/'.join(path)}."
            )
        u, v = _orthonormal(rng, w.shape[0], k), _orthonormal(rng, w.shape[1], k)
        s = (strength * np.linalg.norm(w, 2) * np.linspace(1.0, 0.5, k)).astype(np.float32)
        flat[path] = jnp.asarray(w + (u * s) @ v.T)
        factors.update(
            {
                f"layer_{layer}/{path[-2]}/u": u,
                f"layer_{layer}/{path[-2]}/s": s,
                f"layer_{layer}/{path[-2]}/v": v,
            }
        )
    if not factors:
        raise ValueError(f"planted.targets={targets!r} (layers {layers}) matched no kernel.")
    return traverse_util.unflatten_dict(flat), factors


def save_factors(run_dir: str | Path, factors: dict[str, np.ndarray]) -> None:
    save_file(factors, RunFolder(run_dir).planted)


def objective(
    module_config,
    lora: LoRAConfig,
    teacher: dict,
    encoder_cls,
    base_params: dict,
    eval_batches: Iterable[dict],
) -> Objective:
    """Masked MSE between the student's and the teacher's last hidden states.

    Metrics: `mse` and `gap_closed` = 1 - mse / mse(base), the share of the teacher-student
    gap that training closed; mse(base) is measured here on `eval_batches` with `base_params`.
    """
    student = encoder_cls(module_config, lora)
    teacher_module = encoder_cls(module_config, LoRAConfig(rank=0))

    def hidden(module, params, batch):
        return module.apply(
            {"params": params["encoder"]},
            batch["input_ids"],
            batch["attention_mask"],
            batch["token_type_ids"],
            deterministic=True,
        )

    teacher_hidden = jax.jit(lambda b: hidden(teacher_module, teacher, b))

    def per_example_mse(params, batch):
        err = jnp.square(hidden(student, params, batch) - batch["target"]).mean(-1)
        mask = batch["attention_mask"].astype(err.dtype)
        return (err * mask).sum(-1) / mask.sum(-1)

    def loss_fn(params, batch, rng):
        return per_example_mse(params, batch).mean(), {}

    def prepare(batch):
        return {**batch, "target": teacher_hidden(batch)}

    score = jax.jit(per_example_mse)
    base_mse = float(
        np.mean(np.concatenate([np.asarray(score(base_params, prepare(b))) for b in eval_batches]))
    )

    def metrics(preds, labels):
        mse = float(np.mean(preds))
        return {"mse": mse, "gap_closed": 1.0 - mse / base_mse}

    return Objective(loss_fn, per_example_mse, metrics, prepare)

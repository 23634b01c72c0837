"""Training: `setup` (plan, model, data, objective, optimizer), one step loop with periodic hooks
(`loop`), `runner.run` for one run and `fused` for stacked members on the same loop.

    >>> from lora_jax.train import run, plan
"""

from __future__ import annotations

from lora_jax.lazy import lazy_getattr

# name -> module: imported on first use, so `lora_jax.train.tracking` or `plan` do not load JAX
# models and loaders they do not need.
_EXPORTS = {
    "run": "runner",
    "completed": "runner",
    "plan": "setup",
    "Plan": "setup",
    "prepare_run": "setup",
    "RunSetup": "setup",
    "epochs_to_steps": "setup",
    "model_rng": "setup",
    "step_rng": "setup",
    "lr_schedule": "optim",
    "NonFiniteLossError": "loop",
    "train_fused": "fused",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)

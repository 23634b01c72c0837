"""Data: TFDS builders (array_record, no TensorFlow), tasks, metrics, Grain pipelines.

Typical use from training code::

    from lora_jax import data
    task = data.get_task("mr")
    train = data.load_split(task, "train")
    loader = data.make_loader(train, tokenizer, task, batch_size=32, max_len=64, seed=0)
"""

from __future__ import annotations

from lora_jax.data import tfds_compat
from lora_jax.lazy import lazy_getattr

# Before TFDS is first imported (any builder below or in a caller).
tfds_compat.install()

# name -> module: imported on first use, so a process that needs tasks alone (a train step, the
# benchmark) does not load Grain, SciPy and scikit-learn (~110 MB of RSS).
_EXPORTS = {
    # Tasks and loading.
    "LOCAL_TASK": "task_spec",
    "TASKS": "tasks",
    "TaskSpec": "task_spec",
    "get_task": "tasks",
    "load_split": "tasks",
    # Metrics.
    "compute_metrics": "metrics",
    # Grain pipelines.
    "bucket_length": "pipeline",
    "make_loader": "pipeline",
    "pad_id_of": "pipeline",
    "steps_per_epoch": "pipeline",
    "tokenizer_map": "pipeline",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)

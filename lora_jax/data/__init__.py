"""Data: TFDS builders (array_record, no TensorFlow), tasks, metrics, Grain pipelines.

Typical use from training code::

    from lora_jax import data
    task = data.get_task("mr")
    train = data.load_split(task, "train")
    loader = data.make_loader(train, tokenizer, task, batch_size=32, max_len=64, seed=0)
"""

from lora_jax.data import tfds_compat

# Before TFDS is first imported (any builder below or in a caller).
tfds_compat.install()

# Tasks and loading.
# Metrics.
from lora_jax.data.metrics import compute_metrics  # noqa: E402

# Grain pipelines.
from lora_jax.data.pipeline import (  # noqa: E402
    bucket_length,
    make_loader,
    pad_id_of,
    steps_per_epoch,
)
from lora_jax.data.tasks import TASKS, TaskSpec, get_task, load_split  # noqa: E402

__all__ = [
    "TASKS",
    "TaskSpec",
    "bucket_length",
    "compute_metrics",
    "get_task",
    "load_split",
    "make_loader",
    "pad_id_of",
    "steps_per_epoch",
]

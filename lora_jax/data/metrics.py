"""Evaluation metrics (scikit-learn / scipy), named as in ``TaskSpec.metrics``.

``compute_metrics(task, predictions, labels)`` takes logits (B, num_labels) for
classification or values (B,) / (B, 1) for regression and returns floats.

Example:
    >>> import numpy as np
    >>> compute_metrics("mr", np.array([[0.1, 2.0], [3.0, 0.0]]), np.array([1, 1]))
    {'accuracy': 0.5}
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.stats
import sklearn.metrics

from lora_jax.data.task_spec import TaskSpec
from lora_jax.data.tasks import get_task


def accuracy(preds: np.ndarray, labels: np.ndarray) -> float:
    return float(sklearn.metrics.accuracy_score(labels, preds))


def f1(preds: np.ndarray, labels: np.ndarray) -> float:
    """Binary F1 of the positive class (GLUE's MRPC/QQP convention)."""
    return float(sklearn.metrics.f1_score(labels, preds, average="binary", zero_division=0.0))


def matthews(preds: np.ndarray, labels: np.ndarray) -> float:
    return float(sklearn.metrics.matthews_corrcoef(labels, preds))


def pearson(preds: np.ndarray, labels: np.ndarray) -> float:
    if np.std(preds) == 0 or np.std(labels) == 0:
        return float("nan")  # undefined for a constant input
    return float(scipy.stats.pearsonr(preds, labels).statistic)


def spearman(preds: np.ndarray, labels: np.ndarray) -> float:
    if np.std(preds) == 0 or np.std(labels) == 0:
        return float("nan")
    return float(scipy.stats.spearmanr(preds, labels).statistic)


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "matthews": matthews,
    "pearson": pearson,
    "spearman": spearman,
}


def compute_metrics(
    task: str | TaskSpec, predictions: np.ndarray, labels: np.ndarray
) -> dict[str, float]:
    """Computes the task's metrics.

    Args:
        task: task name or spec.
        predictions: logits (B, num_labels) for classification; values (B,) or (B, 1)
            for regression.
        labels: int class ids (B,) or float targets (B,).

    Returns:
        ``{metric_name: value}`` in the order of ``task.metrics``.
    """
    task = get_task(task)
    preds = np.asarray(predictions)
    labels = np.asarray(labels).reshape(-1)
    if task.is_regression:
        if preds.ndim == 2 and preds.shape[1] == 1:
            preds = preds[:, 0]
        if preds.ndim != 1:
            raise ValueError(
                f"Regression task {task.name!r} needs predictions (B,) or (B, 1), got {preds.shape}"
            )
        preds = preds.astype(np.float64)
        labels = labels.astype(np.float64)
    else:
        if preds.ndim != 2 or preds.shape[1] != task.num_labels:
            raise ValueError(
                f"Task {task.name!r} needs logits (B, {task.num_labels}), got {preds.shape}"
            )
        preds = preds.argmax(axis=-1)
        labels = labels.astype(np.int64)
    if preds.shape[0] != labels.shape[0]:
        raise ValueError(f"{preds.shape[0]} predictions but {labels.shape[0]} labels")
    return {name: METRICS[name](preds, labels) for name in task.metrics}

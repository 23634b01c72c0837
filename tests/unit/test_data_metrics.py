"""Metrics against scikit-learn / scipy, a hand example, and the task registry."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics

from lora_jax.data import TASKS, TaskSpec, compute_metrics, get_task


def test_registry_names():
    assert set(TASKS) == {
        "mr", "mr_rating", "glue_mnli", "glue_sst2", "glue_mrpc", "glue_cola",
        "glue_qnli", "glue_qqp", "glue_rte", "glue_stsb", "planted", "e2e", "e2e_gem",
    }  # fmt: skip
    assert get_task("mr").num_labels == 2 and get_task("mr_rating").is_regression
    assert get_task("glue_mnli").splits["validation_mismatched"] == "validation_mismatched"
    assert get_task("glue_stsb").main_metric == "pearson"
    assert get_task("glue_cola").main_metric == "matthews"


def test_unknown_task_lists_valid_names():
    with pytest.raises(ValueError, match=r"Unknown task 'sst3'.*glue_sst2.*mr_rating"):
        get_task("sst3")


def test_taskspec_is_frozen_and_validated():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_task("mr").name = "x"  # type: ignore[misc]
    with pytest.raises(ValueError, match="text_keys"):
        dataclasses.replace(get_task("mr"), text_keys=("a", "b", "c"))
    with pytest.raises(ValueError, match="main_metric"):
        dataclasses.replace(get_task("mr"), main_metric="f1")


def test_hand_example_classification():
    logits = np.array([[2.0, 1.0], [0.0, 1.0], [0.0, 3.0], [1.0, 0.0]])  # preds 0, 1, 1, 0
    labels = np.array([0, 1, 0, 1])
    out = compute_metrics("glue_mrpc", logits, labels)
    # tp=1, fp=1, fn=1 -> precision 1/2, recall 1/2, F1 1/2.
    assert out == {"accuracy": 0.5, "f1": 0.5}
    # MCC = (tp*tn - fp*fn) / sqrt(...) = (1 - 1) / ... = 0.
    assert compute_metrics("glue_cola", logits, labels)["matthews"] == 0.0


def test_hand_example_regression():
    preds = np.array([1.0, 2.0, 3.0, 4.0])
    out = compute_metrics("glue_stsb", preds, np.array([2.0, 4.0, 6.0, 8.0]))
    assert out["pearson"] == pytest.approx(1.0) and out["spearman"] == pytest.approx(1.0)
    out = compute_metrics("mr_rating", preds[:, None], np.array([4.0, 3.0, 2.0, 1.0]))
    assert out["pearson"] == pytest.approx(-1.0) and out["spearman"] == pytest.approx(-1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_against_sklearn_scipy(seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(200, 2))
    labels = rng.integers(0, 2, size=200)
    preds = logits.argmax(-1)
    out = compute_metrics("glue_qqp", logits, labels)
    assert out["accuracy"] == pytest.approx(sklearn.metrics.accuracy_score(labels, preds))
    assert out["f1"] == pytest.approx(sklearn.metrics.f1_score(labels, preds))
    out = compute_metrics("glue_cola", logits, labels)
    assert out["matthews"] == pytest.approx(sklearn.metrics.matthews_corrcoef(labels, preds))
    logits3 = rng.normal(size=(200, 3))
    labels3 = rng.integers(0, 3, size=200)
    out = compute_metrics("glue_mnli", logits3, labels3)
    assert out["accuracy"] == pytest.approx(np.mean(logits3.argmax(-1) == labels3))
    x, y = rng.normal(size=200), rng.normal(size=200)
    out = compute_metrics("glue_stsb", x, y)
    assert out["pearson"] == pytest.approx(scipy.stats.pearsonr(x, y)[0])
    assert out["spearman"] == pytest.approx(scipy.stats.spearmanr(x, y)[0])


def test_shape_errors():
    with pytest.raises(ValueError, match=r"needs logits \(B, 3\)"):
        compute_metrics("glue_mnli", np.zeros((4, 2)), np.zeros(4))
    with pytest.raises(ValueError, match="Regression"):
        compute_metrics("glue_stsb", np.zeros((4, 2)), np.zeros(4))
    with pytest.raises(ValueError, match="3 predictions but 4 labels"):
        compute_metrics("mr", np.zeros((3, 2)), np.zeros(4))


def test_custom_taskspec_passes_through():
    spec = TaskSpec(
        name="x", tfds_name="x", tfds_config="x", text_keys=("t",), label_key="y",
        num_labels=2, metrics=("accuracy",), main_metric="accuracy",
    )  # fmt: skip
    assert get_task(spec) is spec
    assert compute_metrics(spec, np.eye(2), np.array([0, 1])) == {"accuracy": 1.0}


@pytest.mark.parametrize("task", ["glue_mrpc", "glue_cola", "glue_stsb", "glue_mnli"])
def test_every_metric_ignores_the_order_of_the_pairs(task):
    """Evaluation reads its split shortest first (`train.loaders.shortest_first`): a metric must
    be a function of the (prediction, label) pairs alone."""
    rng = np.random.default_rng(0)
    n, spec = 50, get_task(task)
    preds = rng.normal(size=n) if spec.is_regression else rng.normal(size=(n, spec.num_labels))
    labels = rng.normal(size=n) if spec.is_regression else rng.integers(0, spec.num_labels, n)
    order = rng.permutation(n)
    shuffled = compute_metrics(task, preds[order], labels[order])
    assert shuffled == pytest.approx(compute_metrics(task, preds, labels), abs=1e-12)


def test_evaluation_reads_the_split_fewest_tokens_first():
    from lora_jax.train.loaders import shortest_first

    rows = [{"id": i, "n": n} for i, n in enumerate([5, 1, 3, 1, 9, 3])]
    out = shortest_first(rows, lambda r: r["n"])
    # ties (ids 1 and 3; 2 and 5) keep their order
    assert [r["id"] for r in out] == [1, 3, 2, 5, 0, 4]
    assert sorted(map(id, out)) == sorted(map(id, rows))  # the same records, reordered


def test_the_eval_split_is_sorted_by_its_tokens(tmp_path):
    """`make_data` sorts by the tokenizer's count, not by characters: MR's eval batches then
    pad to fewer tokens."""
    from conftest import compose_config

    from lora_jax.config import run_config
    from lora_jax.train.loaders import make_data
    from lora_jax.train.setup import initial_model, plan

    cfg = run_config(compose_config("model=tiny_bert", f"workdir={tmp_path}"))
    p = plan(cfg)
    data = make_data(cfg, p.task, initial_model(cfg, p).tokenizer)
    lengths = [int(n) for b in data.eval_batches() for n in b["attention_mask"].sum(1)]
    assert len(lengths) == data.eval_size and lengths == sorted(lengths)

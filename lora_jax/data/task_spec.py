"""``TaskSpec``: what a training run needs to know about a data set (which TFDS dataset,
which fields, which metrics). The registry of built-in tasks and the local files' tasks
(``tasks``, ``local``) both make them.
"""

from __future__ import annotations

import dataclasses

# `data.task` of a researcher's own files (`conf/data/local.yaml`, `lora_jax.data.local`): its
# spec is made from the data config, so it is not in `tasks.TASKS`.
LOCAL_TASK = "local"


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """What a training run needs to know about a data set.

    Attributes:
        name: registry name, e.g. ``"mr"`` or ``"glue_mnli"``.
        tfds_name: TFDS builder name, e.g. ``"mr_polarity"`` or ``"glue"``.
        tfds_config: TFDS config name, e.g. ``"binary"`` or ``"mnli"``.
        text_keys: one field (single sentence) or two (sentence pair).
        label_key: the target field.
        num_labels: number of classes; 1 means regression (float targets).
        metrics: metric names computed by ``compute_metrics``.
        main_metric: the metric used for model selection.
        train_split / validation_split / test_split: TFDS split names.
        extra_eval_splits: further labelled eval splits (MNLI mismatched).
        test_has_labels: False for GLUE, whose test labels are hidden (-1).
        needs_network: True when preparing the data needs internet access.
        kind: the objective that trains on it (``lora_jax.train.objectives.OBJECTIVES``):
            "classification" (labels; regression when num_labels == 1), "generation" (a causal
            LM writes ``label_key`` after ``prompt``) or "planted" (a planted-rank teacher).
        prompt: generation only: the prompt template, formatted with the example's fields.
        select_metric: the per-eval metric that picks the best step (higher is better; a
            leading "-" means lower is better); None = ``main_metric``. Generation tasks
            score their main metric (BLEU) once, at the end of a run.
        label_names: the class names in id order, where the data has them (``data=local``).
        chat: generation only: an example is a conversation (``label_key`` holds its turns as
            JSON) rendered with the model's chat template, the loss on the assistant turns.
    """

    name: str
    tfds_name: str
    tfds_config: str
    text_keys: tuple[str, ...]
    label_key: str
    num_labels: int
    metrics: tuple[str, ...]
    main_metric: str
    train_split: str = "train"
    validation_split: str = "validation"
    test_split: str = "test"
    extra_eval_splits: tuple[str, ...] = ()
    test_has_labels: bool = True
    needs_network: bool = False
    kind: str = "classification"
    prompt: str = ""
    select_metric: str | None = None
    label_names: tuple[str, ...] = ()
    chat: bool = False

    def __post_init__(self):
        if len(self.text_keys) not in (1, 2):
            raise ValueError(f"text_keys must hold 1 or 2 fields, got {self.text_keys}")
        if self.kind not in ("classification", "generation", "planted"):
            raise ValueError(
                f"kind must be 'classification', 'generation' or 'planted', got {self.kind!r}"
            )
        if self.num_labels < 1 and self.kind == "classification":
            raise ValueError(f"num_labels must be >= 1 (1 = regression), got {self.num_labels}")
        if self.main_metric not in self.metrics:
            raise ValueError(f"main_metric {self.main_metric!r} not in metrics {self.metrics}")

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    @property
    def is_generation(self) -> bool:
        return self.kind == "generation"

    @property
    def tfds_full_name(self) -> str:
        return f"{self.tfds_name}/{self.tfds_config}"

    @property
    def splits(self) -> dict[str, str]:
        """Role -> TFDS split name (``train``, ``validation``, ``test`` + extras); a role
        whose split name is empty (``data=local`` without a test file) is left out."""
        out = {
            role: name
            for role, name in (
                ("train", self.train_split),
                ("validation", self.validation_split),
                ("test", self.test_split),
            )
            if name
        }
        out.update({s: s for s in self.extra_eval_splits})
        return out

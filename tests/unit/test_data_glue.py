"""GLUE code path, offline: the task specs match TFDS's glue builders, and a locally
prepared fake builder with glue/mrpc's features goes through load_split -> make_loader
-> compute_metrics exactly as glue/* would."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import ClassVar

import numpy as np
import pytest
import tensorflow_datasets as tfds
import tokenizers
from etils import epath
from tokenizers import models, pre_tokenizers

from lora_jax.data import TASKS, compute_metrics, get_task, load_split, make_loader
from lora_jax.data import glue as glue_lib

_WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran"]


class FakeGlue(tfds.core.GeneratorBasedBuilder):
    """Same features and split names as glue/mrpc, 30/10/10 generated examples."""

    VERSION = tfds.core.Version("2.0.0")
    BUILDER_CONFIGS: ClassVar[list[tfds.core.BuilderConfig]] = [
        tfds.core.BuilderConfig(name="mrpc")
    ]
    pkg_dir_path = epath.Path(__file__).parent

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "sentence1": tfds.features.Text(),
                    "sentence2": tfds.features.Text(),
                    "label": tfds.features.ClassLabel(names=["not_equivalent", "equivalent"]),
                    "idx": np.int32,
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {
            "train": self._generate_examples(30, 0),
            "validation": self._generate_examples(10, 100),
            "test": self._generate_examples(10, 200, labelled=False),
        }

    def _generate_examples(self, n, offset, labelled=True):
        for i in range(n):
            words = [_WORDS[(i + j) % len(_WORDS)] for j in range(1 + i % 5)]
            yield (
                i,
                {
                    "sentence1": " ".join(words),
                    "sentence2": " ".join(reversed(words)),
                    "label": (i + offset) % 2 if labelled else -1,
                    "idx": i,
                },
            )


@pytest.fixture(scope="module")
def fake_dir(tmp_path_factory) -> pathlib.Path:
    data_dir = tmp_path_factory.mktemp("tfds")
    builder = glue_lib.prepare_tfds("fake_glue/mrpc", data_dir)
    assert builder.info.file_format.value == "array_record"
    return data_dir


def _tokenizer():
    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(_WORDS)}}
    tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


@pytest.mark.parametrize("name", sorted(n for n in TASKS if n.startswith("glue_")))
def test_glue_specs_match_tfds_builders(name, tmp_path):
    task = get_task(name)
    builder = glue_lib._builder(task.tfds_full_name, tmp_path)
    features = builder.info.features
    for key in (*task.text_keys, task.label_key):
        assert key in features, f"{name}: {key} not in {list(features)}"
    if task.is_regression:
        assert features["label"].np_dtype == np.float32
    else:
        assert features["label"].num_classes == task.num_labels
    assert not builder.is_prepared()


def test_fake_glue_through_the_glue_path(fake_dir):
    task = dataclasses.replace(get_task("glue_mrpc"), name="fake_mrpc", tfds_name="fake_glue")
    train = load_split(task, "train", data_dir=fake_dir)
    val = load_split(task, "validation", data_dir=fake_dir)
    assert len(train) == 30 and len(val) == 10
    row = val[3]
    assert isinstance(row["sentence1"], bytes) and int(row["label"]) in (0, 1)
    loader = make_loader(val, _tokenizer(), task, batch_size=5, max_len=12, seed=0,
                         shuffle=False, drop_remainder=False)  # fmt: skip
    batches = list(loader)
    assert len(batches) == 2
    b = batches[0]
    assert b["input_ids"].shape[0] == 5 and b["input_ids"].shape[1] <= 12
    assert b["token_type_ids"].max() == 1  # second sentence marked
    labels = np.concatenate([x["labels"] for x in batches])
    logits = np.eye(2)[labels]  # a perfect model
    assert compute_metrics(task, logits, labels) == {"accuracy": 1.0, "f1": 1.0}


def test_unprepared_glue_error_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"python -m lora_jax\.data\.glue sst2"):
        load_split("glue_sst2", "train", data_dir=tmp_path)


def test_prepare_glue_rejects_unknown_config(tmp_path):
    with pytest.raises(ValueError, match="Unknown GLUE config 'sst3'"):
        glue_lib.prepare_glue("sst3", tmp_path)


def test_mnli_split_roles():
    task = get_task("glue_mnli")
    assert task.splits == {
        "train": "train",
        "validation": "validation_matched",
        "test": "test_matched",
        "validation_mismatched": "validation_mismatched",
    }

"""data=local: a researcher's files give the same examples, batches and metrics as the built-in
tasks they were written from (tests/fixtures/local_mr, `scripts/make_local_data_fixtures.py`;
E2E from a synthetic task file), and the rules of docs/data.md hold: the label order, the split
by hash, the cache by content, the chat spans.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES

from lora_jax.config import ColumnsConfig, DataConfig
from lora_jax.data import assets, compute_metrics, get_task, load_split, make_loader
from lora_jax.data.local import (
    VALIDATION_PERCENT,
    canonical,
    in_validation,
    label_names,
    local_task,
)
from lora_jax.data.prompts import ChatTemplate
from lora_jax.models import tiny_tokenizer

MR_FILES = FIXTURES / "local_mr"
SIZES = {"train": 96, "validation": 32, "test": 32}  # scripts/make_local_data_fixtures.py
# SmolLM2-135M-Instruct's chat template (its GGUF's tokenizer.chat_template).
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _data(path, **kw) -> DataConfig:
    columns = kw.pop("columns", {})
    return DataConfig(task="local", path=str(path), columns=ColumnsConfig(**columns), **kw)


def _batches(source, task, n=None, **kw):
    loader = make_loader(
        source,
        tiny_tokenizer(),
        task,
        batch_size=16,
        max_len=32,
        seed=3,
        shard_index=0,
        shard_count=1,
        **kw,
    )
    return [b for _, b in zip(range(n or 10**9), loader, strict=False)]


def _same_batches(a, b):
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_local_files_are_mr(fmt, tmp_path):
    """The same examples in the same order, the same batches (train shuffled, eval in order)
    and the same metrics as `data=mr` restricted to the rows written."""
    task = local_task(_data(MR_FILES / fmt, columns={"text": "sentence"}), data_dir=tmp_path)
    mr = get_task("mr")
    assert task.label_names == ("negative", "positive") and task.num_labels == 2
    assert task.metrics == ("accuracy", "f1")  # GLUE's choice for two classes
    for split, n in SIZES.items():
        mine, theirs = load_split(task, split), load_split(mr, f"{split}[:{n}]")
        assert len(mine) == len(theirs) == n
        for i in range(n):
            assert mine[i]["text"] == theirs[i]["sentence"]
            assert mine[i]["label"] == theirs[i]["label"]
        epochs = None if split == "train" else 1
        kw = dict(shuffle=split == "train", num_epochs=epochs, drop_remainder=split == "train")
        _same_batches(_batches(mine, task, 12, **kw), _batches(theirs, mr, 12, **kw))
    logits = np.random.default_rng(0).normal(size=(32, 2))
    labels = [load_split(mr, "validation")[i]["label"] for i in range(32)]
    ours = compute_metrics(task, logits, np.array(labels))
    assert ours["accuracy"] == compute_metrics(mr, logits, np.array(labels))["accuracy"]


def test_local_scores_are_mr_rating(tmp_path):
    data = _data(
        MR_FILES / "parquet", kind="regression", columns={"text": "sentence", "label": "rating"}
    )
    task = local_task(data, data_dir=tmp_path)
    rating = get_task("mr_rating")
    assert task.num_labels == 1 and task.metrics == rating.metrics
    mine, theirs = load_split(task, "validation"), load_split(rating, "validation[:32]")
    assert [mine[i]["label"] for i in range(32)] == [theirs[i]["rating"] for i in range(32)]
    fake = {"label": "rating"}
    _same_batches(
        _batches(mine, task, shuffle=False, num_epochs=1, drop_remainder=False),
        _batches(
            [{**theirs[i], **{k: theirs[i][v] for k, v in fake.items()}} for i in range(32)],
            dataclasses.replace(rating, label_key="label", text_keys=("sentence",)),
            shuffle=False,
            num_epochs=1,
            drop_remainder=False,
        ),
    )


def test_prompt_completion_is_e2e(tmp_path):
    """E2E's splits written as prompt/completion JSONL: the same causal-LM batches."""
    import tensorflow_datasets as tfds

    examples = [  # BIG-bench's e2e_nlg shape: 1,000 references, here over 50 made-up MRs
        {
            "input": f"name: movie {i % 50}, food: {['good', 'bad'][i % 2]}",
            "target": f"the movie {i % 50} is {['good', 'bad'][i % 2]} ({i // 50}) .",
            "comment": f"e2e_nlg-test-{i}",
        }
        for i in range(1000)
    ]
    (tmp_path / "cache" / "e2e_nlg").mkdir(parents=True)
    (tmp_path / "cache" / "e2e_nlg" / "task.json").write_text(json.dumps({"examples": examples}))
    builder = assets.e2e_builder(tmp_path / "tfds")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "cache")),
        file_format="array_record",
    )
    e2e, files = get_task("e2e"), tmp_path / "mine"
    files.mkdir()
    for split in ("train", "validation", "test"):
        source = builder.as_data_source(split=split)
        with open(files / f"{split}.jsonl", "w") as f:
            for i in range(len(source)):
                e = source[i]
                prompt = e2e.prompt.format(
                    meaning_representation=e["meaning_representation"].decode()
                )
                f.write(json.dumps({"prompt": prompt, "completion": e["target"].decode()}) + "\n")
    task = local_task(_data(files, kind="completion"), data_dir=tmp_path / "tfds")
    assert task.is_generation and task.main_metric == e2e.main_metric
    for split in ("train", "validation"):
        kw = dict(eos_id=3, pad_id=0, shuffle=split == "train", num_epochs=1)
        _same_batches(
            _batches(load_split(task, split), task, **kw),
            _batches(builder.as_data_source(split=split), e2e, **kw),
        )


@pytest.fixture
def reviews(tmp_path) -> Path:
    rows = [{"text": f"review number {i}", "label": ["bad", "good"][i % 2]} for i in range(200)]
    path = tmp_path / "user" / "reviews.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_validation_split_by_hash_never_moves_old_rows(reviews, tmp_path):
    task = local_task(_data(reviews), data_dir=tmp_path / "c")
    before = {s: _texts(load_split(task, s)) for s in ("train", "validation")}
    assert len(before["validation"]) + len(before["train"]) == 200
    assert 5 <= len(before["validation"]) <= 40  # ~VALIDATION_PERCENT of 200
    assert task.splits == {"train": "train", "validation": "validation"}  # no test file
    with open(reviews, "a") as f:
        f.writelines(
            json.dumps({"text": f"new review {i}", "label": "good"}) + "\n" for i in range(99)
        )
    task = local_task(_data(reviews), data_dir=tmp_path / "c")
    after = {s: _texts(load_split(task, s)) for s in ("train", "validation")}
    for split in before:
        assert set(before[split]) <= set(after[split])
    # The documented rule, computed by hand.
    example = {"text": "review number 3", "label": "good"}
    digest = hashlib.sha256(canonical(example).encode()).hexdigest()
    assert in_validation(example) == (int(digest, 16) % 100 < VALIDATION_PERCENT)
    assert canonical(example) == '{"label":"good","text":"review number 3"}'


def _texts(source) -> list[str]:
    return [source[i]["text"].decode() for i in range(len(source))]


def test_label_order():
    assert label_names(["positive", "negative", "neutral"]) == ("negative", "neutral", "positive")
    assert label_names(["10", "2", "0", "1"]) == ("0", "1", "2", "10")  # numbers by value
    assert label_names(["1", "b"]) == ("1", "b")


def test_cache_by_content_and_nothing_beside_the_files(reviews, tmp_path, capsys):
    cache = tmp_path / "c"
    local_task(_data(reviews), data_dir=cache)
    prepared = sorted((cache / "local_files").glob("*/1.0.0"))
    stamp = (prepared[0] / "dataset_info.json").stat().st_mtime_ns
    copy = tmp_path / "copy.jsonl"
    shutil.copy(reviews, copy)  # same bytes, other name: the same prepared set
    local_task(_data(copy), data_dir=cache)
    assert sorted((cache / "local_files").glob("*/1.0.0")) == prepared
    assert (prepared[0] / "dataset_info.json").stat().st_mtime_ns == stamp
    assert "changed" not in capsys.readouterr().err
    reviews.write_text(reviews.read_text().replace("review number 7", "an edited review"))
    task = local_task(_data(reviews), data_dir=cache)
    assert "changed since it was prepared" in capsys.readouterr().err
    assert len(list((cache / "local_files").glob("*/1.0.0"))) == 2
    assert "an edited review" in _texts(load_split(task, "train")) + _texts(
        load_split(task, "validation")
    )
    assert sorted(p.name for p in reviews.parent.iterdir()) == ["reviews.jsonl"]


def test_chat_spans_score_the_assistant_turns():
    chat = ChatTemplate(SMOLLM2_TEMPLATE)
    turns = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "and?"},
        {"role": "assistant", "content": "bye"},
    ]
    spans = chat.spans(turns)
    assert "".join(t for t, _ in spans) == chat.render(turns)
    assert [t for t, scored in spans if scored] == ["hello<|im_end|>\n", "bye<|im_end|>\n"]
    prompt, reply = chat.last_reply(turns)
    assert prompt.endswith("<|im_start|>user\nand?<|im_end|>\n<|im_start|>assistant\n")
    assert reply == "bye"


def test_a_folder_of_shards_and_sentence_pairs(tmp_path):
    """Files without a split name are shards of one train set, read in name order; a pair
    task reads `text_pair` as the second sentence."""
    folder = tmp_path / "pairs"
    folder.mkdir()
    for shard in range(2):
        rows = [{"a": f"shard {shard} row {i}", "b": f"other {i}", "y": i % 3} for i in range(60)]
        (folder / f"part-{shard}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    columns = {"text": "a", "text_pair": "b", "label": "y"}
    task = local_task(_data(folder, columns=columns), data_dir=tmp_path / "c")
    assert task.text_keys == ("text", "text_pair") and task.num_labels == 3
    assert task.label_names == ("0", "1", "2") and task.metrics == ("accuracy",)
    train = _texts(load_split(task, "train"))
    assert train[0] == "shard 0 row 0" and train[-1].startswith("shard 1")
    batch = _batches(load_split(task, "train"), task, 1)[0]
    assert batch["token_type_ids"].max() == 1  # the second sentence's segment
    (folder / "train.jsonl").write_text((folder / "part-0.jsonl").read_text())
    with pytest.raises(ValueError, match=r"part-0.jsonl is not named after a split"):
        local_task(_data(folder, columns=columns), data_dir=tmp_path / "c")


def test_a_file_edited_in_place_is_another_run(reviews):
    # The run identity holds the files' content key: a rerun into the same folder after an
    # edit is refused as another config instead of resuming on other data.
    from lora_jax.config import Config
    from lora_jax.train.run_identity import LOCAL_ONLY, differences, identity

    cfg = Config(data=_data(reviews))
    before = identity(cfg)
    assert before["data.content"] == identity(Config(data=_data(reviews)))["data.content"]
    reviews.write_text(reviews.read_text().replace("review number 7", "an edited review"))
    after = identity(cfg)
    assert [d.split(":")[0] for d in differences(before, after, exact=True)] == ["data.content"]
    # Built-in tasks: the config alone, without the keys only local files use (the hashes of
    # folders made before those keys existed stay the same).
    builtin = identity(Config())
    assert not [k for k in builtin if k.startswith((*LOCAL_ONLY, "data.content"))]
    assert {"data.kind", "data.columns.text", "data.path"} <= set(after)

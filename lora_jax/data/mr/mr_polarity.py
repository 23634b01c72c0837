"""TFDS builder for MR sentence polarity with human ratings (``mr_polarity``).

The source is ``movieReviewSnippets_GroundTruth.txt`` from Hutto & Gilbert (ICWSM 2014),
shipped inside the vaderSentiment 3.3.2 source archive (MIT). It holds the 10,605
sentences of Pang & Lee's sentence polarity dataset v1.0 (the source of SST-2's
sentences), each with the mean of about 20 human ratings on a -4..+4 scale. Lines are
``id<TAB>mean_rating<TAB>text`` (UTF-8, CRLF). Ids 1-5331 come from Pang & Lee's
positive file and 5332-10605 from the negative file; that id range, not the rating, is
the binary label (as in SST-2).

Configs:
    binary: supervised keys (sentence, label); label 1 = positive, 0 = negative.
    rating: supervised keys (sentence, rating); rating = mean human rating (float32).
Both configs store the same four features: ``sentence`` (Text), ``label`` (ClassLabel
negative/positive), ``rating`` (float32), ``id`` (int32).

Split rule (the same on every machine, no RNG library involved): within each label,
sort the ids by ``sha256(f"mr_polarity:{id}")`` (hex digest, ascending); the first
``round(0.1 * n)`` go to validation, the next ``round(0.1 * n)`` to test, the rest to
train. This is an exact 80/10/10 stratified split:

    positive (n=5331): train 4265, validation 533, test 533
    negative (n=5274): train 4220, validation 527, test 527
    total:             train 8485, validation 1060, test 1060

Parsing is strict: a line with a wrong field count, a bad id or rating, an id out of
order, or a file with other than 10,605 lines raises ``MRFormatError`` naming the file
and the line number. A silently shorter dataset is never produced.

The builder reads the text file from the TFDS manual dir: prepare it with
``lora_jax.data.assets.ensure_mr()`` (``python -m lora_jax.data.assets``), which passes
``DownloadConfig(manual_dir=<cache>)`` and ``file_format="array_record"``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

SOURCE_FILENAME = "movieReviewSnippets_GroundTruth.txt"
NUM_EXAMPLES = 10_605
NUM_POSITIVE = 5_331  # ids 1..5331 positive, 5332..10605 negative
SPLIT_FRACTIONS = {"validation": 0.1, "test": 0.1}  # the rest is train
SPLIT_SALT = "mr_polarity"


class MRFormatError(ValueError):
    """The MR source file is malformed (message names the file and line number)."""


@dataclasses.dataclass(frozen=True)
class MRExample:
    """One parsed line of the source file."""

    id: int
    rating: float
    sentence: str

    @property
    def label(self) -> int:
        return label_of_id(self.id)


def label_of_id(example_id: int) -> int:
    """Binary label from the id range: 1 (positive) for ids 1..5331, else 0."""
    return 1 if example_id <= NUM_POSITIVE else 0


def parse_source(path: str | os.PathLike, *, expected_count: int = NUM_EXAMPLES) -> list[MRExample]:
    """Parses the ground-truth TSV strictly.

    Args:
        path: path to ``movieReviewSnippets_GroundTruth.txt``.
        expected_count: number of lines the file must hold (ids must be 1..count in order).

    Returns:
        The examples in file order.

    Raises:
        MRFormatError: on any malformed line or a wrong line count, naming file and line.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line_no = raw[: e.start].count(b"\n") + 1
        raise MRFormatError(f"{path}:{line_no}: not valid UTF-8 ({e.reason})") from e
    lines = text.split("\n")
    if lines and lines[-1] in ("", "\r"):  # a trailing newline ends the last line
        lines.pop()
    examples: list[MRExample] = []
    for line_no, line in enumerate(lines, start=1):
        line = line.removesuffix("\r")
        fields = line.split("\t")
        if len(fields) != 3:
            raise MRFormatError(
                f"{path}:{line_no}: expected 3 tab-separated fields (id, rating, text), "
                f"got {len(fields)}: {line[:80]!r}"
            )
        id_str, rating_str, sentence = fields
        try:
            example_id = int(id_str)
        except ValueError:
            raise MRFormatError(f"{path}:{line_no}: bad id {id_str!r}") from None
        if example_id != line_no:
            raise MRFormatError(
                f"{path}:{line_no}: id {example_id} out of sequence (expected {line_no})"
            )
        try:
            rating = float(rating_str)
        except ValueError:
            raise MRFormatError(f"{path}:{line_no}: bad rating {rating_str!r}") from None
        if not (math.isfinite(rating) and -4.0 <= rating <= 4.0):
            raise MRFormatError(f"{path}:{line_no}: rating {rating} outside [-4, 4]")
        if not sentence.strip():
            raise MRFormatError(f"{path}:{line_no}: empty sentence")
        examples.append(MRExample(example_id, rating, sentence.strip()))
    if len(examples) != expected_count:
        raise MRFormatError(
            f"{path}:{len(lines)}: file ends after {len(examples)} lines, expected "
            f"{expected_count} (truncated or wrong file; re-fetch with "
            "`python -m lora_jax.data.assets --force`)"
        )
    return examples


def _split_key(example_id: int) -> str:
    return hashlib.sha256(f"{SPLIT_SALT}:{example_id}".encode()).hexdigest()


def assign_splits(ids: list[int] | np.ndarray) -> dict[str, list[int]]:
    """Applies the documented split rule; returns split name -> sorted ids."""
    out: dict[str, list[int]] = {"train": [], "validation": [], "test": []}
    by_label: dict[int, list[int]] = {0: [], 1: []}
    for i in ids:
        by_label[label_of_id(int(i))].append(int(i))
    for group in by_label.values():
        ordered = sorted(group, key=_split_key)
        n_val = round(SPLIT_FRACTIONS["validation"] * len(group))
        n_test = round(SPLIT_FRACTIONS["test"] * len(group))
        out["validation"] += ordered[:n_val]
        out["test"] += ordered[n_val : n_val + n_test]
        out["train"] += ordered[n_val + n_test :]
    return {k: sorted(v) for k, v in out.items()}


class MrPolarityConfig(tfds.core.BuilderConfig):
    """Config: which target the supervised keys point at."""

    def __init__(self, *, target: str, **kwargs):
        super().__init__(version=tfds.core.Version("1.0.0"), **kwargs)
        self.target = target


class MrPolarity(tfds.core.GeneratorBasedBuilder):
    __doc__ = __doc__

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "Initial release: sha256 stratified 80/10/10 split."
    }
    BUILDER_CONFIGS: ClassVar[list[tfds.core.BuilderConfig]] = [
        MrPolarityConfig(
            name="binary",
            target="label",
            description="Binary polarity from the id range (SST-2-like).",
        ),
        MrPolarityConfig(
            name="rating",
            target="rating",
            description="Mean human rating in [-4, 4] as a regression target (STS-B-like).",
        ),
    ]
    DEFAULT_CONFIG_NAME = "binary"
    # Explicit paths: TFDS infers them with importlib.resources, which fails when
    # lora_jax is imported as a namespace package (e.g. a stale editable install).
    pkg_dir_path = epath.Path(__file__).parent

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(__file__)

    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f"Place {SOURCE_FILENAME} in the manual dir. `python -m lora_jax.data.assets` "
        "(or `make install`) fetches it from the vaderSentiment 3.3.2 source archive and "
        "prepares this dataset."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "sentence": tfds.features.Text(),
                    "label": tfds.features.ClassLabel(names=["negative", "positive"]),
                    "rating": np.float32,
                    "id": np.int32,
                }
            ),
            supervised_keys=("sentence", self.builder_config.target),
            homepage="https://github.com/cjhutto/vaderSentiment",
            citation=(
                "@inproceedings{hutto2014vader, title={VADER: A Parsimonious Rule-based "
                "Model for Sentiment Analysis of Social Media Text}, author={Hutto, C. J. "
                "and Gilbert, Eric}, booktitle={ICWSM}, year={2014}}\n"
                "@inproceedings{pang2005seeing, title={Seeing stars: Exploiting class "
                "relationships for sentiment categorization with respect to rating "
                "scales}, author={Pang, Bo and Lee, Lillian}, booktitle={ACL}, year={2005}}"
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        path = os.path.join(os.fspath(dl_manager.manual_dir), SOURCE_FILENAME)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path} not found. Fetch it with `make install` or `python -m lora_jax.data.assets`."
            )
        examples = parse_source(path)
        splits = assign_splits([e.id for e in examples])
        by_id = {e.id: e for e in examples}
        return {
            name: self._generate_examples([by_id[i] for i in ids]) for name, ids in splits.items()
        }

    def _generate_examples(self, examples: list[MRExample]) -> Iterator[tuple[int, dict]]:
        for e in examples:
            yield (
                e.id,
                {"sentence": e.sentence, "label": e.label, "rating": e.rating, "id": e.id},
            )

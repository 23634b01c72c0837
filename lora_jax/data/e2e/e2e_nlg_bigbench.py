"""TFDS builder for the E2E NLG references shipped by BIG-bench (``e2e_nlg_bigbench``).

The source is ``bigbench/benchmark_tasks/gem/e2e_nlg/task.json`` from the bigbench 1.0.0
source archive on PyPI (Apache-2.0; the E2E data is CC BY-SA 4.0, Novikova et al. 2017). It
holds 1,000 examples ``{"input": <meaning representation>, "target": <reference>,
"comment": "e2e_nlg-test-<n>"}`` over 213 distinct meaning representations (MRs) of the
E2E test set; an MR has 1 to 35 references. ``python -m lora_jax.data.assets e2e`` fetches it.

Features: ``meaning_representation`` (Text, e.g. ``"name: Blue Spice, eatType: coffee shop,
area: city centre"``), ``target`` (Text, one reference) and ``id`` (int32, the ``<n>`` of the
comment). Every reference of an MR is one example; metrics group the examples of an MR to
score against all of its references.

Split rule (no MR in two splits, the same on every machine, no RNG library involved): sort the
distinct MRs by ``sha256("e2e_nlg_bigbench:" + mr)`` (hex digest, ascending); the first
``round(0.1 * n)`` go to validation, the next ``round(0.1 * n)`` to test, the rest to train.
With the real file (n = 213 MRs):

    validation:  21 MRs,  66 references
    test:        21 MRs, 124 references
    train:      171 MRs, 810 references

Parsing is strict: a file that is not JSON, lacks ``examples``, has an example with other
keys, a non-string or empty field, a bad or duplicate comment id, or other than 1,000
examples raises ``E2EFormatError`` naming the file (and the example index).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

SOURCE_FILENAME = "task.json"
SOURCE_SUBDIR = "e2e_nlg"  # the manual dir holds e2e_nlg/task.json
NUM_EXAMPLES = 1_000
NUM_MRS = 213
SPLIT_FRACTIONS = {"validation": 0.1, "test": 0.1}  # the rest is train
SPLIT_SALT = "e2e_nlg_bigbench"
_COMMENT = re.compile(r"e2e_nlg-test-(\d+)")
_KEYS = {"input", "target", "comment"}


class E2EFormatError(ValueError):
    """The E2E task file is malformed (the message names the file and the example)."""


@dataclasses.dataclass(frozen=True)
class E2EExample:
    id: int
    meaning_representation: str
    target: str


def parse_task_json(
    path: str | os.PathLike, *, expected_count: int | None = NUM_EXAMPLES
) -> list[E2EExample]:
    """Parses BIG-bench's ``gem/e2e_nlg/task.json`` strictly.

    Args:
        path: the task file.
        expected_count: the number of examples the file must hold (None: any).

    Raises:
        E2EFormatError: on any malformed example or a wrong count, naming the file.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise E2EFormatError(f"{path}: not a UTF-8 JSON file ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("examples"), list):
        raise E2EFormatError(f"{path}: expected a JSON object with an 'examples' list")
    out, seen = [], set()
    for i, ex in enumerate(data["examples"]):
        where = f"{path}: examples[{i}]"
        if not isinstance(ex, dict) or set(ex) != _KEYS:
            got = sorted(ex) if isinstance(ex, dict) else type(ex).__name__
            raise E2EFormatError(f"{where}: expected keys {sorted(_KEYS)}, got {got}")
        for key in _KEYS:
            if not isinstance(ex[key], str) or not ex[key].strip():
                raise E2EFormatError(f"{where}: {key!r} must be a non-empty string")
        m = _COMMENT.fullmatch(ex["comment"])
        if m is None:
            raise E2EFormatError(f"{where}: comment {ex['comment']!r} is not 'e2e_nlg-test-<n>'")
        if int(m[1]) in seen:
            raise E2EFormatError(f"{where}: duplicate id {m[1]}")
        seen.add(int(m[1]))
        out.append(E2EExample(int(m[1]), ex["input"].strip(), ex["target"].strip()))
    if expected_count is not None and len(out) != expected_count:
        raise E2EFormatError(
            f"{path}: {len(out)} examples, expected {expected_count} (truncated or wrong file; "
            "re-fetch with `python -m lora_jax.data.assets e2e --force`)"
        )
    return out


def _split_key(mr: str) -> str:
    return hashlib.sha256(f"{SPLIT_SALT}:{mr}".encode()).hexdigest()


def assign_splits(mrs: list[str]) -> dict[str, list[str]]:
    """The documented split rule: split name -> the MRs it holds (each MR in one split)."""
    ordered = sorted(set(mrs), key=_split_key)
    n_val = round(SPLIT_FRACTIONS["validation"] * len(ordered))
    n_test = round(SPLIT_FRACTIONS["test"] * len(ordered))
    return {
        "validation": ordered[:n_val],
        "test": ordered[n_val : n_val + n_test],
        "train": ordered[n_val + n_test :],
    }


class E2eNlgBigbench(tfds.core.GeneratorBasedBuilder):
    __doc__ = __doc__

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "Initial release: sha256 80/10/10 split by meaning representation."
    }
    # Explicit paths: see lora_jax/data/mr/mr_polarity.py.
    pkg_dir_path = epath.Path(__file__).parent

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(__file__)

    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f"Place {SOURCE_SUBDIR}/{SOURCE_FILENAME} in the manual dir. `python -m lora_jax.data.assets "
        "e2e` fetches it from the bigbench 1.0.0 source archive and prepares this dataset."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "meaning_representation": tfds.features.Text(),
                    "target": tfds.features.Text(),
                    "id": np.int32,
                }
            ),
            supervised_keys=("meaning_representation", "target"),
            homepage="https://github.com/google/BIG-bench/tree/main/bigbench/benchmark_tasks/gem",
            citation=(
                "@inproceedings{novikova2017e2e, title={The {E2E} Dataset: New Challenges for "
                "End-to-End Generation}, author={Novikova, Jekaterina and Du{\\v{s}}ek, "
                "Ond{\\v{r}}ej and Rieser, Verena}, booktitle={SIGDIAL}, year={2017}}"
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        path = os.path.join(os.fspath(dl_manager.manual_dir), SOURCE_SUBDIR, SOURCE_FILENAME)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path} not found. Fetch it with `python -m lora_jax.data.assets e2e`."
            )
        examples = parse_task_json(path)
        splits = assign_splits([e.meaning_representation for e in examples])
        out = {}
        for name, mrs in splits.items():
            keep = set(mrs)
            out[name] = self._generate_examples(
                [e for e in examples if e.meaning_representation in keep]
            )
        return out

    def _generate_examples(self, examples: list[E2EExample]) -> Iterator[tuple[int, dict]]:
        for e in examples:
            yield (
                e.id,
                {
                    "meaning_representation": e.meaning_representation,
                    "target": e.target,
                    "id": e.id,
                },
            )

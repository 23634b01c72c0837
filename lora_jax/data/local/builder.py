"""The TFDS builder of a researcher's files (``local_files``), prepared once into array_record
under the asset cache, never beside the files: ``<cache>/tensorflow_datasets/local_files/<key>``,
where the key is a sha256 of the files' bytes, the kind and the columns. An edited file gets a
new key and is prepared again (a line on stderr says so); an unchanged one is read as it is.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import io
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from lora_jax.data.local.examples import (
    VALIDATION_PERCENT,
    LocalOptions,
    canonical,
    in_validation,
    label_names,
    read_examples,
)
from lora_jax.runs.files import write_atomic

NAME = "local_files"
VERSION = "1.0.0"


class LocalConfig(tfds.core.BuilderConfig):
    """One data set: its checked examples (in memory while it is prepared) and features."""

    def __init__(self, *, examples: dict, kind: str, roles: tuple, labels: tuple, **kwargs):
        super().__init__(version=tfds.core.Version(VERSION), **kwargs)
        self.examples, self.kind, self.roles, self.labels = examples, kind, roles, labels


class LocalFiles(tfds.core.GeneratorBasedBuilder):
    """Rows of local files in file order (no shuffling: the loader shuffles), one feature per
    role; ``label`` a ClassLabel of the sorted labels, or float32 for regression."""

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Local files, split by hash."}
    # Explicit paths: see lora_jax/data/mr/mr_polarity.py.
    pkg_dir_path = epath.Path(__file__).parent

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        c = self.builder_config
        features: dict[str, Any] = {r: tfds.features.Text() for r in c.roles if r != "label"}
        if "label" in c.roles:
            regression = c.kind == "regression"
            features["label"] = (
                np.float32 if regression else tfds.features.ClassLabel(names=c.labels)
            )
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(features), disable_shuffling=True
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        return {s: self._generate_examples(e) for s, e in self.builder_config.examples.items()}

    def _generate_examples(self, examples: list[dict]) -> Iterator[tuple[int, dict]]:
        yield from enumerate(examples)


def file_stamps(options: LocalOptions) -> tuple[tuple[str, int, int], ...]:
    """(path, mtime, size) of every file: what tells an unchanged file without reading it."""
    stats = ((f, os.stat(f)) for _, files in options.splits for f in files)
    return tuple((f, st.st_mtime_ns, st.st_size) for f, st in stats)


def content_key(options: LocalOptions) -> str:
    """16 hex digits of sha256 over the kind, the columns, the split rule and every file's bytes."""
    return _content_key(options, file_stamps(options))


@functools.cache  # the run identity and the preparation both ask, for every job of a sweep
def _content_key(options: LocalOptions, stamps: tuple) -> str:
    digest = hashlib.sha256(
        canonical(
            {"kind": options.kind, "columns": options.columns, "v": VALIDATION_PERCENT}
        ).encode()
    )
    for split, files in options.splits:
        for name in files:
            digest.update(f"\n{split}\n".encode())
            with open(name, "rb") as f:
                digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()[:16]


def ensure_prepared(options: LocalOptions, data_dir: Path) -> Path:
    """The prepared folder of `options` (``data_dir/local_files/<key>/1.0.0``), read, checked
    and prepared first if it is not there. Raises ValueError for bad rows before writing."""
    key = content_key(options)
    prepared = data_dir / NAME / key / VERSION
    if (prepared / "dataset_info.json").is_file():
        return prepared
    examples = read_examples(options)
    if "validation" not in examples:
        train = examples.pop("train")
        examples["train"] = [e for e in train if not in_validation(e)]
        examples["validation"] = [e for e in train if in_validation(e)]
    for split, rows in examples.items():
        if not rows:
            raise ValueError(
                f"data.path={options.splits[0][1][0]!r}: the {split} split is empty "
                f"({VALIDATION_PERCENT}% of the rows go to validation by a hash of each row); "
                "allowed: at least one example per split. Add rows, or give "
                "`data.validation_path=...`."
            )
    labels = ()
    if options.kind == "classification":
        labels = label_names(e["label"] for rows in examples.values() for e in rows)
    with _lock(data_dir):
        if not (prepared / "dataset_info.json").is_file():
            _say_if_changed(options, key, data_dir)
            config = LocalConfig(
                name=key, examples=examples, kind=options.kind, roles=options.roles, labels=labels
            )
            print(f"data=local: preparing {_files(options)} in {prepared}", file=sys.stderr)
            with _quiet():
                builder = LocalFiles(
                    config=config, data_dir=str(data_dir), file_format="array_record"
                )
                builder.download_and_prepare(file_format="array_record")
    return prepared


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """TFDS's progress bars, INFO lines and print: the validation pass says one line instead."""
    tfds.disable_progress_bar()
    logging.disable(logging.INFO)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)


def _files(options: LocalOptions) -> str:
    return ", ".join(f for _, files in options.splits for f in files)


@contextlib.contextmanager
def _lock(data_dir: Path) -> Iterator[None]:
    # Several processes of one run (or a sweep's jobs) may prepare the same files at once.
    (data_dir / NAME).mkdir(parents=True, exist_ok=True)
    with open(data_dir / NAME / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _say_if_changed(options: LocalOptions, key: str, data_dir: Path) -> None:
    """Each set of paths remembers the key it was last prepared with: a new key is an edit."""
    where = hashlib.sha256(canonical(options.splits).encode()).hexdigest()[:16]
    memo = data_dir / NAME / "paths" / where
    old = memo.read_text().strip() if memo.is_file() else None
    if old is not None and old != key:
        print(
            f"data.path: {_files(options)} changed since it was prepared ({old} -> {key}): preparing it "
            "again.",
            file=sys.stderr,
            flush=True,
        )
    memo.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(memo, key + "\n")


def load_source(prepared: Path, split: str) -> Any:
    """The random-access source of one split (a TFDS split name or slice) of a prepared set."""
    return tfds.builder_from_directory(str(prepared)).as_data_source(split=split)


def features_of(prepared: Path) -> tuple[dict, tuple[str, ...]]:
    """(split name -> examples, label names or ()) of a prepared set."""
    info = tfds.builder_from_directory(str(prepared)).info
    label = info.features["label"] if "label" in info.features else None  # noqa: SIM401
    names = tuple(label.names) if isinstance(label, tfds.features.ClassLabel) else ()
    return {s: info.splits[s].num_examples for s in info.splits}, names

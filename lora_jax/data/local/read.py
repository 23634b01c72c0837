"""Reading a researcher's own files (``data=local``): which files make which split, and their
rows as dicts with where each came from. JSONL (``json``), CSV/TSV (``csv``) and Parquet
(``pyarrow``); the format comes from the extension. Every problem is a ``ValueError`` or
``FileNotFoundError`` that names the file, the value, what is allowed and how to fix it.
"""

from __future__ import annotations

import csv
import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}
# The split a file in a folder belongs to: the first word of its name (`dev.jsonl`,
# `train-00000-of-00002.parquet`). A folder with none of these holds shards of one train set.
SPLIT_WORDS = {
    "train": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
}
_EXAMPLE = "`data.path=my_reviews.jsonl`"


@dataclass(frozen=True)
class Row:
    """One row of a file: its values by column and where it is (``file:line`` or ``file: row``)."""

    values: dict[str, Any]
    where: str


def split_files(
    path: str, validation_path: str | None = None, test_path: str | None = None
) -> dict[str, list[Path]]:
    """Split name -> the files (shards in name order) that hold it; "validation" and "test" only
    where given (a file, or named in the folder).

    Raises:
        FileNotFoundError: a path that does not exist. ValueError: no readable file.
    """
    out: dict[str, list[Path]] = {}
    for key, value, split in (
        ("data.path", path, "train"),
        ("data.validation_path", validation_path, "validation"),
        ("data.test_path", test_path, "test"),
    ):
        if value is None:
            continue
        files = _files(key, Path(value).expanduser().resolve())
        named = {
            f: SPLIT_WORDS.get(re.split(r"[-_.]", f.name, maxsplit=1)[0].lower()) for f in files
        }
        if key == "data.path" and Path(value).is_dir() and any(named.values()):
            for f, s in named.items():
                if s is None:
                    raise ValueError(
                        f"{key}={value!r}: {f.name} is not named after a split; allowed in a "
                        f"folder of named splits: files whose name starts with "
                        f"{', '.join(SPLIT_WORDS)}. Rename it, or point data.path at one file."
                    )
                out.setdefault(s, []).append(f)
        else:
            out.setdefault(split, []).extend(files)
    if "train" not in out:
        raise ValueError(
            f"data.path={path!r} holds no train file; allowed: a file, or a folder with a "
            f"train.* file. Use e.g. {_EXAMPLE}."
        )
    return out


def _files(key: str, path: Path) -> list[Path]:
    allowed = f"a {', '.join(sorted(FORMATS))} file, or a folder of them"
    if not path.exists():
        raise FileNotFoundError(
            f"{key}={str(path)!r} does not exist; allowed: {allowed}. Use e.g. {_EXAMPLE}."
        )
    files = (
        sorted(f for f in path.iterdir() if f.suffix.lower() in FORMATS)
        if path.is_dir()
        else [path]
    )
    if not files or files[0].suffix.lower() not in FORMATS:
        what = "holds no data file" if path.is_dir() else "has an unknown extension"
        raise ValueError(f"{key}={str(path)!r} {what}; allowed: {allowed}. Use e.g. {_EXAMPLE}.")
    return files


def read_rows(path: Path) -> tuple[list[Row], list[str]]:
    """(rows, the columns found) of one file. Blank JSONL lines are skipped.

    Raises:
        ValueError: a line that is not JSON (an object), or a file that is not UTF-8.
    """
    fmt = FORMATS[path.suffix.lower()]
    if fmt == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        rows = [Row(v, f"{path}: row {i}") for i, v in enumerate(table.to_pylist(), start=1)]
        return rows, list(table.column_names)
    try:
        with open(path, encoding="utf-8", newline="") as f:
            if fmt == "jsonl":
                return _jsonl(path, f)
            reader = csv.DictReader(f, delimiter="\t" if fmt == "tsv" else ",")
            columns = list(reader.fieldnames or [])
            rows = []
            for values in reader:
                rows.append(Row(values, f"{path}:{reader.line_num}"))
            return rows, columns
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err.reason}); save it as UTF-8.") from None


def _jsonl(path: Path, lines: Any) -> tuple[list[Row], list[str]]:
    rows, columns = [], {}
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            values = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path}:{n} is not a JSON object ({err.msg}); allowed: one JSON object per line."
            ) from None
        if not isinstance(values, dict):
            raise ValueError(
                f"{path}:{n} is a JSON {type(values).__name__}; allowed: one JSON object per line."
            )
        columns.update(dict.fromkeys(values))
        rows.append(Row(values, f"{path}:{n}"))
    return rows, list(columns)


def check_column(key: str, column: str, found: list[str], path: Path) -> None:
    """A configured column must be in the file; the message lists the columns found."""
    if column in found:
        return
    guess = (difflib.get_close_matches(column, found, n=1) or found or ["text"])[0]
    raise ValueError(
        f"{key}={column!r} is not a column of {path}; columns found: {', '.join(found) or 'none'}. "
        f"Use e.g. `{key}={guess}`."
    )

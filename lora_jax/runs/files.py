"""Files that readers never see half written (`replacing`, `write_atomic`), and JSON-lines
files read past a cut last line (`read_jsonl`): how every run and sweep file is written and
`history.jsonl` is read."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temporary file in `path`'s folder (same file system) for the block to write; moved
    onto `path` (`os.replace`) when the block ends, removed if it fails. Readers see the old
    file or the new one, never a part."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, text: str) -> None:
    """Write `text` to `path` so that readers see the old file or the new one (`replacing`)."""
    with replacing(path) as tmp:
        tmp.write_text(text)


def read_jsonl(path: str | Path, contains: str | None = None) -> Iterator[dict[str, Any]]:
    """The rows of a JSON-lines file such as `history.jsonl`, skipping lines that do not parse
    (a process killed mid-write leaves a cut last line). `contains`: parse only lines holding
    this text (a cheap filter)."""
    with open(path) as f:
        for line in f:
            if contains is not None and contains not in line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                yield row

"""Rows of a researcher's files -> checked examples, named by role (``text``, ``text_pair``,
``label``; ``prompt``, ``completion``; ``messages``), and the rules that make them reproducible:
the label order and the validation split by hash (docs/data.md, "Your own files").
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_jax.data.local.read import Row, check_column, read_rows

# The roles each `data.kind` reads (`text_pair` only when `data.columns.text_pair` is set).
KIND_ROLES = {
    "classification": ("text", "text_pair", "label"),
    "regression": ("text", "text_pair", "label"),
    "completion": ("prompt", "completion"),
    "chat": ("messages",),
}
# Without a validation file, an example goes to validation when the sha256 of its canonical JSON
# (`canonical`), read as a number, mod 100 is below this: a property of the example alone, so
# adding rows never moves the old ones between splits (and equal rows share their split).
VALIDATION_PERCENT = 10
_INTEGER = re.compile(r"-?\d+")


@dataclass(frozen=True)
class LocalOptions:
    """What a local data set is made of: split -> files, the kind, and role -> column."""

    splits: tuple[tuple[str, tuple[str, ...]], ...]
    kind: str
    columns: tuple[tuple[str, str], ...]

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(role for role, _ in self.columns)


def canonical(example: dict[str, Any]) -> str:
    """The example as JSON with sorted keys and no spaces: what the split hash reads."""
    return json.dumps(example, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def in_validation(example: dict[str, Any]) -> bool:
    """The documented split rule (``VALIDATION_PERCENT``)."""
    digest = hashlib.sha256(canonical(example).encode("utf-8")).hexdigest()
    return int(digest, 16) % 100 < VALIDATION_PERCENT


def label_names(labels: Iterable[str]) -> tuple[str, ...]:
    """The label -> id order: the sorted distinct labels, as numbers when all are integers
    (``0, 1, 2, 10``), else as strings (``negative, neutral, positive``)."""
    distinct = set(labels)
    if all(_INTEGER.fullmatch(x) for x in distinct):
        return tuple(sorted(distinct, key=int))
    return tuple(sorted(distinct))


def read_examples(options: LocalOptions) -> dict[str, list[dict[str, Any]]]:
    """Split -> checked examples (labels as read: strings for classification, floats for
    regression). Raises ValueError naming the file, the column, the count and first line."""
    out = {}
    for split, files in options.splits:
        out[split] = []
        for name in files:
            rows, found = read_rows(Path(name))
            for role, column in options.columns:
                check_column(f"data.columns.{role}", column, found, Path(name))
            out[split] += _examples(rows, options, Path(name))
    if options.kind == "classification":
        names = label_names(e["label"] for split in out.values() for e in split)
        if len(names) < 2:
            column = dict(options.columns)["label"]
            raise ValueError(
                f"data.columns.label={column!r} holds one class only ({names[0]!r}) in "
                f"{', '.join(f for _, fs in options.splits for f in fs)}; allowed: at least 2 "
                "classes. Add examples of another class, or use `data.kind=regression` for scores."
            )
    return out


def _examples(rows: Sequence[Row], options: LocalOptions, path: Path) -> list[dict[str, Any]]:
    values: dict[str, list[Any]] = {}
    for role, column in options.columns:
        check, allowed = _CHECKS[options.kind if role == "label" else role]
        good, bad = [], []
        for row in rows:
            value = check(row.values.get(column))
            (bad if value is None else good).append(row if value is None else value)
        if bad:
            raise ValueError(
                f"{path}: {len(bad)} row(s) with an empty or bad {column!r} "
                f"(data.columns.{role}), first at {bad[0].where}: "
                f"{_show(bad[0].values.get(column))}; allowed: {allowed}. Fix or delete those rows."
            )
        values[role] = good
    return [dict(zip(values, v, strict=True)) for v in zip(*values.values(), strict=True)]


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _class(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return str(int(value))
    return value.strip() if isinstance(value, str) and value.strip() else None


def _score(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _messages(value: Any) -> str | None:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    if not isinstance(value, list) or not value:
        return None
    turns = []
    for turn in value:
        if not (
            isinstance(turn, dict)
            and _text(turn.get("role"))
            and isinstance(turn.get("content"), str)
        ):
            return None
        turns.append({"role": turn["role"], "content": turn["content"]})
    if not any(t["role"] == "assistant" and t["content"].strip() for t in turns):
        return None
    return canonical(turns)  # stored as JSON text


_TEXT = "a non-empty string in every row"
_CHECKS = {
    "text": (_text, _TEXT),
    "text_pair": (_text, _TEXT),
    "prompt": (_text, _TEXT),
    "completion": (_text, _TEXT),
    "classification": (_class, "a class name or an integer in every row"),
    "regression": (_score, "a finite number in every row (data.kind=regression)"),
    "messages": (
        _messages,
        'a list of {"role": ..., "content": ...} turns (or its JSON text) with an assistant turn',
    ),
}

"""How the analysis writes its numbers into `analysis.json`: matrix names and strict JSON."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

Key = tuple[int, str]  # (layer, target)


def matrix_name(key: Key) -> str:
    """`layer_<i>/<target>`: how analysis.json names an adapted matrix."""
    return f"layer_{key[0]}/{key[1]}"


def json_grid(grid: Any) -> list:
    """A phi grid as nested lists, 6 decimals; undefined (NaN) entries become null."""
    return [
        [None if not math.isfinite(x) else round(float(x), 6) for x in row]
        for row in np.asarray(grid)
    ]


def finite_or_none(x: Any) -> Any:
    """`x` with every NaN/inf float (undefined directions, dW orthogonal to W) as None."""
    if isinstance(x, dict):
        return {k: finite_or_none(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [finite_or_none(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x

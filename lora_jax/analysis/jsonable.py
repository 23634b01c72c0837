"""How the analysis writes its numbers into `analysis.json`: phi grids and strict JSON (matrix
names: `lora_jax.peft_adapter.matrix_name`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


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

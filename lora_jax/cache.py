"""Where lora_jax keeps what it can rebuild: `$LORA_JAX_CACHE`, else `~/.cache/lora_jax`.

Under it: the prepared data sets (`data.assets`), the base weights' SVDs (`analysis.svd_cache`)
and the metadata of GGUF files (`weights.gguf`). Deleting it costs time, never results.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "LORA_JAX_CACHE"


def cache_root() -> Path:
    """`$LORA_JAX_CACHE`, else `~/.cache/lora_jax`."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lora_jax"

"""JAX's persistent compilation cache, shared by training and the analysis.

A sweep's later jobs (other seeds, reruns, resumed runs) and a re-analysis load compiled
programs instead of compiling them again.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax


def enable_compilation_cache(path: str | None = None) -> str:
    """Turn the cache on; the folder is `path`, else `$LORA_JAX_COMPILE_CACHE`, else
    `~/.cache/lora_jax/jax_compile`. Returns the folder."""
    path = (
        path
        or os.environ.get("LORA_JAX_COMPILE_CACHE")
        or str(Path.home() / ".cache/lora_jax/jax_compile")
    )
    jax.config.update("jax_compilation_cache_dir", path)
    # A threshold would make cache hits depend on timing noise.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path

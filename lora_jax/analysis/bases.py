"""The frozen W of every adapted matrix, read from its base checkpoint and decomposed once.

Every run of a sweep, and every checkpoint of every run, is measured against the same W
(`dw_vs_w`); reading W and its full SVD once per matrix is what keeps the analysis fast.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lora_jax.analysis.projection import KernelSVD, kernel_svd
from lora_jax.weights.base_kernels import read_kernels

Key = tuple[int, str]  # (layer, target)


class BaseKernels:
    """W and its SVD per (base checkpoint, family, matrix), each read and decomposed once.

    Args:
        base_of: the base checkpoint of an update (`lora_jax.analysis.lora_update.Update`): its
            file or folder, or the `base_kernels.safetensors` a random-init run saved.
    """

    def __init__(self, base_of: Callable[[Any], Path]) -> None:
        self.base_of = base_of
        self.kernels: dict[tuple[Path, str], dict[Key, np.ndarray]] = {}
        self.svds: dict[tuple[Path, Key], KernelSVD] = {}

    def kernels_of(self, update: Any) -> tuple[Path, dict[Key, np.ndarray]]:
        """(base checkpoint, {key: W}) with W of every matrix `update`'s adapter adapts."""
        source, family = Path(self.base_of(update)), update.adapter.family
        cached = self.kernels.setdefault((source, family), {})
        missing = [k for k in update.adapter.factors if k not in cached]
        if missing:
            cached.update(read_kernels(source, family, missing))
        return source, cached

    def svd(self, source: Path, key: Key, kernel: np.ndarray) -> KernelSVD:
        """`kernel_svd(kernel)` of matrix `key` of base `source`, computed once."""
        if (source, key) not in self.svds:
            self.svds[(source, key)] = kernel_svd(kernel)
        return self.svds[(source, key)]

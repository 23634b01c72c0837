"""Safetensors checkpoints read lazily, one tensor at a time (no JAX, nothing of ours).

Shared by the model loaders (through `weights.hf_folder`) and the analysis's base-kernel
reader (`weights.base_kernels`), which must not import the models.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
from safetensors import safe_open


class SafetensorsReader(Mapping):
    """A lazy, read-only `{name: np.ndarray}` over a folder's safetensors file(s) (sharded
    with `model.safetensors.index.json`, or one `model.safetensors`), or over one file.

    Each access reads one tensor from disk, so loading never holds the whole file in memory
    twice. `file_of(name)` says which file a tensor lives in (for error messages).
    """

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        index = folder / "model.safetensors.index.json"
        single = folder if folder.is_file() else folder / "model.safetensors"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self._files = {name: folder / f for name, f in weight_map.items()}
        elif single.is_file():
            with safe_open(single, framework="numpy") as f:
                self._files = dict.fromkeys(f.keys(), single)
        else:
            raise FileNotFoundError(
                f"{folder} has no model.safetensors (or model.safetensors.index.json). Convert a "
                "PyTorch checkpoint with transformers' `save_pretrained(..., safe_serialization=True)`."
            )
        self.folder = folder

    def __getitem__(self, name: str) -> np.ndarray:
        with safe_open(self._files[name], framework="numpy") as f:
            return f.get_tensor(name)

    def shape(self, name: str) -> tuple[int, ...]:
        """A tensor's shape without reading its data."""
        with safe_open(self._files[name], framework="numpy") as f:
            return tuple(f.get_slice(name).get_shape())

    def file_of(self, name: str) -> Path:
        return self._files.get(name, self.folder / "model.safetensors")

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)

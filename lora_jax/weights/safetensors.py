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

# Dtypes numpy lacks, so safetensors' numpy reader raises "data type 'bfloat16' not understood";
# the hub's Llama, Mistral and Qwen2 checkpoints are bfloat16. ml_dtypes (a JAX dependency, no
# JAX itself) gives numpy these types; we read their bytes from the file directly. Imported only
# for such a tensor: ml_dtypes takes ~0.8 s to import, most of a float32 adapter's audit.
_EXTRA_DTYPES = {"BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


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
        path = self._files[name]
        with safe_open(path, framework="numpy") as f:
            if f.get_slice(name).get_dtype() not in _EXTRA_DTYPES:
                return f.get_tensor(name)
        return _read_extra_dtype(path, name)

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


def _read_extra_dtype(path: Path, name: str) -> np.ndarray:
    """One tensor of a dtype in `_EXTRA_DTYPES`, read from the file's bytes. The format: an
    8-byte little-endian header length, a JSON header ({name: {dtype, shape, data_offsets}}),
    then the data, offsets counted from its start."""
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        entry = json.loads(f.read(header_len))[name]
        import ml_dtypes

        dtype = np.dtype(getattr(ml_dtypes, _EXTRA_DTYPES[entry["dtype"]]))
        start, end = entry["data_offsets"]
        f.seek(8 + header_len + start)
        data = np.fromfile(f, dtype=dtype.newbyteorder("<"), count=(end - start) // dtype.itemsize)
    return data.reshape(entry["shape"])

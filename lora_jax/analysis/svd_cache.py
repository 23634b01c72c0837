"""W's SVDs on disk, so a second `--adapters ... --base` analysis on the same base decomposes
nothing: a 1B base's 112 SVDs cost ~8 minutes on 2 cores, reading them back seconds.

One safetensors file per matrix under `<root>/<identity>/<family>/`, where the identity hashes
the base checkpoint's resolved path and its files' names, sizes and modification times: a
changed or replaced checkpoint gets a new folder, never a stale SVD. A file is written only
when the disk keeps room for it (a full SVD in float32 is about as large as W plus its square
side: ~1.5x the base in float32), atomically, so an interrupted write leaves no part.

    >>> svds = SVDCache(Path("base/"), "llama")  # doctest: +SKIP
    >>> svds.svd((3, "q"), w)  # kernel_svd(w), computed once per base and matrix
"""

from __future__ import annotations

import hashlib
import shutil
import warnings
from pathlib import Path

import numpy as np

from lora_jax.analysis.projection import KernelSVD, kernel_svd
from lora_jax.cache import cache_root
from lora_jax.runs.files import replacing

Key = tuple[int, str]  # (layer, target)
DISK_MARGIN = 1 << 30  # bytes the cache leaves free on its disk


def default_root() -> Path:
    """`$LORA_JAX_CACHE/base_svd`, else `~/.cache/lora_jax/base_svd`."""
    return cache_root() / "base_svd"


def base_identity(source: Path) -> str:
    """A hash of the checkpoint `source` (a file, or a folder of files) as it is on disk."""
    source = Path(source).resolve()
    files = [source] if source.is_file() else sorted(p for p in source.iterdir() if p.is_file())
    h = hashlib.sha256(str(source).encode())
    for f in files:
        stat = f.stat()
        h.update(f"{f.name}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


class SVDCache:
    """`kernel_svd` of each matrix of one base checkpoint, read from disk when saved before.

    Args:
        source: the base checkpoint (file or folder) the kernels are read from.
        family: the model family (`read_kernels`' naming of the matrices).
        root: the cache folder (default `default_root()`); None disables the disk.
    """

    def __init__(self, source: Path, family: str, root: Path | None) -> None:
        self.dir = None if root is None else Path(root) / base_identity(source) / family
        self.reused = self.computed = 0
        self.unsaved: str | None = None  # why a decomposition was not saved, once

    def svd(self, key: Key, kernel: np.ndarray) -> KernelSVD:
        """W's thin SVD: the saved one if its shapes match `kernel`, else computed (and saved)."""
        path = None if self.dir is None else self.dir / f"{key[0]}.{key[1]}.safetensors"
        if path is not None and path.is_file():
            from safetensors.numpy import load_file

            saved = KernelSVD(**load_file(path))
            k = min(kernel.shape)
            if saved.p.shape == (kernel.shape[0], k) and saved.qt.shape == (k, kernel.shape[1]):
                self.reused += 1
                return saved
        w_svd = KernelSVD(*(np.asarray(x) for x in kernel_svd(kernel)))
        self.computed += 1
        if path is not None:
            self._save(path, w_svd)
        return w_svd

    def _save(self, path: Path, w_svd: KernelSVD) -> None:
        from safetensors.numpy import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        size = sum(x.nbytes for x in w_svd)
        free = shutil.disk_usage(path.parent).free
        if free < size + DISK_MARGIN:
            if self.unsaved is None:
                self.unsaved = (
                    f"{path.parent}: {free / 2**30:.1f} GiB free, a decomposition needs "
                    f"{size / 2**30:.2f} GiB plus a {DISK_MARGIN / 2**30:.0f} GiB margin; "
                    "the rest are computed, not saved (free space, or --svd-cache DIR)"
                )
                warnings.warn(f"SVD cache not written: {self.unsaved}", stacklevel=3)
            return
        with replacing(path) as tmp:
            save_file({k: np.ascontiguousarray(v) for k, v in w_svd._asdict().items()}, tmp)

    def stats(self) -> dict:
        """What the cache did: its folder, decompositions reused and computed."""
        folder = None if self.dir is None else str(self.dir)
        return {"dir": folder, "reused": self.reused, "computed": self.computed}

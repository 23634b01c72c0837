"""Each process's share of every global batch, so that P processes reading b examples each see,
together, exactly the batches one process reading b * P sees (same seed), row for row.

Global batch k is the examples k*b*P .. (k+1)*b*P - 1 of the one-process order, and process i
reads the i-th block of b of them. Put side by side in process order (what
`jax.make_array_from_process_local_data` does) they are the one-process batch: the same loss,
the same dropout masks, the same predictions in the same order. A finite order (an eval pass)
is filled up to whole global batches with repeats of its last example, so that every process
runs the same steps on the same shapes; gathered predictions past `len(source)` are those
repeats.
"""

from __future__ import annotations

import math
from typing import Any

import grain


class BlockSampler:
    """A Grain sampler that gives each of `shard_count` shards its block of `batch_size` of
    every global batch of `base` (a sampler over the global order, unsharded); with `fill`
    the last global batch is filled up with repeats of the last entry, else dropped.

    Grain's DataLoader asks shard i for the indices i, i + P, i + 2P, ...: the n-th of them
    is the shard's n-th example.
    """

    def __init__(self, base: Any, batch_size: int, shard_count: int, *, fill: bool) -> None:
        self._base, self._block, self._shards = base, batch_size, shard_count
        self._last = len(base) - 1
        global_batch = batch_size * shard_count
        # Without `fill` the last partial global batch is dropped (a training stream, which
        # may be endless: its length is sys.maxsize, and len() may not exceed it).
        batches = math.ceil(len(base) / global_batch) if fill else len(base) // global_batch
        self._len = batches * global_batch

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:  # Grain compares it with a checkpoint's sampler
        return f"BlockSampler({self._base!r}, block={self._block}, shards={self._shards})"

    def __getitem__(self, index: int) -> grain.RecordMetadata:
        if not 0 <= index < self._len:
            raise IndexError(f"index {index} outside 0..{self._len - 1}")
        n, shard = divmod(index, self._shards)
        step, row = divmod(n, self._block)
        meta = self._base[min((step * self._shards + shard) * self._block + row, self._last)]
        return grain.RecordMetadata(index=index, record_key=meta.record_key, rng=meta.rng)

"""Orbax checkpoints of the trainable state (adapters, head, optimizer, step, data iterator).

The frozen base is never saved: it comes back from the pretrained checkpoint. Saves are
synchronous, so every checkpoint is complete before the process can exit (an async save
lost at exit is a known Orbax pitfall).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Save and restore array state, JSON metadata and a Grain iterator's position together."""

    def __init__(self, directory: str | Path, keep: int = 2) -> None:
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=False
        )
        self._manager = ocp.CheckpointManager(Path(directory).absolute(), options=options)

    @property
    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(
        self, step: int, state: dict[str, Any], data_iterator: Any, meta: dict[str, Any]
    ) -> None:
        """Save arrays `state`, JSON `meta` and the data iterator's position at `step`."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            meta=ocp.args.JsonSave(meta),
            data=grain.checkpoint.CheckpointSave(data_iterator),
        )
        self._manager.save(step, args=args, force=True)
        self._manager.wait_until_finished()

    def restore(self, like: dict[str, Any], data_iterator: Any) -> tuple[dict, dict] | None:
        """Restore the latest (state, meta) with `state` shaped like `like`; None if none.

        The data iterator is moved, in place, to where it was when the checkpoint was saved.
        """
        step = self.latest_step
        if step is None:
            return None
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract),
                meta=ocp.args.JsonRestore(),
                data=grain.checkpoint.CheckpointRestore(data_iterator),
            ),
        )
        return restored["state"], restored["meta"]

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

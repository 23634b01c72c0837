"""Orbax checkpoints of the trainable state (adapters, head, optimizer, step, data iterator).

The frozen base is never saved: it comes back from the pretrained checkpoint. Saves are
synchronous, so every checkpoint is complete before the process can exit (an async save
lost at exit is a known Orbax pitfall). A step that cannot be restored (an empty or partial
step folder, truncated or garbled state or metadata) is moved to `<dir>_damaged/` with a
warning, and the next newest is restored instead.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


def _distributed_barriers() -> None:
    """Orbax's barriers between processes through the JAX distributed client (a key-value
    wait with a timeout) instead of a compiled all-reduce per barrier (~18 per save, 0.5 s
    each on a busy CPU, and no timeout). The switch is an absl flag of Orbax's."""
    from absl import flags

    if not flags.FLAGS.is_parsed():  # outside an absl app: defaults, as Grain's workers need
        flags.FLAGS.mark_as_parsed()
    flags.FLAGS.experimental_orbax_use_distributed_barrier = True


class Checkpointer:
    """Save and restore array state, JSON metadata and a Grain iterator's position together."""

    def __init__(self, directory: str | Path, keep: int = 2) -> None:
        if jax.process_count() > 1:
            _distributed_barriers()
        self.directory = Path(directory).absolute()
        self._options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=False
        )
        self._manager = ocp.CheckpointManager(self.directory, options=self._options)

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

    def restore(
        self, like: dict[str, Any], data_iterator: Any, max_step: int | None = None
    ) -> tuple[dict, dict] | None:
        """Restore the newest intact (state, meta), at most at `max_step`, with `state` shaped
        like `like`; None if there is none. Damaged steps are moved aside with a warning
        (module docstring).

        The data iterator is moved, in place, to where it was when the checkpoint was saved.
        """
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        start = data_iterator.get_state()  # a failed restore may have moved it
        steps = [s for s in self._manager.all_steps() if max_step is None or s <= max_step]
        for step in sorted(steps, reverse=True):
            try:
                restored = self._manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract),
                        meta=ocp.args.JsonRestore(),
                        data=grain.checkpoint.CheckpointRestore(data_iterator),
                    ),
                )
                meta = restored["meta"]
                if not isinstance(meta, dict) or meta.get("step") != step:
                    raise ValueError(f"its metadata does not name step {step}: {meta!r:.200}")
            except Exception as err:  # any damage: Orbax, TensorStore, JSON, Grain errors
                self._set_aside(step, err)
                data_iterator.set_state(start)
                continue
            return restored["state"], meta
        return None

    def discard_after(self, step: int) -> None:
        """Delete the checkpoints newer than `step`: a run rolled back to `step` (a fused
        group whose member's newest checkpoint was damaged) trains and saves them again."""
        for later in self._manager.all_steps():
            if later > step:
                self._manager.delete(later)

    def _set_aside(self, step: int, err: Exception) -> None:
        """Move the damaged `step` out of the manager's folder (kept for inspection; a later
        save of that step would collide with it) and reopen the manager."""
        damaged = self.directory.with_name(f"{self.directory.name}_damaged")
        damaged.mkdir(exist_ok=True)
        target = damaged / str(step)
        if target.exists():
            shutil.rmtree(target)
        shutil.move(self.directory / str(step), target)
        reason = " ".join(str(err).split())[:300]
        warnings.warn(
            f"checkpoint step {step} in {self.directory} is damaged "
            f"({type(err).__name__}: {reason}); moved it to {target} and trying the next "
            "newest step.",
            stacklevel=3,
        )
        self._manager.close()
        self._manager = ocp.CheckpointManager(self.directory, options=self._options)

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

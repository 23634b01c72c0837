"""Run tracking: a local `history.jsonl` always, and W&B (offline unless the user says online).

Nothing here waits on a network: unless `WANDB_MODE` or `logger.mode` says otherwise, W&B
runs offline and its files land in `<run_dir>/wandb/`. `wandb sync` uploads them later.
The mode is also set on wandb's process-wide settings (`wandb.setup`): with offline given only
to `wandb.init`, wandb 0.31's usage telemetry still resolves and posts to its server from a
background thread, which costs ~15 s at exit where DNS never answers.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from lora_jax.runs.files import write_atomic
from lora_jax.runs.layout import RunFolder

WANDB_MODES = ("offline", "online", "disabled")


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic | np.ndarray) or hasattr(value, "item"):
        return np.asarray(value).item() if np.ndim(value) == 0 else np.asarray(value).tolist()
    return value


def wandb_mode(configured: str | None) -> str:
    """The W&B mode to use: the configured one, else `$WANDB_MODE`, else offline."""
    mode = configured or os.environ.get("WANDB_MODE") or "offline"
    if mode not in WANDB_MODES:
        raise ValueError(f"logger.mode={mode!r} is not valid; allowed: {', '.join(WANDB_MODES)}.")
    return mode


def _drop_cut_line(path: Path) -> None:
    """Cut a partial last line (a kill mid-write) off `path`, so appended rows start on a
    line of their own instead of gluing onto the fragment."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


class Tracker:
    """Log scalars to `<run_dir>/history.jsonl` and, when enabled, to a W&B run.

    Args:
        run_dir: the run folder (W&B files go to `run_dir/wandb`).
        backend: "wandb" or "none".
        config: the resolved run config, logged as W&B config.
        name, group, project, entity, mode, tags: W&B run settings.
        write: False logs nothing (the other processes of a multi-process run).
    """

    def __init__(
        self,
        run_dir: str | Path,
        backend: str = "wandb",
        *,
        config: Mapping[str, Any] | None = None,
        name: str | None = None,
        group: str | None = None,
        project: str = "lora_jax",
        entity: str | None = None,
        mode: str | None = None,
        tags: list[str] | None = None,
        job_type: str = "train",
        write: bool = True,
    ) -> None:
        if backend not in ("wandb", "none"):
            raise ValueError(f"logger.backend={backend!r} is not valid; allowed: wandb, none.")
        self.run_dir = Path(run_dir)
        self.wandb_run = None
        self._history = None
        self._write_failed = False  # history.jsonl could not be written (a full disk)
        if not write:  # another process of a multi-process run: process 0 logs
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        history = RunFolder(self.run_dir).history
        _drop_cut_line(history)
        self._history = open(history, "a")  # noqa: SIM115 (closed in finish)
        if backend == "wandb":
            import wandb

            mode = wandb_mode(mode)
            # Process-wide, before init: see the module docstring (telemetry's name lookup).
            wandb.setup(settings=wandb.Settings(mode=mode))
            id_file = RunFolder(self.run_dir).wandb_id
            run_id = id_file.read_text().strip() if id_file.exists() else ""
            if not run_id:  # none yet, or an empty file left by a kill
                run_id = uuid.uuid4().hex[:8]
                write_atomic(id_file, run_id)
            self.wandb_run = wandb.init(
                project=project,
                entity=entity,
                group=group,
                name=name,
                tags=tags or None,
                job_type=job_type,
                config=dict(config or {}),
                dir=str(self.run_dir),
                id=run_id,
                resume="allow",
                mode=mode,
                reinit="create_new",
                settings=wandb.Settings(silent=True, console="off"),
            )

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        if self._history is None:
            return
        row = {k: _plain(v) for k, v in metrics.items()}
        with self._naming_the_file():
            self._history.write(json.dumps({"step": step, **row}) + "\n")
            self._history.flush()
        if self.wandb_run is not None:
            self.wandb_run.log(row, step=step)

    def log_curves(self, rows: Mapping[int, Mapping[str, Any]], x: str) -> None:
        """Log `rows` ({x value: {key: value}}) as curves against their own axis `x` (a key
        such as `dynamics/step`), not W&B's step: a resumed run (a re-analysis) appends them
        again, where W&B would drop rows whose step is not past its last one. Every key shares
        `x`'s prefix; `history.jsonl` gets each row with `step` = its x value."""
        if self._history is None:
            return
        prefix = x.rsplit("/", 1)[0]
        if self.wandb_run is not None:
            self.wandb_run.define_metric(x)
            self.wandb_run.define_metric(f"{prefix}/*", step_metric=x)
        for at, row in rows.items():
            plain = {k: _plain(v) for k, v in row.items()}
            with self._naming_the_file():
                self._history.write(json.dumps({"step": at, **plain}) + "\n")
            if self.wandb_run is not None:
                self.wandb_run.log({x: at, **plain})
        with self._naming_the_file():
            self._history.flush()

    def log_images(self, images: Mapping[str, str | Path]) -> None:
        """Log PNG files as W&B images (ignored without W&B)."""
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.log({k: wandb.Image(str(v)) for k, v in images.items()})

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        """Log a W&B table (ignored without W&B)."""
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.log(
                {name: wandb.Table(columns=columns, data=[[_plain(v) for v in r] for r in rows])}
            )

    def summary(self, values: Mapping[str, Any]) -> None:
        if self.wandb_run is not None:
            self.wandb_run.summary.update({k: _plain(v) for k, v in values.items()})

    @contextmanager
    def _naming_the_file(self) -> Iterator[None]:
        """An OSError writing history.jsonl names it (a flush's error names no file)."""
        try:
            yield
        except OSError as err:
            self._write_failed = True
            if err.filename is not None:
                raise
            path = str(RunFolder(self.run_dir).history)
            raise OSError(err.errno, err.strerror, path) from None

    def finish(self) -> None:
        if self._history is not None:
            history, self._history = self._history, None
            try:
                history.close()
            except OSError:
                if not self._write_failed:  # else reported where the write failed
                    raise
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()

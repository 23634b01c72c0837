"""User errors at the command line: one message and exit status 2 (a traceback too only with
`HYDRA_FULL_ERROR=1`, Hydra's own switch), and the check that an output folder can be written.
Standard library and the run-folder layout only, so `experiments.analyze --adapters` starts
without Hydra or JAX."""

from __future__ import annotations

import errno
import os
import shutil
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lora_jax.runs.layout import RunFolder

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, NotADirectoryError)
EXIT_USER_ERROR = 2  # argparse's status for bad arguments
# A full disk otherwise surfaces mid-run as an OSError from Orbax; the size of a run's files
# is known only after the model loads, so this is a floor (MiniLM, full fine-tuning: ~280 MB).
MIN_FREE = 256 * 2**20


def full_error() -> bool:
    """Whether the user asked for tracebacks (`HYDRA_FULL_ERROR=1`, read as Hydra reads it)."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


@contextmanager
def user_errors(
    context: str = "", errors: tuple[type[BaseException], ...] = USER_ERRORS
) -> Iterator[None]:
    """Turn `errors` raised inside into `Error<context>: <message>` on stderr and exit status 2.

    A `SystemExit` also gets through a Hydra callback, which turns exceptions into warnings.
    """
    try:
        yield
    except errors as err:
        if full_error():
            traceback.print_exc()
        cause = err.__cause__
        # Hydra's composition errors say which override; OmegaConf's cause says what is wrong.
        detail = f"\n{cause}" if type(cause).__module__.startswith("omegaconf") else ""
        print(f"Error{context}: {err}{detail}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None


# Out of space: a full disk, a quota, or a file-size limit (`ulimit -f`).
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def no_space_message(err: OSError, run_dir: str | Path) -> str:
    """Which file could not be written, the space there and what a checkpoint needs, and what
    is saved: the newest checkpoint the rerun resumes from."""
    run_dir = Path(run_dir)
    checkpoints = RunFolder(run_dir).checkpoints
    free = shutil.disk_usage(run_dir if run_dir.exists() else Path.cwd()).free
    head = (
        f"out of space writing {err.filename or f'a file in {run_dir}'} ({err.strerror}); "
        f"{free / 2**20:.0f} MiB free there"
    )
    steps = sorted(int(p.name) for p in checkpoints.glob("*") if p.name.isdigit() and p.is_dir())
    if not steps:
        return (
            f"{head}. Nothing is saved yet: free space (or choose another output folder) and "
            "run the same command again."
        )
    newest = RunFolder(run_dir).checkpoint(steps[-1])
    return (
        f"{head}, a checkpoint of this run takes {_size(newest) / 2**20:.1f} MiB. Saved: "
        f"checkpoint step {steps[-1]} in {newest.parent}. Free space (or move the folder) and "
        f"run the same command again to resume from step {steps[-1]}."
    )


class OutOfSpaceError(OSError):
    """A write failed for lack of space; the message says what is saved (`no_space_message`)."""


@contextmanager
def out_of_space(run_dir: str | Path) -> Iterator[None]:
    """A write that fails for lack of space inside: one message (`no_space_message`) and exit
    status 2 through `user_errors`, not a traceback; other OSErrors pass."""
    with user_errors(errors=(OutOfSpaceError,)):
        try:
            yield
        except OSError as err:
            if err.errno not in NO_SPACE:
                raise
            raise OutOfSpaceError(no_space_message(err, run_dir)) from err


def check_output_dir(path: str | Path, key: str, example: str, min_free: int = MIN_FREE) -> None:
    """Raise unless `path` is a folder, or can be made one, that this process may write to on
    a disk with `min_free` bytes free; the message names `key` and suggests `example`."""
    path = Path(path).absolute()
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(
            f"{key}={str(path)!r} is not valid: {existing} is a file; allowed: a folder that "
            f"exists or can be made. Use e.g. `{example}`."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(
            f"{key}={str(path)!r} is not valid: {existing} is not writable; allowed: a writable "
            f"folder. Use e.g. `{example}`."
        )
    free = shutil.disk_usage(existing).free
    if free < min_free:
        raise ValueError(
            f"{key}={str(path)!r} is not valid: its disk has {free / 2**20:.0f} MiB free; "
            f"allowed: a folder on a disk with at least {min_free / 2**20:.0f} MiB free (a "
            f"run's checkpoints and adapter). Free space, or use e.g. `{example}` elsewhere."
        )

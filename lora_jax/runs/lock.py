"""One writer per run or sweep folder: `<folder>/.lock` names the process that writes (host and
PID) for as long as it lives. A second process is refused before any work; a lock whose
process is gone (same host, PID not alive: a SIGKILL, a crash) is taken over. Processes of one
multi-process run share the lock of their process 0.

Across hosts on a shared file system the lock file is created with O_EXCL, which NFSv3+ and
Lustre honour, so two hosts cannot both take it; a dead process on another host cannot be
detected, so its lock is reported with the command that removes it.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lora_jax.runs.layout import LOCK_FILE


class FolderBusyError(ValueError):
    """Another live process writes into the folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def lock_folder(folder: str | Path, key: str) -> Path:
    """Take `folder`'s lock for the rest of this process (released at exit), or raise
    `FolderBusyError` naming the owner and the fix. Taking a lock this process holds is a no-op.
    `key` names the setting that chose the folder (`hydra.sweep.dir`), for the message."""
    folder = Path(folder).absolute()
    path = folder / LOCK_FILE
    me = _me()
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                owner = json.loads(path.read_text())
            except (OSError, ValueError):  # released, or half-written, right now: look again
                continue
            if owner == me:
                return path
            if owner.get("host") == me["host"] and not _alive(int(owner.get("pid", -1))):
                path.unlink(missing_ok=True)  # its process is gone: take it over
                continue
            where = "this host" if owner.get("host") == me["host"] else f"host {owner.get('host')}"
            raise FolderBusyError(
                f"{key}={str(folder)!r} is busy: process {owner.get('pid')} on {where} is "
                f"writing into it ({path}); allowed: a folder no other process writes. Wait "
                f"for it to finish, pick another {key}, or, if that process is gone, remove {path}."
            ) from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        atexit.register(_release, path, me)
        return path


@contextmanager
def folder_locked(folder: str | Path, key: str) -> Iterator[Path]:
    """`lock_folder` for the block only: released when it ends, however it ends (a lock this
    process held before stays held)."""
    path = Path(folder).absolute() / LOCK_FILE
    me = _me()
    held = _owner(path) == me
    lock_folder(folder, key)
    try:
        yield path
    finally:
        if not held:
            _release(path, me)


def unlock_folder(folder: str | Path) -> None:
    """Release `folder`'s lock if this process holds it (else nothing)."""
    _release(Path(folder).absolute() / LOCK_FILE, _me())


def _me() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _owner(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _release(path: Path, me: dict) -> None:
    if _owner(path) == me:
        path.unlink(missing_ok=True)

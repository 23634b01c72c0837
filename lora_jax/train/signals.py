"""SIGTERM and SIGINT as a checkpoint: the step loop finishes its step, saves it, says where it
stopped and how to resume, and exits with 128 + the signal (143 for SIGTERM, as SLURM and cloud
preemption send it before SIGKILL; 130 for Ctrl-C): the shell's convention, which SLURM's
`--requeue` treats as a failed job to requeue. A second signal while saving exits at once:
Orbax writes a step into a temporary folder and renames it, so the newest intact checkpoint
stays and the rerun resumes from it.

Work with no step to finish (the analysis after a sweep, a report) stops at once instead
(`stop_at_once`): every file it writes is replaced atomically, so each holds the old content or
the new, and the message names the command that redoes it."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(SystemExit):
    """Training stopped by a signal after `step`, checkpointed; exit status 128 + signal."""

    def __init__(self, signum: int, step: int | None = None) -> None:
        super().__init__(128 + signum)
        self.signum, self.step = signum, step


@contextmanager
def _signals_to(handler) -> Iterator[None]:
    """SIGTERM/SIGINT go to `handler` inside the block, to the previous handlers after it.
    Outside the main thread (where Python cannot take signals) the defaults stay."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def stop_requests() -> Iterator[list[int]]:
    """A list that receives SIGTERM/SIGINT instead of the default handlers, for the loop to
    read between steps; a second signal exits at once. Outside the main thread the list stays
    empty and the defaults apply."""
    received: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if received:  # a second one: stop now, the newest intact checkpoint stays
            os._exit(128 + signum)
        received.append(signum)

    with _signals_to(handler):
        yield received


@contextmanager
def stop_at_once(
    what: str, redo: str = "the files it had written are whole; run the same command again"
) -> Iterator[None]:
    """SIGTERM/SIGINT inside: stop where the work is, print `<SIGNAL>: <what> stopped; <redo>`
    and exit 128 + signal (`Interrupted`, no traceback); a second signal exits at once."""

    def handler(signum: int, frame: object) -> None:
        for s in SIGNALS:  # while unwinding, a second signal ends the process
            signal.signal(s, lambda n, f: os._exit(128 + n))
        raise Interrupted(signum)

    try:
        with _signals_to(handler):
            yield
    except Interrupted as stop:
        name = signal.Signals(stop.signum).name
        print(f"[lora_jax] {name}: {what} stopped; {redo}", file=sys.stderr, flush=True)
        raise

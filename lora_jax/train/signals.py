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

import _thread
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


class _StopAtOnce:
    """The handler of `stop_at_once`: the first signal raises `Interrupted` where the work is,
    a second one exits at once. Python swallows what a handler raises when it runs inside a gc
    callback or a `__del__` ("Exception ignored in"; JAX registers a gc callback), so the
    unraisable hook re-delivers such an `Interrupted` from a timer thread once the finalizer
    has returned; a re-delivery is not a second signal."""

    REDELIVER_AFTER_S = 0.01

    def __init__(self) -> None:
        self.signum: int | None = None
        self.redelivery: threading.Timer | None = None
        self.previous_hook = sys.unraisablehook

    def __call__(self, signum: int, frame: object) -> None:
        if self.signum is not None and self.redelivery is None:
            os._exit(128 + signum)  # a second signal while unwinding
        self.signum, self.redelivery = signum, None
        raise Interrupted(signum)

    def unraisable(self, unraisable) -> None:
        if not isinstance(unraisable.exc_value, Interrupted):
            return self.previous_hook(unraisable)
        self.redelivery = threading.Timer(
            self.REDELIVER_AFTER_S, _thread.interrupt_main, (unraisable.exc_value.signum,)
        )
        self.redelivery.start()

    def close(self) -> None:
        """Back to the previous hook; a swallowed signal whose re-delivery found no work left to
        stop still ends the process with its status."""
        sys.unraisablehook = self.previous_hook
        if self.redelivery is not None:
            self.redelivery.cancel()
            raise Interrupted(self.signum)


@contextmanager
def stop_at_once(
    what: str, redo: str = "the files it had written are whole; run the same command again"
) -> Iterator[None]:
    """SIGTERM/SIGINT inside: stop where the work is, print `<SIGNAL>: <what> stopped; <redo>`
    and exit 128 + signal (`Interrupted`, no traceback); a second signal exits at once."""
    handler = _StopAtOnce()
    sys.unraisablehook = handler.unraisable
    try:
        with _signals_to(handler):
            try:
                yield
            finally:
                handler.close()
    except Interrupted as stop:
        name = signal.Signals(stop.signum).name
        print(f"[lora_jax] {name}: {what} stopped; {redo}", file=sys.stderr, flush=True)
        raise

"""`stop_at_once` when the signal's handler runs inside a finalizer, where Python swallows what
it raises (CI once saw JAX's gc callback eat the analysis's SIGTERM, which then ran to the end
and exited 0)."""

import os
import signal
import time

import pytest

from lora_jax.train.signals import Interrupted, stop_at_once


class _SignalledWhileFinalizing:
    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # bytecodes, at which the handler runs inside this finalizer
            pass


def test_an_interrupt_swallowed_by_a_finalizer_still_stops_the_work(capsys):
    reached = []
    with pytest.raises(Interrupted) as stop, stop_at_once("the analysis"):
        _SignalledWhileFinalizing()  # dropped at once: __del__ runs here
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # work that the signal should cut short
            pass
        reached.append("the end of the work")
    assert stop.value.code == 128 + signal.SIGTERM and reached == []
    err = capsys.readouterr().err
    assert "SIGTERM: the analysis stopped" in err and "Exception ignored" not in err, err


def test_a_swallowed_interrupt_at_the_end_of_the_work_still_sets_the_exit_status(capsys):
    with pytest.raises(Interrupted) as stop, stop_at_once("the report"):
        _SignalledWhileFinalizing()  # the work ends before the re-delivery
    assert stop.value.code == 128 + signal.SIGTERM
    assert "SIGTERM: the report stopped" in capsys.readouterr().err


def test_a_signal_outside_a_finalizer_stops_the_work_where_it_is(capsys):
    with pytest.raises(Interrupted) as stop, stop_at_once("the report"):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):
            pass
        pytest.fail("the work went on after the signal")
    assert stop.value.code == 128 + signal.SIGINT
    assert "SIGINT: the report stopped" in capsys.readouterr().err

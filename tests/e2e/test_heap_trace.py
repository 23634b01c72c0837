"""`benchmarks/heap_trace.py`: a real training run's heap, step by step, under an allocator
setting of the Makefile."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from benchmarks.heap_trace import growths, heap_mb

linux = pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallinfo2 and /proc")


def test_growths_are_the_steps_where_the_heap_grew_by_at_least_the_threshold():
    heaps = [200, 400, 850, 850, 1300, 860, 1310, 1350]
    records = [{"step": i, "event": "after step", "heap_mb": h} for i, h in enumerate(heaps)]
    assert [g["step"] for g in growths(records, at_least_mb=100)] == [1, 2, 4, 6]
    assert growths(records, at_least_mb=100)[2]["heap_mb"] == [850, 1300]
    assert growths(records, at_least_mb=500) == []


@linux
def test_heap_counts_a_block_while_it_is_held():
    before = heap_mb()["in_use_mb"]
    block = np.ones(64 * 2**20 // 8)  # 64 MB from malloc
    assert heap_mb()["in_use_mb"] - before >= 60
    del block


@linux
@pytest.mark.slow
def test_trace_of_a_real_run_records_every_step_compile_evaluation_and_checkpoint():
    from benchmarks.heap_trace import trace
    from benchmarks.real_run import makefile_setting

    result = trace(makefile_setting("FAST_MALLOC"), steps=2, growth_mb=100)
    records = result["records"]
    events = [(r["step"], r["event"]) for r in records if r["event"] != "compile"]
    for step in (1, 2):
        assert (step, "before step") in events and (step, "after step") in events
    assert (2, "before eval") in events and (2, "after checkpoint") in events
    assert any(r["event"] == "compile" and r["program"] == "jit(train_step)" for r in records)
    assert result["peak_rss_mb"] == max(r["peak_mb"] for r in records) > 300
    assert all(r["in_use_mb"] <= r["heap_mb"] for r in records)
    assert result["time_split_s"]["steps"] > 0

"""A run's time split (`lora_jax.train.time_split`) and the sweep's line about it."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lora_jax.stages import time_split_line
from lora_jax.train.memory import peak_rss_mb
from lora_jax.train.time_split import TimeSplit


def test_phases_and_other_sum_to_the_wall_time_and_compiles_count_apart():
    clock = TimeSplit()
    with clock.phase("steps"):
        time.sleep(0.05)
    # A program no cache has (a fresh shape from the clock): XLA compiles it inside "eval".
    n = 3 + int(time.time_ns() % 997)
    with clock.phase("eval"):
        jax.jit(lambda x: jnp.sin(x) @ x.T)(np.ones((n, 5), np.float32)).block_until_ready()
    time.sleep(0.02)  # between phases: "other"
    split, wall = clock.seconds(), clock.wall()
    assert set(split) == {"steps", "eval", "compile", "other"}
    assert sum(split.values()) == pytest.approx(wall, abs=0.01)
    assert split["steps"] >= 0.05 and split["other"] >= 0.02
    assert split["compile"] > 0  # taken out of eval's time, not added to it
    assert split["eval"] >= 0


def test_the_sweep_line_gives_each_phase_median_and_the_overhead_over_the_steps():
    runs = [
        {"time_split_s": {"steps": 10.0, "compile": 2.0, "eval": 1.0, "other": 0.0}},
        {"time_split_s": {"steps": 20.0, "compile": 4.0, "eval": 3.0, "other": 1.0}},
        {"time_split_s": {"steps": 30.0, "compile": 0.0, "eval": 2.0, "other": 1.0}},
        {"status": "complete"},  # a run from before the split: left out
    ]
    line = time_split_line(runs)
    assert "(median of 3)" in line
    assert "compile 2.0 s, eval 2.0 s, other 1.0 s, steps 20.0 s" in line
    assert "beyond the steps: 25% of the step time" in line  # (2 + 2 + 1) / 20
    assert "peak" not in line  # runs from before `peak_rss_mb`
    assert time_split_line([{"status": "complete"}]) is None


def test_a_fused_run_counts_its_share_of_its_groups_time():
    group = {"steps": 80.0, "compile": 8.0, "eval": 4.0}  # one clock for the four members
    runs = [{"time_split_s": group, "engine": "fused", "fused_members": 4} for _ in range(4)]
    line = time_split_line(runs)
    assert "compile 2.0 s, eval 1.0 s, steps 20.0 s" in line
    assert "beyond the steps: 15% of the step time" in line  # (2 + 1) / 20, as for the group


def test_the_sweep_line_gives_the_largest_peak_memory_of_its_runs():
    runs = [{"time_split_s": {"steps": 10.0}, "peak_rss_mb": mb} for mb in (1100, 1585, 1200)]
    assert time_split_line(runs).endswith("; peak resident memory 1,585 MB")


def test_peak_rss_is_the_kernels_figure_and_sees_memory_this_process_touches():
    before = peak_rss_mb()
    block = np.ones(64 * 2**20 // 8)  # 64 MB, every page written
    after = peak_rss_mb()
    assert after >= before
    assert after >= block.nbytes / 2**20  # the process holds at least this block

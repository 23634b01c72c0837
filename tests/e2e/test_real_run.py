"""`make bench`'s real-run memory comparison (`benchmarks/real_run.py`): a real training run of
ours under both allocator settings of the Makefile and PEFT's doing the same work, each a fresh
process measured by `wait4`, cut to 2 steps."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.interop


def test_real_run_measures_both_sides_under_the_makefile_settings():
    from benchmarks.real_run import makefile_setting, real_run

    result = real_run(steps=2, eval_every=1, rounds=1)
    fast = makefile_setting("FAST_MALLOC")
    assert result["allocators"]["FAST_MALLOC"] == fast and "arena_max=1" in fast
    jobs = {(j["side"], j["allocator"]): j for j in result["jobs"]}
    assert set(jobs) == {
        ("ours", "FAST_MALLOC"),
        ("ours", "LEAN_MALLOC"),
        ("peft", "glibc default"),
    }
    peft = jobs[("peft", "glibc default")]
    assert len(peft["accuracies"]) == 2 and all(0.3 < a < 0.8 for a in peft["accuracies"])
    for job in jobs.values():  # a real process: a model, a runtime and data are hundreds of MB
        assert 300 < job["peak_rss_mb"] < 8000 and 0 < job["steps_s"] < job["wall_s"]
    ours = result["summary"]["ours FAST_MALLOC"]
    assert ours["ratio_peak_rss_ours_over_peft"] == pytest.approx(
        jobs[("ours", "FAST_MALLOC")]["peak_rss_mb"] / peft["peak_rss_mb"]
    )

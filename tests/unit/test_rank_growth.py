"""The rank-growth exponent β (stable rank ∝ r^β) on exact power laws: the slope per seed, the
mean and t interval over seeds, and the report's fits per matrix type over a synthetic sweep."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
from conftest import write_run

from lora_jax.analysis.rank_growth import fit_line, growth_exponent
from lora_jax.report.cells import group_cells
from lora_jax.report.sections.rank_used import rank_growth_fits
from lora_jax.runs.record import read_runs

RANKS = (1, 4, 16, 64)


def slope(by_rank: dict[int, float]) -> float:
    """One seed's exponent: the slope of `fit_line`."""
    return fit_line(by_rank)[0]


def test_slope_of_a_power_law_is_its_exponent():
    assert slope({r: 3.0 * r**0.27 for r in RANKS}) == pytest.approx(0.27)
    assert slope({r: 2.0 for r in RANKS}) == pytest.approx(0.0, abs=1e-12)  # no growth
    assert slope({r: float(r) for r in RANKS}) == pytest.approx(1.0)  # every rank used


def test_r_squared_says_when_one_power_law_does_not_fit():
    assert fit_line({r: 3.0 * r**0.27 for r in RANKS})[1] == pytest.approx(1.0)
    peaked = {1: 1.0, 4: 1.9, 16: 2.0, 64: 1.6, 256: 1.4}  # rises, then falls (MiniLM's shape)
    ref = scipy.stats.linregress(np.log(list(peaked)), np.log(list(peaked.values())))
    assert fit_line(peaked) == pytest.approx((ref.slope, ref.rvalue**2))
    assert fit_line(peaked)[1] < 0.5


def test_slope_needs_two_usable_ranks():
    assert fit_line({4: 2.0}) is None
    assert fit_line({1: 0.0, 4: 2.0}) is None  # a zero update has no logarithm
    assert slope({1: math.nan, 4: 2.0, 16: 3.0}) == pytest.approx(math.log(1.5) / math.log(4))


def test_exponent_over_seeds_is_the_mean_slope_with_a_t_interval():
    betas = {0: 0.20, 1: 0.25, 2: 0.33}
    fit = growth_exponent({s: {r: (1 + s) * r**b for r in RANKS} for s, b in betas.items()})
    assert fit["beta"] == pytest.approx(sum(betas.values()) / 3)
    assert fit["per_seed"] == pytest.approx(betas)
    expected = scipy.stats.t.interval(
        0.95, 2, loc=fit["beta"], scale=scipy.stats.sem(list(betas.values()))
    )
    assert fit["ci"] == pytest.approx(list(expected))
    assert (fit["seeds"], fit["ranks"], fit["r_squared"]) == (3, list(RANKS), pytest.approx(1.0))


def test_one_seed_has_no_interval_and_no_usable_seed_no_fit():
    fit = growth_exponent({0: {r: r**0.5 for r in RANKS}})
    assert fit["beta"] == pytest.approx(0.5) and fit["ci"] is None and fit["sd"] is None
    assert growth_exponent({0: {8: 2.0}}) is None


def test_report_fits_each_matrix_type_and_all_matrices(tmp_path):
    """q grows as r^0.25, v as r^0.5 (k@90 as r^0.75 for both), in two layers and three
    seeds; the fits recover each exponent, the ALL row the median's."""
    runs = {}
    for r in RANKS:
        for seed in (0, 1, 2):
            name = f"rank={r},seed={seed}"
            write_run(tmp_path, name, rank=r, seed=seed)
            c = 1 + 0.1 * seed  # each seed its own constant: the slope ignores it
            runs[name] = {
                "adapters": {
                    f"layer_{i}/{t}": {"stable_rank": c * r**b, "energy_rank_90": c * r**0.75}
                    for i in (0, 1)
                    for t, b in (("q", 0.25), ("v", 0.5))
                }
            }
    write_run(tmp_path, "full", rank=0, full_finetune=True)  # not a LoRA: left out
    cells = group_cells(read_runs(tmp_path))
    fits = {(f["measure"], f["matrix"]): f for f in rank_growth_fits(cells, {"runs": runs})}
    assert fits[("stable_rank", "q")]["beta"] == pytest.approx(0.25)
    assert fits[("stable_rank", "v")]["beta"] == pytest.approx(0.5)
    assert fits[("energy_rank_90", "q")]["beta"] == pytest.approx(0.75)
    # ALL: the median of 2 q and 2 v values = c (r^0.25 + r^0.5) / 2, not a power law
    mid = {r: (r**0.25 + r**0.5) / 2 for r in RANKS}
    assert fits[("stable_rank", "all")]["beta"] == pytest.approx(slope(mid))
    assert {f["seeds"] for f in fits.values()} == {3}
    assert all(f["ci"][0] == pytest.approx(f["beta"]) for f in fits.values())  # no spread

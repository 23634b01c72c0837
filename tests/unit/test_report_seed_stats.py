"""Seed statistics in the report, on cases with known answers: the mean and spread of known
values, the bootstrap interval of three seeds (exactly their range), t-test p-values from the
t distribution's closed forms, and the report of a synthetic sweep with planted differences."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.integrate
from conftest import write_run

from lora_jax.report import group_cells, make_report
from lora_jax.report.cells import Stats
from lora_jax.report.render.document import Table
from lora_jax.report.seed_stats import compare, summarize
from lora_jax.runs.record import read_runs


def _t_sf_df2(t: float) -> float:
    """P(T > t) for Student's t with 2 degrees of freedom (closed form)."""
    return 0.5 * (1 - t / math.sqrt(t * t + 2))


def _t_sf(t: float, df: float) -> float:
    """P(T > t) by integrating the t density (no scipy.stats)."""
    c = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
    density = lambda x: c * (1 + x * x / df) ** (-(df + 1) / 2)  # noqa: E731
    return scipy.integrate.quad(density, t, math.inf)[0]


def test_mean_std_and_the_three_seed_interval():
    s = summarize(Stats((0, 1, 2), (0.70, 0.71, 0.72)))
    assert s.n == 3 and s.mean == pytest.approx(0.71) and s.std == pytest.approx(0.01)
    # Resampling 3 values, the mean is the smallest value with probability 1/27 > 2.5% (and
    # the largest likewise), so the 95% percentile interval is exactly [min, max].
    assert (s.ci_low, s.ci_high) == pytest.approx((0.70, 0.72))


def test_interval_narrows_with_seeds_and_holds_the_mean():
    rng = np.random.default_rng(1)
    values = rng.normal(0.8, 0.01, size=30)
    s = summarize(Stats(tuple(range(30)), tuple(values)))
    assert s.ci_low < values.mean() < s.ci_high
    # The normal-theory half width is 1.96 sd / sqrt(n); the bootstrap's is close to it.
    half = 1.96 * values.std(ddof=1) / math.sqrt(30)
    assert (s.ci_high - s.ci_low) / 2 == pytest.approx(half, rel=0.2)


def test_fewer_than_three_seeds_give_no_statistics():
    assert summarize(Stats((0, 1), (0.7, 0.8))) is None
    assert compare(Stats((0, 1), (0.7, 0.8)), Stats((0, 1), (0.7, 0.9))) is None


def test_identical_seeds_have_a_point_interval():
    s = summarize(Stats((0, 1, 2), (0.5, 0.5, 0.5)))
    assert (s.std, s.ci_low, s.ci_high) == (0.0, 0.5, 0.5)


def test_paired_p_value_matches_the_closed_form():
    a = Stats((0, 1, 2), (0.70, 0.70, 0.70))
    b = Stats((0, 1, 2), (0.71, 0.72, 0.73))  # differences 0.01, 0.02, 0.03
    c = compare(a, b)
    t = 0.02 / (0.01 / math.sqrt(3))  # mean / (sd / sqrt(n)) = 3.464
    assert c.paired and c.n == 3 and c.diff == pytest.approx(0.02)
    assert c.p == pytest.approx(2 * _t_sf_df2(t), rel=1e-9)  # 0.0742: not a difference
    assert not c.significant


def test_unpaired_seeds_use_welch_with_its_degrees_of_freedom():
    a = Stats((0, 1, 2), (0.70, 0.71, 0.72))
    b = Stats((3, 4, 5), (0.74, 0.75, 0.76))  # no shared seed; equal sd 0.01, n = 3 each
    c = compare(a, b)
    t = 0.04 / math.sqrt(0.01**2 / 3 + 0.01**2 / 3)
    # Welch-Satterthwaite with equal variances and sizes: df = 2 (n - 1) = 4.
    assert not c.paired and c.p == pytest.approx(2 * _t_sf(t, 4), rel=1e-6)
    assert c.significant


def _sweep(root, values: dict[int, list[float]]):
    for rank, per_seed in values.items():
        for seed, v in enumerate(per_seed):
            write_run(root, f"rank={rank},seed={seed}", rank=rank, seed=seed, best=v, final=v)
    return root


def test_report_states_means_intervals_and_verdicts(tmp_path):
    sweep = _sweep(
        tmp_path,
        {1: [0.70, 0.71, 0.72], 2: [0.745, 0.775, 0.755], 8: [0.75, 0.77, 0.76]},
    )
    make_report(sweep, use_wandb=False)
    md = (sweep / "report.md").read_text()
    section = md.split("## Seed statistics")[1].split("\n## ")[0]
    assert "| rank=1 | accuracy (%) | 3 | 71.00 ± 1.00 | [70.00, 72.00] |" in section
    assert "| rank=8 | accuracy (%) | 3 | 76.00 ± 1.00 | [75.00, 77.00] |" in section
    # r=1 is 5 points below r=8 on every seed pair (differences -0.05, -0.06, -0.04).
    p1 = 2 * _t_sf_df2(0.05 / (0.01 / math.sqrt(3)))
    assert (
        f"rank=1 is lower than rank=8 (best) by 5.00 points (paired t-test over 3 seeds, "
        f"p = {p1:.2g})" in section
    )
    assert "rank=8 (best) vs rank=2: within seed noise" in section
    assert "mean and 95% bootstrap CI" in md  # the figure's caption says what the bars are


def test_target_sets_at_one_parameter_budget_are_compared_whatever_rank_each_bought(tmp_path):
    """`lora.budget_rank`: attention only at r=9 against every matrix at r=4 (equal parameters)
    differ in rank and targets, and are still one comparison; without a budget they are not."""
    attention, every = ("q", "k", "v", "o"), ("q", "k", "v", "o", "ffn_in", "ffn_out")
    for root, budget in ((tmp_path / "budget", 4), (tmp_path / "free", None)):
        for targets, rank, values in (
            (attention, 9, [0.77, 0.78, 0.76]),
            (every, 4, [0.79, 0.80, 0.79]),
        ):
            for seed, v in enumerate(values):
                name = f"targets={''.join(targets)},seed={seed}"
                write_run(
                    root,
                    name,
                    rank=rank,
                    targets=targets,
                    seed=seed,
                    best=v,
                    final=v,
                    budget_rank=budget,
                )
        make_report(root, use_wandb=False)
    budgeted = (tmp_path / "budget" / "report.md").read_text().split("## Seed statistics")[1]
    # differences -0.02, -0.02, -0.03: mean -0.02333, sd 0.005774
    p = 2 * _t_sf_df2((0.07 / 3) / (0.005774 / math.sqrt(3)))
    assert (
        f"| targets (at equal parameters) | - | Wq,Wk,Wv,Wo, rank=9 is lower than "
        f"Wq,Wk,Wv,Wo,Wffn_in,Wffn_out, rank=4 (best) by 2.33 points (paired t-test over 3 "
        f"seeds, p = {p:.2g}) |" in budgeted
    )
    free = (tmp_path / "free" / "report.md").read_text().split("## Seed statistics")[1]
    assert "at equal parameters" not in free and "(best)" not in free.split("\n## ")[0]


def test_one_seed_sweeps_say_that_nothing_can_be_told(tmp_path):
    sweep = _sweep(tmp_path, {1: [0.70], 8: [0.76]})
    assert len(group_cells(read_runs(sweep))) == 2
    make_report(sweep, use_wandb=False)
    section = (sweep / "report.md").read_text().split("## Seed statistics")[1]
    assert "No cell has 3 or more seeds" in section and "seed=0,1,2" in section


def test_phi_across_seeds_beside_the_random_spread(tmp_path):
    """Fig. 4's spread table: mean phi over seed pairs x layers against the random draws."""
    from lora_jax.report.sections import analysis_tables

    for seed in (0, 1, 2):
        write_run(tmp_path, f"seed={seed}", rank=2, seed=seed)
    grid = lambda top: [[top, 0.1], [0.1, 0.1]]  # noqa: E731  mean (top + 0.3) / 4
    pair = lambda a, b, top: {  # noqa: E731
        "runs": [str(tmp_path / f"seed={a}"), str(tmp_path / f"seed={b}")],
        "seeds": [a, b],
        "phi": {"layer_0/q": grid(top)},
        "random_baseline": grid(0.01),
        "expected_random_mean": 0.005,
        "random_mean_draws": [0.01, 0.03],
        "figure": "absent.png",
    }
    analysis = {"runs": {}, "seed_pairs": [pair(0, 1, 0.9), pair(0, 2, 0.5)]}
    (tmp_path / "analysis.json").write_text(json.dumps(analysis))
    blocks = analysis_tables.fig4(group_cells(read_runs(tmp_path)), tmp_path)
    (spread,) = [
        b for b in blocks if isinstance(b, Table) and "random Gaussian pairs" in b.columns[3]
    ]
    # ours: mean phi 0.3 and 0.2 -> 0.25 ± 0.0707; random: 0.02 ± 0.0141; ratio 12.5.
    assert spread.rows == [["2", "Wq", "0.2500 ± 0.0707 (n=2)", "0.0200 ± 0.0141 (n=2)", "12.5x"]]


def test_wq_against_wv_is_counted_over_every_seed_pair(tmp_path):
    """Fig. 4's Wq-above-Wv verdict over seed pairs: a count, the mean and range of the
    differences of the per-pair medians, and no test (the pairs share seeds)."""
    from lora_jax.report.sections import analysis_tables

    for seed in (0, 1, 2):
        write_run(tmp_path, f"seed={seed}", rank=64, seed=seed)
    # mean phi of [[top, 0], [0, 0]] is top / 4
    grid = lambda top: [[top, 0.0], [0.0, 0.0]]  # noqa: E731
    pair = lambda a, b, q, v: {  # noqa: E731
        "runs": [str(tmp_path / f"seed={a}"), str(tmp_path / f"seed={b}")],
        "seeds": [a, b],
        "phi": {"layer_0/q": grid(q), "layer_0/v": grid(v)},
        "random_baseline": grid(0.01),
        "expected_random_mean": 0.005,
        "random_mean_draws": [0.01],
        "figure": "absent.png",
    }
    # Wq - Wv per pair: (0.8 - 0.4) / 4 = +0.1, (0.4 - 0.8) / 4 = -0.1, (1.0 - 0.2) / 4 = +0.2
    pairs = [pair(0, 1, 0.8, 0.4), pair(0, 2, 0.4, 0.8), pair(1, 2, 1.0, 0.2)]
    (tmp_path / "analysis.json").write_text(json.dumps({"runs": {}, "seed_pairs": pairs}))
    blocks = analysis_tables.fig4(group_cells(read_runs(tmp_path)), tmp_path)
    (line,) = [b for b in blocks if isinstance(b, str) and b.startswith("**Over ")]
    assert not any(isinstance(b, str) and b.startswith("**Ours, Wq vs Wv") for b in blocks)
    assert line == (
        "**Over 3 seed pairs at r=64:** Wq above Wv in 2 of 3 (mixed: the sign depends on the "
        "seeds); Wq − Wv in median mean phi +0.067 on average, [-0.100, +0.200] over the pairs "
        "(pairs share seeds, so no test)."
    )

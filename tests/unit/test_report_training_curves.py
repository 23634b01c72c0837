"""The learning-rate and rsLoRA sections of the report, on synthetic sweeps whose metrics,
losses and gradient norms are known: the best rate per method, the LoRA/full ratio, the
scaling table and the figures."""

from __future__ import annotations

import numpy as np
import scipy.stats
from conftest import write_run

from lora_jax.report import make_report
from lora_jax.report.sections.training_curves import best_rate, fitted_optimum, smoothed, tail_mean


def _train_rows(loss0: float, grad0: float) -> list[dict]:
    return [
        {"step": s, "train/loss": loss0 / s, "train/grad_norm_lora": grad0 * (1 + s / 100)}
        for s in (1, 2, 3, 4)
    ]


def _write_grid(sweep, grid: dict, seeds: tuple[int, ...]) -> dict:
    """One run per (rank, full FT) x lr x seed: grid[(rank, full)] = ({lr: acc}, per_seed), the
    best metric acc + per_seed * seed. Returns {(full, lr, seed): best metric}."""
    values = {}
    for (rank, full), (by_lr, per_seed) in grid.items():
        for lr, acc in by_lr.items():
            for seed in seeds:
                values[(full, lr, seed)] = acc + per_seed * seed
                write_run(
                    sweep,
                    f"rank={rank},full={full},lr={lr},seed={seed}",
                    rank=rank,
                    full_finetune=full,
                    lr=lr,
                    seed=seed,
                    best=values[(full, lr, seed)],
                    train_rows=_train_rows(1.0 / acc, 1.0),
                )
    return values


def _section(md: str, title: str) -> str:
    return md.split(f"## {title}")[1].split("\n## ")[0]


def test_best_learning_rate_per_rank_and_full_finetuning(tmp_path):
    # LoRA peaks at 1e-3 for both ranks, full fine-tuning at 1e-4: a 10x ratio.
    grid = {
        (1, False): {1e-4: 0.70, 1e-3: 0.76, 1e-2: 0.72},
        (4, False): {1e-4: 0.71, 1e-3: 0.77, 1e-2: 0.73},
        (0, True): {1e-5: 0.74, 1e-4: 0.80, 1e-3: 0.60},
    }
    # seed 1 is 0.01 above seed 0: mean over seeds acc + 0.005
    _write_grid(tmp_path, {key: (by_lr, 0.01) for key, by_lr in grid.items()}, seeds=(0, 1))
    make_report(tmp_path, use_wandb=False)
    md = (tmp_path / "report.md").read_text()
    section = _section(md, "Learning rate against rank")
    header = (
        "| method | lr=1e-05 | lr=0.0001 | lr=0.001 | lr=0.01 | best lr | fitted "
        "| train loss at best |"
    )
    assert header in section
    # Fitted optimum: the vertex of the parabola through three equally spaced points (x = log10
    # lr, step 1) lies at x_mid + (y+ - y-) / (2 (2 y_mid - y- - y+)) decades.
    lora_x = -3 + (0.725 - 0.705) / (2 * (2 * 0.765 - 0.705 - 0.725))  # -2.9 (r=1 and r=4 alike)
    full_x = -4 + (0.605 - 0.745) / (2 * (2 * 0.805 - 0.745 - 0.605))  # -4.27
    # Train loss at the best rate: the last quarter of 4 logged steps is the last, loss0 / 4.
    row = "| r=1 | - | 70.50 | 76.50 | 72.50 | 0.001 | {:.2g} | {:.4f} |"
    assert row.format(10**lora_x, 1 / 0.76 / 4) in section
    row = "| r=4 | - | 71.50 | 77.50 | 73.50 | 0.001 | {:.2g} | {:.4f} |"
    assert row.format(10**lora_x, 1 / 0.77 / 4) in section
    row = "| full fine-tuning | 74.50 | 80.50 | 60.50 | - | 0.0001 | {:.2g} | {:.4f} |"
    assert row.format(10**full_x, 1 / 0.8 / 4) in section
    ratio = f"{10 ** (lora_x - full_x):.2g}x"
    assert f"by rank: 10x, 10x (fitted optima: {ratio}, {ratio})" in section
    assert (tmp_path / "figures" / "learning_rate_vs_rank.png").stat().st_size > 0
    assert "## Scaling" not in md  # scaling did not vary


def test_each_rank_at_its_best_rate_against_full_finetuning_at_its_own(tmp_path):
    """With 3 seeds at the best rates, each rank at its best rate gets a verdict against full
    fine-tuning at its best rate: a paired t-test over the shared seeds."""
    grid = {
        (1, False): ({1e-4: 0.70, 1e-3: 0.76, 1e-2: 0.72}, 0.01),
        (0, True): ({1e-5: 0.74, 1e-4: 0.80, 1e-3: 0.60}, 0.02),
    }
    values = _write_grid(tmp_path, grid, seeds=(0, 1, 2))
    make_report(tmp_path, use_wandb=False)
    section = _section((tmp_path / "report.md").read_text(), "Learning rate against rank")
    lora = [values[(False, 1e-3, s)] for s in (0, 1, 2)]
    full = [values[(True, 1e-4, s)] for s in (0, 1, 2)]
    p = scipy.stats.ttest_rel(lora, full).pvalue  # differences -4, -5, -6 points
    assert (
        f"r=1 at lr=0.001 is lower than full FT at lr=0.0001 by 5.00 points (paired t-test over "
        f"3 seeds, p = {p:.2g})." in section
    )


def test_rates_run_on_different_seeds_compare_on_the_seeds_they_share(tmp_path):
    """1e-4 has seeds 0-2 (mean 80), 3e-4 seeds 0-1 (mean 81): on their shared seeds 0 and 1,
    1e-4 is better (82 vs 81), so it is the best rate, although its mean over all seeds is lower.
    The fit goes through the seed all three points share (seed 0); cells say their seeds."""
    accs = {1e-5: [0.74], 1e-4: [0.83, 0.81, 0.76], 3e-4: [0.82, 0.80], 1e-3: [0.60]}
    for lr, by_seed in accs.items():
        for seed, acc in enumerate(by_seed):
            write_run(
                tmp_path,
                f"full,lr={lr},seed={seed}",
                rank=0,
                full_finetune=True,
                lr=lr,
                seed=seed,
                best=acc,
                train_rows=_train_rows(1.0, 1.0),  # loss 1/step: 0.25 at the last of 4 steps
            )
    values = {lr: dict(enumerate(v)) for lr, v in accs.items()}
    assert best_rate(values) == 1e-4
    assert max(values, key=lambda lr: np.mean(list(values[lr].values()))) == 3e-4
    make_report(tmp_path, use_wandb=False)
    section = _section((tmp_path / "report.md").read_text(), "Learning rate against rank")
    fit = fitted_optimum({1e-5: 0.74, 1e-4: 0.83, 3e-4: 0.82})
    assert (
        "| full fine-tuning | 74.00 (n=1) | 80.00 (n=3) | 81.00 (n=2) | 60.00 (n=1) | 0.0001 "
        f"| {fit:.2g} | 0.2500 |"
    ) in section


def test_best_rate_for_a_lower_is_better_metric():
    values = {1e-4: {0: 2.0, 1: 2.2}, 1e-3: {0: 1.9}, 1e-2: {1: 2.1}}
    # 1e-3 beats 1e-4 on seed 0 (1.9 < 2.0) and shares no seed with 1e-2 (1.9 < 2.1 overall).
    assert best_rate(values, pick=min) == 1e-3


def test_scaling_section_shows_the_gradient_collapse(tmp_path):
    # alpha/r: the adapter gradient falls as 1/r; alpha/sqrt(r): as 1/sqrt(r).
    for rank in (1, 4, 16):
        for scaling, grad in (("alpha_over_r", 1.0 / rank), ("alpha_over_sqrt_r", rank**-0.5)):
            write_run(
                tmp_path,
                f"rank={rank},scaling={scaling}",
                rank=rank,
                scaling=scaling,
                train_rows=_train_rows(0.5, grad),
            )
    make_report(tmp_path, use_wandb=False)
    section = _section((tmp_path / "report.md").read_text(), "Scaling")
    # First 3 logged steps: grad * (1.01 + 1.02 + 1.03) / 3 = 1.02 grad; the last quarter of the
    # 4 logged losses is the last, 0.5 / 4.
    assert "| 16 | alpha_over_r | 80.00 | 0.1250 | 0.0638 |" in section
    assert "| 16 | alpha_over_sqrt_r | 80.00 | 0.1250 | 0.255 |" in section
    assert "train/grad_norm_lora, first 3 logged steps" in section
    assert "train loss, last 25% of steps" in section
    assert (tmp_path / "figures" / "scaling_vs_rank.png").stat().st_size > 0


def test_fitted_optimum_is_the_vertex_in_log_lr():
    # An exact parabola in log10(lr) peaking at 2e-3: three points give its vertex exactly.
    peak = np.log10(2e-3)
    grid = {lr: 0.8 - (np.log10(lr) - peak) ** 2 for lr in (1e-4, 1e-3, 3e-3, 1e-2)}
    assert np.isclose(fitted_optimum(grid), 2e-3)
    # A loss (lower is better) with its minimum at 5e-4.
    loss = {lr: 0.3 + (np.log10(lr) - np.log10(5e-4)) ** 2 for lr in (1e-4, 3e-4, 1e-3)}
    assert np.isclose(fitted_optimum(loss, min), 5e-4)
    assert fitted_optimum({1e-4: 0.7, 1e-3: 0.8}) is None  # best at the grid's edge
    assert fitted_optimum({1e-4: 0.8, 1e-3: 0.7, 1e-2: 0.6}) is None
    # Two tied best rates: the optimum halfway between them in log(lr).
    assert np.isclose(fitted_optimum({1e-4: 0.7, 1e-3: 0.8, 1e-2: 0.8}), 10**-2.5)


def test_tail_mean_and_trailing_mean_by_hand():
    values = np.arange(1.0, 21.0)  # 1..20
    assert tail_mean(values) == np.mean([16, 17, 18, 19, 20])  # the last 25%: 5 of 20
    assert tail_mean(np.array([3.0])) == 3.0 and tail_mean(np.array([])) is None
    smooth, window = smoothed(values)
    assert window == 2  # 10% of 20
    np.testing.assert_allclose(smooth, [1.0, *(np.arange(2, 21) - 0.5)])
    assert smoothed(np.array([4.0, 8.0]))[1] == 1  # too few logs to smooth

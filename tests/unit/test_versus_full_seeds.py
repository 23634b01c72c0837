"""The report's LoRA-vs-full summary over seeds, on a constructed analysis with known means,
spreads and paired differences."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from lora_jax.report.render.document import Table
from lora_jax.report.sections.versus_full_seeds import per_method, versus_full_over_seeds

FULL_ACC = {0: 0.80, 1: 0.82, 2: 0.81}
LORA_ACC = {0: 0.78, 1: 0.80, 2: 0.79}  # 2 points below full FT on every seed
FULL_FORGET = {0: 0.80, 1: 0.82, 2: 0.84}
LORA_FORGET = {0: 0.70, 1: 0.75, 2: 0.71}


def _entry(seed: int) -> dict:
    def matrices(intruders):  # three matrices; intruder counts at epsilons 0.3, 0.5, 0.7
        return {f"layer_{i}/q": {"intruders": [0, n, 9]} for i, n in enumerate(intruders)}

    def record(full, acc, forget):
        out = {"rank": 0 if full else 4, "full_finetune": full, "metric": "accuracy"}
        out |= {"value": acc, "forgetting": forget}
        return out | ({"truncation": {"rank_for_90": 8 + seed}} if full else {})

    return {
        "run": f"full,seed={seed}",
        "seed": seed,
        "epsilons": [0.3, 0.5, 0.7],
        "matrices": matrices([0, 0, 1]),
        "lora": {f"r4,seed={seed}": {"rank": 4, "matrices": matrices([2, 3, 5])}},
        "model_evals": {
            "forgetting_measure": "1 - Spearman",
            "runs": {
                f"full,seed={seed}": record(True, FULL_ACC[seed], FULL_FORGET[seed]),
                f"r4,seed={seed}": record(False, LORA_ACC[seed], LORA_FORGET[seed]),
            },
        },
    }


def test_per_method_collects_each_quantity_by_seed():
    methods = per_method({"versus_full": [_entry(s) for s in (2, 0, 1)]})
    assert list(methods) == ["full FT", "LoRA r=4"]
    assert methods["full FT"]["value"] == FULL_ACC
    assert methods["full FT"]["rank_for_90"] == {0: 8, 1: 9, 2: 10}
    assert methods["full FT"]["intruders"] == {0: 0, 1: 0, 2: 0}  # median of 0, 0, 1 at 0.5
    assert methods["LoRA r=4"]["intruders"] == {0: 3, 1: 3, 2: 3}
    assert "rank_for_90" not in methods["LoRA r=4"]


def test_table_and_verdicts_over_three_seeds():
    blocks = versus_full_over_seeds({"versus_full": [_entry(s) for s in (0, 1, 2)]})
    table, verdicts = blocks
    assert isinstance(table, Table) and isinstance(verdicts, Table)
    full, lora = table.rows
    assert full[:3] == ["full FT", "3", "81.00 ± 1.00"]
    assert full[3] == f"{np.mean(list(FULL_FORGET.values())):.3g} ± 0.02"
    assert full[4] == "9 ± 1" and lora[4] == "-" and lora[5] == "3 ± 0"
    accuracy, forgetting = verdicts.rows
    # The same 2-point difference on every seed: no noise to compare against.
    assert accuracy[1].startswith("LoRA r=4 is lower than full FT by 2.00 points (paired")
    p = scipy.stats.ttest_rel(
        list(LORA_FORGET.values()), list(FULL_FORGET.values())
    ).pvalue  # the reference implementation of the paired test
    assert forgetting[1].startswith("LoRA r=4 is lower than full FT by 0.10 (paired")
    assert f"p = {p:.2g}" in forgetting[1]


@pytest.mark.parametrize("seeds", [(0,), (0, 1)])
def test_nothing_below_three_seeds(seeds):
    assert versus_full_over_seeds({"versus_full": [_entry(s) for s in seeds]}) == []


def test_norm_ratio_is_the_median_over_shared_matrices():
    """LoRA's ||B·A||_F over the full update's, matrix by matrix: 0.1, 0.2 and 0.6 (a matrix
    only LoRA adapts is left out), median 0.2; in the table as that over seeds."""
    entry = _entry(0)
    for i, full_norm in enumerate((10.0, 5.0, 2.0)):
        entry["matrices"][f"layer_{i}/q"]["frobenius"] = full_norm
    lora = {f"layer_{i}/q": {"frobenius": x} for i, x in enumerate((1.0, 1.0, 1.2))}
    lora["layer_9/v"] = {"frobenius": 50.0}
    analysis = {"versus_full": [entry], "runs": {"r4,seed=0": {"adapters": lora}}}
    from lora_jax.report.sections.versus_full_seeds import norm_ratio

    assert norm_ratio(analysis, entry, "r4,seed=0") == pytest.approx(0.2)
    assert norm_ratio(analysis, entry, "not analysed") is None
    assert per_method(analysis)["LoRA r=4"]["norm_ratio"] == {0: pytest.approx(0.2)}

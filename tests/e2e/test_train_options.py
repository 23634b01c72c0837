"""The run options that the paper's experiments need: epochs, warmup steps, a parameter
budget, and starting from another run's adapter (MRPC from MNLI)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import CONF, FAST, FIXTURES, call_main
from hydra import compose, initialize_config_dir

from lora_jax import models
from lora_jax.adapter_io import export_adapter, init_adapters
from lora_jax.analysis.adapter_spectra import find_adapters
from lora_jax.budget import budget_rank, lora_param_count, solve_rank
from lora_jax.config import check_config, register_configs, run_config
from lora_jax.lora import LoRAConfig
from lora_jax.partition import label_params, split
from lora_jax.train import epochs_to_steps, lr_schedule, plan

register_configs()


def _composed(*overrides: str):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", list(overrides))


def _config(*overrides: str):
    return run_config(_composed(*overrides))


def test_epochs_become_steps_with_an_evaluation_per_epoch() -> None:
    cfg = epochs_to_steps(_config("trainer.epochs=3", "data.batch_size=32"), train_size=100)
    # 100 // 32 = 3 full batches per epoch (the last partial batch is dropped).
    assert (cfg.trainer.steps, cfg.trainer.eval_every, cfg.trainer.checkpoint_every) == (9, 3, 3)
    unchanged = _config("trainer.steps=7")
    assert epochs_to_steps(unchanged, train_size=100).trainer.steps == 7
    with pytest.raises(
        ValueError, match=re.escape("data.batch_size=32 exceeds the 20 training examples")
    ):
        epochs_to_steps(_config("trainer.epochs=1"), train_size=20)
    with pytest.raises(ValueError, match=re.escape("trainer.epochs=0")):
        plan(_config("trainer.epochs=0"))


def test_warmup_steps_override_the_ratio() -> None:
    schedule = lr_schedule(1.0, 100, warmup_ratio=0.5, warmup_steps=10)
    np.testing.assert_allclose([schedule(5), schedule(10), schedule(55)], [0.5, 1.0, 0.5])


def test_budget_solver_on_known_shapes() -> None:
    square = {t: (384, 384) for t in "qkvo"} | {"ffn_in": (384, 1536)}
    budget = lora_param_count(square, "q", 8, num_layers=6)
    assert budget == 8 * 768 * 6
    assert [solve_rank(square, t, budget, 6) for t in ("q", "qv", "qkvo")] == [8, 4, 2]
    # 36,864 / (6 x (384 + 1536)) = 3.2: the largest rank within the budget is 3.
    assert solve_rank(square, "ffn_in", budget, 6) == 3
    # Without shapes (an uncached hub model) only square attention targets can be solved.
    assert budget_rank(None, "qkvo", 8, "q") == 2
    with pytest.raises(ValueError, match="ffn_in need the model's shapes"):
        budget_rank(None, "ffn_in", 8, "q")
    with pytest.raises(ValueError, match="does not buy rank 1"):
        solve_rank(square, "qkvo", budget // 10, 6)
    # Through the config: the run's rank comes from the budget, not from `rank`.
    cfg = _config("model=tiny_bert", "lora.budget_rank=8", "targets=qkvo", "rank=64")
    assert plan(cfg).lora.rank == 2


def _trainable(rank: int, seed: int, targets: str = "qv"):
    pre = models.load_model(
        "tiny_bert", LoRAConfig(rank=rank, targets=targets), num_labels=2, rng=jax.random.key(seed)
    )
    labels = label_params(pre.params, trainable=pre.head_rules)
    return pre, split(pre.params, labels).trainable


def test_init_adapters_loads_an_exported_adapter(tmp_path: Path) -> None:
    pre, trained = _trainable(rank=2, seed=0)
    # Give B non-zero values, as after training (it starts at zero).
    trained = jax.tree_util.tree_map_with_path(
        lambda p, x: x + 0.5 if p[-1].key == "lora_b" else x, trained
    )
    export_adapter(tmp_path / "adapter", trained, LoRAConfig(rank=2), pre)
    _, fresh = _trainable(rank=2, seed=1)
    loaded = init_adapters(fresh, tmp_path)  # a run folder holding adapter/ works too
    for key, (a, b) in find_adapters(trained).items():
        np.testing.assert_array_equal(find_adapters(loaded)[key][0], a)
        np.testing.assert_array_equal(find_adapters(loaded)[key][1], b)
    with pytest.raises(ValueError, match="allowed: the same rank"):
        init_adapters(_trainable(rank=4, seed=1)[1], tmp_path)
    with pytest.raises(ValueError, match="allowed: the same targets"):
        init_adapters(_trainable(rank=2, seed=1, targets="q")[1], tmp_path)
    with pytest.raises(FileNotFoundError, match=re.escape("lora.init_from=")):
        plan(_config("model=tiny_bert", f"lora.init_from={tmp_path / 'missing'}"))


@pytest.mark.slow
def test_epochs_and_init_from_through_the_entry_point(tmp_path: Path) -> None:
    first = tmp_path / "first"
    # The MR sentences kept as local files: 96 training rows, batch 16 gives 6 steps per epoch.
    mr_rows = ["data=local", f"data.path={FIXTURES / 'local_mr' / 'jsonl'}"]
    mr_rows.append("data.columns.text=sentence")
    args = [*FAST, *mr_rows, "data.batch_size=16", "trainer.epochs=2", "rank=2"]
    call_main("experiments.train", *args, f"hydra.run.dir={first}", cwd=tmp_path)
    metrics = json.loads((first / "metrics.json").read_text())
    assert metrics["steps"] == 12
    history = [json.loads(line) for line in (first / "history.jsonl").read_text().splitlines()]
    assert sorted({row["step"] for row in history if "eval/accuracy" in row}) == [6, 12]

    second = tmp_path / "second"
    call_main(
        "experiments.train",
        *args,
        f"lora.init_from={first}",
        f"hydra.run.dir={second}",
        cwd=tmp_path,
    )
    assert json.loads((second / "metrics.json").read_text())["status"] == "complete"
    assert f"init_from: {first}" in (second / "config.yaml").read_text()

    budget = tmp_path / "budget"
    call_main(
        "experiments.train",
        *FAST,
        "trainer.steps=2",
        "targets=qkvo",
        "lora.budget_rank=8",
        f"hydra.run.dir={budget}",
        cwd=tmp_path,
    )
    # The rank the budget gives (8 on one type = 2 on four) is the one recorded everywhere.
    assert json.loads((budget / "metrics.json").read_text())["rank"] == 2
    assert "  rank: 2\n" in (budget / "config.yaml").read_text()


def test_sgd_with_momentum_trains_a_tiny_run(tmp_path: Path) -> None:
    """`optim=sgd` (conf/optim/sgd.yaml): a run trains with optax's SGD, one momentum per
    trainable scalar in its optimizer state (AdamW keeps two)."""
    run = tmp_path / "sgd"
    call_main("experiments.train", *FAST, "optim=sgd", f"hydra.run.dir={run}", cwd=tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "complete" and np.isfinite(metrics["final"]["accuracy"])
    state = metrics["optimizer_state_bytes"]
    assert state == pytest.approx(4 * metrics["trainable_params"], abs=64)
    assert "name: sgd" in (run / "config.yaml").read_text()
    with pytest.raises(ValueError, match=re.escape("optim.name='lion' is not valid")):
        check_config(_composed("optim.name=lion"))

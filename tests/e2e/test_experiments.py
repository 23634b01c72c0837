"""Every experiment file (conf/experiment/) composes, expands to the grid it promises, and
passes the same validation a sweep runs before its first job (`train.plan`)."""

from __future__ import annotations

import math

import pytest
from conftest import CONF, compose_jobs
from omegaconf import OmegaConf

from lora_jax.config import run_config
from lora_jax.train import plan

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
# Post-paper experiments that exist at CPU scale only (their point is the small-scale answer).
POST_PAPER_CPU_ONLY = {
    *("rslora", "lr_vs_rank", "rank_advice", "rank_growth", "attention_vs_all", "decoder_findings"),
}
PAPER_ITEMS = {"table2", "table3", "table5", "table6", "table7", "table18", "fig3", "fig4"}


def _jobs(name: str, *overrides: str) -> list:
    return compose_jobs(f"experiment={name}", *overrides)


def _resolved(job) -> dict:
    """The job's own config, resolved (Hydra's `${hydra:...}` needs a running job)."""
    keys = [k for k in job if k not in ("hydra", "workdir")]
    return OmegaConf.to_container(OmegaConf.masked_copy(job, keys), resolve=True)


def test_there_is_a_cpu_and_a_full_scale_file_for_each_table() -> None:
    cpu = {n.removesuffix("_cpu") for n in EXPERIMENTS if n.endswith("_cpu")}
    assert cpu == {
        *("table2", "table3", "table5", "table6", "table7", "table18", "fig3_fig4"),
        # Not paper items: the questions that came after the paper.
        *("lora_vs_full", "rslora", "lr_vs_rank", "rank_advice"),
        *("rank_growth", "attention_vs_all", "decoder_findings"),
    }
    for item in cpu - POST_PAPER_CPU_ONLY:
        assert any(n.startswith(item) and not n.endswith("_cpu") for n in EXPERIMENTS), item


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_validates(name: str) -> None:
    text = (CONF / "experiment" / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_\n")
    header = text.split("\n\n")[0]  # the leading comment: its command and expected result
    assert f"python -m experiments.sweep experiment={name}" in header
    assert "Expect" in header

    jobs = _jobs(name)
    params = jobs[0].hydra.sweeper.params
    assert len(jobs) == math.prod(len(str(v).split(",")) for v in params.values())
    for job in jobs:
        cfg = _resolved(job)
        assert set(cfg["paper"]) <= PAPER_ITEMS
        assert cfg["paper"] or name.startswith(("lora_vs_full", *POST_PAPER_CPU_ONLY))
        if cfg["lora"]["init_from"]:  # MRPC/RTE/STS-B: stops before training without MNLI
            with pytest.raises(FileNotFoundError, match="glue_mnli"):
                plan(run_config(job))
        else:
            plan(run_config(job))


@pytest.mark.slow
def test_table2_takes_each_tasks_settings_from_table9() -> None:
    cells = {}
    for job in _jobs("table2_glue"):
        cfg = _resolved(job)
        cells[cfg["data"]["task"]] = (
            cfg["data"]["batch_size"],
            cfg["trainer"]["epochs"],
            cfg["optim"]["lr"],
            cfg["alpha"],
            cfg["rank"],
        )
    # The paper's Table 9 (RoBERTa-base), as ../shared/FACTS.md quotes it.
    assert cells["glue_mnli"] == (16, 30, 5e-4, 8, 8)
    assert cells["glue_cola"] == (32, 80, 4e-4, 8, 8)
    assert cells["glue_qnli"] == (32, 25, 4e-4, 8, 8)
    large = {
        _resolved(j)["data"]["task"]: _resolved(j)
        for j in _jobs("table2_glue", "model=roberta_large")
    }
    assert large["glue_mnli"]["alpha"] == 16 and large["glue_mnli"]["data"]["batch_size"] == 4
    assert _resolved(_jobs("table2_glue_scripts")[0])["alpha"] == 16


def test_from_mnli_starts_from_the_same_seeds_mnli_run() -> None:
    mnli = {
        _resolved(j)["seed"]: f"{j.hydra.sweep.dir}/{j.hydra.job.override_dirname}"
        for j in _jobs("table2_glue")
        if _resolved(j)["data"]["task"] == "glue_mnli"
    }
    assert len(mnli) == 5
    for job in _jobs("table2_glue_from_mnli"):
        cfg = _resolved(job)
        assert cfg["data"]["task"] in ("glue_mrpc", "glue_rte", "glue_stsb")
        assert cfg["lora"]["init_from"] == mnli[cfg["seed"]]


def test_table5_shares_one_budget() -> None:
    ranks = {}
    for job in _jobs("table5_cpu"):
        ranks[_resolved(job)["targets"]] = plan(run_config(job)).lora.rank
    # The paper's Table 5: rank 8 on one type = rank 4 on two = rank 2 on four.
    assert ranks == {"q": 8, "k": 8, "v": 8, "o": 8, "qk": 4, "qv": 4, "qkvo": 2}


def test_attention_only_gets_the_parameters_of_every_matrix_at_rank_4() -> None:
    ranks = {
        _resolved(j)["targets"]: plan(run_config(j)).lora.rank
        for j in _jobs("attention_vs_all_cpu")
    }
    # MiniLM per layer and rank: 4 x (384 + 384) on attention, 2 x (384 + 1536) more on the
    # FFN; 9 x 3,072 = 4 x 6,912 = 27,648 parameters per layer.
    assert ranks == {"qkvo": 9, "qkvo+ffn_in+ffn_out": 4}


@pytest.mark.parametrize("name", ["table7_cpu_long", "fig3_fig4_cpu_long"])
def test_long_experiments_keep_one_checkpoint_per_epoch_for_the_dynamics(name: str) -> None:
    """`trainer.epochs` checkpoints at the end of every epoch (`epochs_to_steps`), the last
    one at the last step; `keep_checkpoints` keeps them all, so the sweep's analysis draws
    the rank measurements over the whole training (`analysis.dynamics`)."""
    from lora_jax.train import epochs_to_steps
    from lora_jax.train.loop import Every

    for job in _jobs(name):
        epochs = job.trainer.epochs
        t = epochs_to_steps(run_config(job), train_size=8_484).trainer  # any train split size
        per_epoch = 8_484 // job.data.batch_size
        assert (t.checkpoint_every, t.steps) == (per_epoch, epochs * per_epoch)
        saved: list[int] = []
        hook = Every(t.checkpoint_every, saved.append, last=t.steps)  # the loop's own hook
        for step in range(1, t.steps + 1):
            hook(step)
        assert saved == [per_epoch * (e + 1) for e in range(epochs)]
        assert t.keep_checkpoints >= epochs >= 2  # every epoch kept: a curve of `epochs` points

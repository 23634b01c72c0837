"""Run identity through the real entry points: a rerun or resume with another config stops
before any work (exit 2, one message, the folder unchanged); the same config skips or
resumes; `trainer.restart=true` trains the run again with the new config."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from conftest import FAST, FINISHED_RUN, call_main, compose_config

from lora_jax.config import run_config
from lora_jax.runs.layout import IDENTITY_FILE
from lora_jax.sweep.validate import check_jobs
from lora_jax.train.run_identity import RunIdentityError, claim, differences, identity


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _refused(proc, *keys: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "holds results of another config" in proc.stderr
    assert "hydra.run.dir=" in proc.stderr and "trainer.restart=true" in proc.stderr
    for key in keys:
        assert key in proc.stderr, proc.stderr


def test_identity_file_records_result_changing_keys(finished_run):
    recorded = json.loads((finished_run / IDENTITY_FILE).read_text())
    config = recorded["config"]
    assert config["lora.rank"] == 4 and config["trainer.steps"] == 20
    assert not any(k.startswith(("logger.", "hydra.")) for k in config)
    assert "trainer.progress" not in config and "workdir" not in config
    assert sorted(recorded["hydra"]) == ["config.yaml", "hydra.yaml", "overrides.yaml"]


def test_rerun_finished_with_other_rank_is_refused_and_changes_nothing(run_copy):
    before = _hashes(run_copy)
    proc = call_main(
        "experiments.train", *FINISHED_RUN, "rank=2", f"hydra.run.dir={run_copy}", cwd=run_copy.parent,
        check=False,
    )  # fmt: skip
    _refused(proc, "lora.rank: 4 -> 2")
    assert "[lora_jax] resuming" not in proc.stdout
    assert _hashes(run_copy) == before  # .hydra/*.yaml put back, config.yaml untouched


def test_rerun_without_debug_fast_is_refused(run_copy):
    before = _hashes(run_copy)
    args = ["model=tiny_bert", "logger=none", "rank=4", f"hydra.run.dir={run_copy}"]
    proc = call_main("experiments.train", *args, cwd=run_copy.parent, check=False)
    _refused(proc, "trainer.steps: 20 -> 200", "data.max_len: 32 -> 64")
    assert _hashes(run_copy) == before


def test_rerun_same_config_skips(run_copy):
    metrics = (run_copy / "metrics.json").read_bytes()
    # Logging, progress and checkpoint cadence do not change results.
    args = [*FINISHED_RUN, "logger=wandb", "trainer.progress=true", "trainer.checkpoint_every=5"]
    proc = call_main("experiments.train", *args, f"hydra.run.dir={run_copy}", cwd=run_copy.parent)
    assert "is complete; skipping" in proc.stdout
    assert (run_copy / "metrics.json").read_bytes() == metrics


def _killed_at_10(run_copy: Path) -> None:
    """The folder as a run killed between its checkpoints at steps 10 and 20 leaves it."""
    (run_copy / "metrics.json").unlink()
    shutil.rmtree(run_copy / "checkpoints" / "20")
    shutil.rmtree(run_copy / "adapter")


def test_resume_with_other_lr_is_refused(run_copy):
    _killed_at_10(run_copy)
    before = _hashes(run_copy)
    proc = call_main(
        "experiments.train", *FINISHED_RUN, "optim.lr=0.01", f"hydra.run.dir={run_copy}",
        cwd=run_copy.parent, check=False,
    )  # fmt: skip
    _refused(proc, "optim.lr: 0.001 -> 0.01")
    assert _hashes(run_copy) == before


def test_resume_with_other_clipping_is_refused_not_an_orbax_dump(run_copy):
    _killed_at_10(run_copy)
    proc = call_main(
        "experiments.train", *FINISHED_RUN, "optim.clip_norm=null", f"hydra.run.dir={run_copy}",
        cwd=run_copy.parent, check=False,
    )  # fmt: skip
    _refused(proc, "optim.clip_norm: 1.0 -> None")
    assert len(proc.stderr.splitlines()) < 12


def test_resume_same_config_resumes(run_copy):
    _killed_at_10(run_copy)
    proc = call_main(
        "experiments.train", *FINISHED_RUN, f"hydra.run.dir={run_copy}", cwd=run_copy.parent
    )
    assert "resuming run from step 10" in proc.stdout
    assert json.loads((run_copy / "metrics.json").read_text())["steps"] == 20


def test_restart_trains_again_with_the_new_config(run_copy):
    args = [*FINISHED_RUN, "rank=2", "trainer.restart=true", f"hydra.run.dir={run_copy}"]
    proc = call_main("experiments.train", *args, cwd=run_copy.parent)
    assert "trainer.restart=true: clearing" in proc.stdout
    assert json.loads((run_copy / "metrics.json").read_text())["rank"] == 2
    assert json.loads((run_copy / IDENTITY_FILE).read_text())["config"]["lora.rank"] == 2
    assert "rank: 2" in (run_copy / "config.yaml").read_text()
    # The same command again: the folder now matches, so it is skipped, not cleared.
    proc = call_main("experiments.train", *args, cwd=run_copy.parent)
    assert "is complete; skipping" in proc.stdout and "clearing" not in proc.stdout


def test_folder_from_before_run_identity_is_compared_with_config_yaml(run_copy):
    (run_copy / IDENTITY_FILE).unlink()
    proc = call_main(
        "experiments.train", *FINISHED_RUN, "optim.weight_decay=0.1", f"hydra.run.dir={run_copy}",
        cwd=run_copy.parent, check=False,
    )  # fmt: skip
    _refused(proc, "optim.weight_decay: 0.01 -> 0.1")


def test_sweep_rerun_without_debug_fast_is_refused(tmp_path):
    """`debug` is not in run-folder names: its values reach the identity check. A fused
    sweep checks every job before training any."""
    sweep_dir = tmp_path / "sw"
    args = ["rank=1,2", f"hydra.sweep.dir={sweep_dir}", "hydra/launcher=fused"]
    call_main("experiments.sweep", *FAST, *args, cwd=tmp_path)
    before = _hashes(sweep_dir)
    # Every job is checked before any trains, and each refused folder is listed.
    for launcher in ("hydra/launcher=fused", "hydra/launcher=basic"):
        proc = call_main(
            "experiments.sweep", "model=tiny_bert", *args[:2], launcher, cwd=tmp_path, check=False
        )
        _refused(proc, "trainer.steps: 20 -> 200")
        assert proc.stderr.count("holds results of another config") == 2
        assert _hashes(sweep_dir) == before  # multirun.yaml included: refused before Hydra


def test_differences_lists_old_and_new():
    old = identity({"lora": {"rank": 4}, "optim": {"lr": 1e-3}, "logger": {"mode": "x"}})
    new = identity({"lora": {"rank": 2}, "optim": {"lr": 1e-3}, "logger": {"mode": "y"}})
    assert differences(old, new, exact=True) == ["lora.rank: 4 -> 2"]


def test_check_jobs_before_hydra_makes_the_folder(finished_run):
    """What a validation callback calls before any job: the job's folder from its `hydra` node."""

    def job(*overrides: str):
        args = [*FINISHED_RUN, *overrides, f"hydra.run.dir={finished_run}"]
        return compose_config(*args, hydra=True)

    with pytest.raises(RunIdentityError, match=r"lora\.rank: 4 -> 2"):
        check_jobs([job("rank=2")], multirun=False)
    check_jobs([job("rank=2", "trainer.restart=true")], multirun=False)
    check_jobs([job("logger=wandb")], multirun=False)


def test_a_job_refused_after_hydra_rewrote_its_folder_puts_hydra_files_back(run_copy):
    """Launchers that start jobs without the validation pass: Hydra has rewritten `.hydra/`
    when the job's own check refuses; the files come back from `run_identity.json`."""
    before = _hashes(run_copy)
    cfg = run_config(compose_config(*FINISHED_RUN, "rank=2", f"workdir={run_copy}"))
    (run_copy / ".hydra" / "overrides.yaml").write_text("- rank=2\n")  # as Hydra's run_job does
    with pytest.raises(RunIdentityError, match=r"lora\.rank: 4 -> 2"):
        claim([(cfg, run_copy)])
    assert _hashes(run_copy) == before

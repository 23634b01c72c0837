"""The fused rank-sweep engine (`lora_jax.train.fused`, `hydra/launcher=fused`): every member of a
fused group ends as its separate run, within float tolerance.

Tolerance: A, B and the head within atol 1e-6 + rtol 1e-5, losses and gradient norms within
rtol 1e-5, after 20 AdamW steps. A member computes the same function of the same numbers as
its separate run; only the float32 rounding order differs (rank-padded matmuls, batched
matmuls under vmap, batches padded to another member's length, the scale applied to A
instead of the output), about 1e-7 relative per operation. Measured: at most 6e-8 on adapter
entries of size 0.5 (a few ulps), identical eval accuracies.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import ROOT, call_main
from hydra import compose, initialize_config_dir
from safetensors.numpy import load_file

from lora_jax import train
from lora_jax.config import register_configs, run_config
from lora_jax.peft_adapter import HEAD_FILE, read_adapter
from lora_jax.train import fused

# debug=fast; every batch max_len long so that seeds fuse, and head dropout on (as the
# encoder's, each member draws its own masks from its own keys).
FAST = ["model=tiny_bert", "debug=fast", "data.pad=max_len", "model.head_dropout=0.1"]
MEMBERS = [(1, 0), (4, 0), (2, 1)]  # (rank, seed): two ranks on one seed, a third on another
ATOL, RTOL = 1e-6, 1e-5


def _cfg(workdir: Path, rank: int, seed: int, *extra: str, base: list[str] = FAST):
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        overrides = [*base, "logger=none", f"rank={rank}", f"seed={seed}", *extra]
        return run_config(compose("config", [*overrides, f"workdir={workdir}"]))


def _name(rank: int, seed: int) -> str:
    return f"r{rank}_s{seed}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The members trained separately (train.run) and as one fused group."""
    root = tmp_path_factory.mktemp("fused")
    separate = {
        m: train.run(_cfg(root / "separate" / _name(*m), *m), root / "separate" / _name(*m))
        for m in MEMBERS
    }
    group = fused.FusedGroup([_cfg(root / "fused" / _name(*m), *m) for m in MEMBERS])
    results = dict(zip(MEMBERS, group.run(), strict=True))
    return root, separate, group, results


def _adapter(run_dir: Path) -> dict:
    adapters = read_adapter(run_dir / "adapter").factors
    head = load_file(run_dir / "adapter" / HEAD_FILE)
    return {**{f"{k}/{j}": v[j] for k, v in adapters.items() for j in (0, 1)}, **head}


def _history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


def _assert_same_run(a: Path, b: Path) -> None:
    """Two run folders hold the same results within the tolerance of the module docstring."""
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert ma["final"] == pytest.approx(mb["final"], abs=1e-6)
    assert ma["best"] == pytest.approx(mb["best"], abs=1e-6)
    for key in ("steps", "rank", "seed", "trainable_params", "total_params", "lora_params"):
        assert ma[key] == mb[key], key
    aa, ab = _adapter(a), _adapter(b)
    assert sorted(aa) == sorted(ab)
    for key in aa:
        assert aa[key].shape == ab[key].shape, key
        np.testing.assert_allclose(aa[key], ab[key], atol=ATOL, rtol=RTOL, err_msg=key)
    ha, hb = _history(a), _history(b)
    assert [sorted(r) for r in ha] == [sorted(r) for r in hb]
    for ra, rb in zip(ha, hb, strict=True):
        for key in ("train/loss", "train/grad_norm", "train/lr", "eval/accuracy"):
            if key in ra:
                assert ra[key] == pytest.approx(rb[key], rel=RTOL), (ra["step"], key)


@pytest.mark.slow
def test_each_member_equals_its_separate_run(runs):
    root, separate, _, results = runs
    for member in MEMBERS:
        result = results[member]
        assert not isinstance(result, Exception), result
        assert result["engine"] == "fused" and result["fused_members"] == len(MEMBERS)
        assert set(result) - set(separate[member]) == {"engine", "fused_members"}
        _assert_same_run(root / "separate" / _name(*member), root / "fused" / _name(*member))


@pytest.mark.slow
def test_vmapped_members_equal_separate_runs(runs, tmp_path):
    """All members vmapped at once (the accelerator default; `runs` maps them on CPU)."""
    root, *_ = runs
    cfgs = [_cfg(tmp_path / _name(*m), *m) for m in MEMBERS]
    group = fused.FusedGroup(cfgs, chunk=2)  # a chunk of 2, then the third member
    assert group.chunk == 2
    group.run()
    for member in MEMBERS:
        _assert_same_run(root / "separate" / _name(*member), tmp_path / _name(*member))


@pytest.mark.slow
def test_run_folders_look_like_separate_runs(runs):
    root, *_ = runs
    for member in MEMBERS:
        a, b = root / "separate" / _name(*member), root / "fused" / _name(*member)
        assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
        assert sorted(p.name for p in (b / "checkpoints").iterdir()) == ["10", "20"]
        config = (b / "config.yaml").read_text()
        assert config == (a / "config.yaml").read_text().replace(str(a), str(b))


@pytest.mark.slow
def test_padded_entries_stay_exactly_zero(runs):
    _, _, group, _ = runs
    ranks = [rank for rank, _ in MEMBERS]
    checked = 0
    for tree in (group.trainable, group.opt_state):  # params, AdamW moments
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            name = getattr(path[-1], "key", None)
            if name not in ("lora_a", "lora_b"):  # (and not e.g. the lora_a group's step count)
                continue
            leaf = np.asarray(leaf)
            assert leaf.shape[0] == len(MEMBERS)
            for i, rank in enumerate(ranks):
                pad = leaf[i, :, rank:] if name == "lora_a" else leaf[i, rank:, :]
                assert pad.size == 0 or np.all(pad == 0), (path, i)
                checked += pad.size
    assert checked > 0


@pytest.mark.slow
def test_resume_fused_or_separately_from_fused_checkpoints(runs, tmp_path):
    """A fused group killed after its step-10 checkpoint resumes, fused or as separate runs,
    to the uninterrupted result (the checkpoints are each member's own, unpadded)."""
    root, *_ = runs
    members = [(1, 0), (4, 0)]
    for mode in ("fused", "separate"):
        for member in members:
            dst = tmp_path / mode / _name(*member)
            shutil.copytree(root / "fused" / _name(*member), dst)
            for gone in ("metrics.json", "adapter", "checkpoints/20"):
                shutil.rmtree(dst / gone) if (dst / gone).is_dir() else (dst / gone).unlink()
    cfgs = [_cfg(tmp_path / "fused" / _name(*m), *m) for m in members]
    assert fused.plan_groups(cfgs) == [[0, 1]]
    fused.train_fused(cfgs)
    train.run(
        _cfg(tmp_path / "separate" / _name(*members[0]), *members[0]),
        tmp_path / "separate" / _name(*members[0]),
    )
    for mode, member in [("fused", members[0]), ("fused", members[1]), ("separate", members[0])]:
        dst = tmp_path / mode / _name(*member)
        assert json.loads((dst / "metrics.json").read_text())["steps"] == 20
        ref = _adapter(root / "fused" / _name(*member))
        for key, value in _adapter(dst).items():
            np.testing.assert_allclose(value, ref[key], atol=ATOL, rtol=RTOL, err_msg=key)


def test_plan_groups(tmp_path):
    def cfg(name, rank, seed, *extra):
        return _cfg(tmp_path / name, rank, seed, *extra)

    cfgs = [
        cfg("a", 1, 0),
        cfg("b", 4, 1),
        cfg("c", 0, 0),  # rank 0: alone
        cfg("d", 2, 0, "optim.lr=1e-2"),  # another lr: another group
        cfg("e", 8, 0, "optim.lr=1e-2"),
        cfg("f", 2, 0, "data.pad=bucket"),  # batch lengths vary: a group per seed
        cfg("g", 4, 1, "data.pad=bucket"),
        cfg("h", 8, 0, "data.pad=bucket"),
        cfg("i", 1, 0, "targets=q"),  # other targets: alone
    ]
    assert fused.plan_groups(cfgs) == [[0, 1], [2], [3, 4], [5, 7], [6], [8]]
    assert fused.plan_groups(cfgs, max_members=1) == [[i] for i in [0, 1, 2, 3, 4, 5, 7, 6, 8]]
    (tmp_path / "b").mkdir(exist_ok=True)
    (tmp_path / "b" / "metrics.json").write_text(json.dumps({"status": "complete"}))
    assert fused.fuse_blocker(cfgs[1]) == "complete"
    assert fused.plan_groups(cfgs[:2]) == [[0], [1]]


@pytest.mark.slow
def test_hydra_fused_sweep_end_to_end(runs, tmp_path):
    """`hydra/launcher=fused` through the real entry point: run folders, analysis and report
    as with the basic launcher, the numbers of the separate runs, one W&B run per member."""
    root, *_ = runs
    sweep_dir = tmp_path / "sw"
    args = [*FAST, "rank=1,4", "hydra/launcher=fused", f"hydra.sweep.dir={sweep_dir}"]
    proc = call_main("experiments.sweep", *args, cwd=tmp_path)
    assert proc.stdout.strip().splitlines()[-1] == str((sweep_dir / "report.html").absolute())
    assert "fused: training 2 runs as one" in proc.stdout
    summary = json.loads((sweep_dir / "sweep_summary.json").read_text())
    assert sorted(e["metrics"]["rank"] for e in summary) == [1, 4]
    for entry in summary:
        run_dir, rank = Path(entry["run_dir"]), entry["metrics"]["rank"]
        assert f"rank={rank}" in entry["overrides"]
        assert (run_dir / ".hydra" / "config.yaml").exists()
        assert list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
        _assert_same_run(root / "separate" / _name(rank, 0), run_dir)
    (pair,) = json.loads((sweep_dir / "analysis.json").read_text())["rank_pairs"]
    assert pair["ranks"] == [1, 4]
    assert "r=1 vs r=4" in (sweep_dir / "report.md").read_text()


@pytest.mark.slow
def test_minilm_grid_equals_separate_runs(tmp_path):
    """The real model (shared pretrained base) on ranks {1, 8} x seeds {0, 1}, 10 steps."""
    members = [(r, s) for r in (1, 8) for s in (0, 1)]
    base = ["model=minilm", "debug=fast", "trainer.steps=10", "data.eval_limit=128"]

    def cfg(mode, member):
        return _cfg(tmp_path / mode / _name(*member), *member, base=base)

    for member in members:
        train.run(cfg("separate", member), tmp_path / "separate" / _name(*member))
    cfgs = [cfg("fused", m) for m in members]
    groups = fused.plan_groups(cfgs)
    assert groups == [[0, 2], [1, 3]]  # bucketed batches: one group per seed
    for group in groups:
        fused_group = fused.FusedGroup([cfgs[i] for i in group])
        assert fused_group.frozen_axis is None  # one pretrained base, shared
        fused_group.run()
    for member in members:
        _assert_same_run(
            tmp_path / "separate" / _name(*member), tmp_path / "fused" / _name(*member)
        )

"""The rank measurements over training (`lora_jax.analysis.dynamics`) on run folders whose
checkpoints hold planted adapters: the curves against a numpy recomputation and closed forms.

Three runs of the tiny BERT's shapes (hidden 32), saved through the real writers (`Checkpointer`,
`export_adapter`, `save_kernels`): A (r=1, seed 0) and B (r=2, seed 0) kept steps 10 and 20,
C (r=2, seed 1) kept 10, 20 and 30 (another schedule). With W = P diag(sig) Q^T:
- B plants dW = c P_2 diag(sig_2) Q_2^T (W's own top-2 part, times c = 0.1 then 0.3): its
  directions are W's, so the amplification is c and ||dW|| / ||W|| = c ||sig_2|| / ||W||;
- A's only direction is cos(t) P_1 + sin(t) P_6 (t = pi/3, then 0): phi(1, 1) against B, whose
  top direction is P_1, is cos(t)^2 = 0.25 then 1;
- C's top direction is P_2 at step 10 and P_1 at 20: phi(1, 1) against B is 0 then 1.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import ClassVar

import grain
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import write_run
from flax import traverse_util

from lora_jax.adapter_io import export_adapter
from lora_jax.analysis.bases import BaseKernels
from lora_jax.analysis.curves import target_means
from lora_jax.analysis.dynamics import checkpoint_factors, measure_dynamics
from lora_jax.analysis.updates import from_runs
from lora_jax.lora import LoRAConfig, lora_scale
from lora_jax.models import Pretrained
from lora_jax.models.bert import HEAD_RULES
from lora_jax.models.bert_config import BertConfig
from lora_jax.report.render.document import Table
from lora_jax.report.sections.over_training import dynamics_section
from lora_jax.runs import RunFolder
from lora_jax.runs.record import read_run, read_runs
from lora_jax.stages import run_base
from lora_jax.train.checkpoint import Checkpointer
from lora_jax.weights.base_kernels import save_kernels

ALPHA = 8.0
KEYS = [(0, "q"), (0, "v"), (1, "q"), (1, "v")]


def _model(rank: int):
    """The tiny BERT's description as `load_pretrained` returns it (no weights: nothing here
    runs the model), its trainable tree (adapters and head) and W: fixed Gaussian kernels."""
    config = BertConfig.tiny("bert")
    lora = LoRAConfig(rank=rank, targets="qv", alpha=ALPHA)
    pre = Pretrained(None, None, None, config, HEAD_RULES, "cls", "tiny_bert")
    n = config.hidden_size
    trainable = {
        "encoder": {
            f"layer_{layer}": {
                "attention": {
                    t: {"lora_a": np.zeros((n, rank)), "lora_b": np.zeros((rank, n))} for t in "qv"
                }
            }
            for layer in range(config.num_layers)
        },
        "head": {"out": {"kernel": np.zeros((n, 2)), "bias": np.zeros(2)}},
    }
    rng = np.random.default_rng(0)
    kernels = {k: rng.normal(0.0, 0.3, (n, n)).astype(np.float32) for k in KEYS}
    return pre, lora, trainable, kernels


def _with(trainable: dict, factors: dict) -> dict:
    """`trainable` with its adapters replaced by `factors` {(layer, target): (a, b)}."""
    flat = traverse_util.flatten_dict(trainable)
    for path in flat:
        if path[-1] in ("lora_a", "lora_b"):
            key = (int(path[1].removeprefix("layer_")), path[-2])
            flat[path] = jnp.asarray(factors[key][0 if path[-1] == "lora_a" else 1])
    return traverse_util.unflatten_dict(flat)


def _planted_run(sweep: Path, name: str, rank: int, seed: int, plant) -> Path:
    """A finished run folder whose checkpoint at each step holds `plant(step, W_svds)`."""
    run = write_run(sweep, name, rank=rank, seed=seed, model="tiny_bert", alpha=ALPHA)
    pre, lora, trainable, kernels = _model(rank)
    folder = RunFolder(run)
    save_kernels(folder.base_kernels, kernels, "bert")
    svds = {k: np.linalg.svd(w) for k, w in kernels.items()}
    scale = lora_scale(rank, ALPHA, "alpha_over_r")
    steps = plant.steps
    data = iter(grain.MapDataset.range(8).to_iter_dataset())
    with Checkpointer(folder.checkpoints, keep=len(steps)) as ckpt:
        for step in steps:
            factors = {k: plant(step, *svds[k], scale) for k in KEYS}
            state = {"trainable": _with(trainable, factors), "opt_state": {}}
            ckpt.save(step, state, data, meta={"step": step})
    export_adapter(folder.adapter, state["trainable"], lora, pre)
    return run


class _B:
    """r=2: dW = c P_2 diag(sig_2) Q_2^T, A's top direction P_1 (A = P_2 diag(2, 1))."""

    steps = (10, 20)
    c: ClassVar = {10: 0.1, 20: 0.3}

    def __call__(self, step, p, sig, qt, scale):
        a = p[:, :2] @ np.diag([2.0, 1.0])
        b = self.c[step] * np.diag(sig[:2] / [2.0, 1.0]) @ qt[:2] / scale
        return a.astype(np.float32), b.astype(np.float32)


class _A:
    """r=1: A's direction cos(t) P_1 + sin(t) P_6, dW = sig_1 (that direction) Q_1^T / 2."""

    steps = (10, 20)
    t: ClassVar = {10: math.pi / 3, 20: 0.0}

    def __call__(self, step, p, sig, qt, scale):
        t = self.t[step]
        a = (math.cos(t) * p[:, 0] + math.sin(t) * p[:, 5])[:, None]
        return a.astype(np.float32), (0.5 * sig[0] * qt[:1] / scale).astype(np.float32)


class _C:
    """r=2, seed 1, steps 10/20/30: A's top direction P_2 at step 10, P_1 afterwards."""

    steps = (10, 20, 30)

    def __call__(self, step, p, sig, qt, scale):
        order = [1, 0] if step == 10 else [0, 1]
        a = p[:, order] @ np.diag([2.0, 1.0])
        b = 0.2 * np.diag(sig[order] / [2.0, 1.0]) @ qt[order] / scale
        return a.astype(np.float32), b.astype(np.float32)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    sweep = tmp_path_factory.mktemp("planted")
    _planted_run(sweep, "a_r1", 1, 0, _A())
    _planted_run(sweep, "b_r2", 2, 0, _B())
    _planted_run(sweep, "c_r2_s1", 2, 1, _C())
    updates = from_runs(read_runs(sweep))
    bases = BaseKernels(lambda u: run_base(u.record))
    return sweep, updates, measure_dynamics(updates, bases, sweep / "figures")


def _numpy_table7(w: np.ndarray, a: np.ndarray, b: np.ndarray, scale: float) -> dict:
    """Table 7's numbers from the dense dW, by numpy alone."""
    dw = scale * a.astype(np.float64) @ b.astype(np.float64)
    u, s, vt = np.linalg.svd(dw)
    r = a.shape[1]
    proj = np.linalg.norm(u[:, :r].T @ w @ vt[:r].T)
    p = s[:r] / s[:r].sum()
    return {
        "dw_over_w": np.linalg.norm(dw) / np.linalg.norm(w),
        "proj_dw": proj,
        "amplification": np.linalg.norm(dw) / proj,
        "effective_rank": float(np.exp(-np.sum(p * np.log(p)))),
        "stable_rank": float(np.sum(s**2) / s[0] ** 2),
    }


def _top_direction(a: np.ndarray) -> np.ndarray:
    return np.linalg.svd(a.astype(np.float64), full_matrices=False)[0][:, 0]


def test_run_curves_match_numpy_on_every_kept_step(planted):
    _, updates, dyn = planted
    assert sorted(dyn["runs"]) == ["a_r1", "b_r2", "c_r2_s1"]
    assert dyn["runs"]["c_r2_s1"]["steps"] == [10, 20, 30]
    for u in updates:
        record = read_run(u.folder)
        entry = dyn["runs"][u.name]
        kernels = BaseKernels(lambda u: run_base(u.record)).kernels_of(u)[1]
        for i, step in enumerate(entry["steps"]):
            trainable = traverse_util.flatten_dict(record.checkpoint_trainable(step))
            for layer, target in KEYS:
                path = ("encoder", f"layer_{layer}", "attention", target)
                a, b = trainable[(*path, "lora_a")], trainable[(*path, "lora_b")]
                want = _numpy_table7(
                    kernels[(layer, target)], a, b, u.adapter.scales[(layer, target)]
                )
                got = entry["adapters"][f"layer_{layer}/{target}"]
                for name, value in want.items():
                    assert got[name][i] == pytest.approx(value, rel=1e-4), (u.name, step, name)


def test_planted_amplification_and_norm_ratio_are_the_closed_forms(planted):
    _, updates, dyn = planted
    b_run = next(u for u in updates if u.name == "b_r2")
    kernels = BaseKernels(lambda u: run_base(u.record)).kernels_of(b_run)[1]
    entry = dyn["runs"]["b_r2"]
    for key in KEYS:
        sig = np.linalg.svd(kernels[key], compute_uv=False)
        got = entry["adapters"][f"layer_{key[0]}/{key[1]}"]
        for i, c in enumerate((0.1, 0.3)):
            # dW lies along W's own top-2 directions: ||U^T W V|| = ||sig_2||, amplification c.
            assert got["amplification"][i] == pytest.approx(c, rel=1e-4)
            assert got["proj_dw"][i] == pytest.approx(np.linalg.norm(sig[:2]), rel=1e-4)
            ratio = c * np.linalg.norm(sig[:2]) / np.linalg.norm(sig)
            assert got["dw_over_w"][i] == pytest.approx(ratio, rel=1e-4)
            p = sig[:2] / sig[:2].sum()
            assert got["effective_rank"][i] == pytest.approx(
                np.exp(-np.sum(p * np.log(p))), rel=1e-4
            )
        assert got["w_norm"] == pytest.approx(np.linalg.norm(sig), rel=1e-5)


def test_phi_between_runs_is_the_planted_overlap_at_the_steps_both_kept(planted):
    _, updates, dyn = planted
    (rank_pair,) = dyn["rank_pairs"]
    assert rank_pair["runs"] == ["a_r1", "b_r2"] and rank_pair["ranks"] == [1, 2]
    assert rank_pair["steps"] == [10, 20] and rank_pair["unshared_steps"] == []
    (seed_pair,) = dyn["seed_pairs"]
    assert seed_pair["runs"] == ["b_r2", "c_r2_s1"] and seed_pair["seeds"] == [0, 1]
    # C kept step 30 too (another schedule): compared at the shared steps only.
    assert seed_pair["steps"] == [10, 20] and seed_pair["unshared_steps"] == [30]
    by_name = {u.name: read_run(u.folder) for u in updates}
    for pair, closed in ((rank_pair, [0.25, 1.0]), (seed_pair, [0.0, 1.0])):
        lo, hi = (by_name[n] for n in pair["runs"])
        assert pair["random_phi11"] == {f"layer_{i}/{t}": 1 / 32 for i, t in KEYS}
        for layer, target in KEYS:
            curve = pair["phi11"][f"layer_{layer}/{target}"]
            assert curve == pytest.approx(closed, abs=1e-5)
            path = ("encoder", f"layer_{layer}", "attention", target, "lora_a")
            for i, step in enumerate(pair["steps"]):
                a_lo = traverse_util.flatten_dict(lo.checkpoint_trainable(step))[path]
                a_hi = traverse_util.flatten_dict(hi.checkpoint_trainable(step))[path]
                overlap = float(_top_direction(a_lo) @ _top_direction(a_hi)) ** 2
                assert curve[i] == pytest.approx(overlap, abs=1e-5)


def test_the_report_section_shows_first_and_last_step(planted):
    sweep, _, dyn = planted
    assert Path(dyn["figure"]).is_file() and Path(dyn["figure"]).name == "dynamics.png"
    blocks = dynamics_section({"dynamics": dyn}, sweep)
    pairs, runs = (b for b in blocks if isinstance(b, Table))
    rows = {(r[0], r[1]): r for r in pairs.rows}
    assert rows[("r=1 vs r=2 (seed 0)", "Wq")][3] == "0.250 → 1.000"
    assert rows[("seed 0 vs 1 (r=2)", "Wv")][2:4] == ["10 → 20", "0.000 → 1.000"]
    assert rows[("seed 0 vs 1 (r=2)", "Wv")][5] == "0.031"  # 1/n, n = 32
    run_rows = {(r[0], r[1]): r for r in runs.rows}
    assert run_rows[("r=2, seed=0", "Wq")][4] == "0.10 → 0.30"  # amplification = c
    assert run_rows[("r=2, seed=1", "Wq")][2] == "10, 20, 30"
    assert any("compared at the steps both kept" in b for b in blocks if isinstance(b, str))
    assert target_means({"layer_0/q": [1.0, None], "layer_1/q": [3.0, 2.0]})["q"].tolist() == [
        2.0,
        2.0,
    ]


def test_one_checkpoint_gives_no_curves_and_a_missing_step_names_the_kept_ones(planted, tmp_path):
    sweep, _, _ = planted
    record = read_run(sweep / "b_r2")
    with pytest.raises(FileNotFoundError, match=r"\[10, 20\]"):
        record.checkpoint_trainable(15)

    class _Once(_B):
        steps = (20,)

    _planted_run(tmp_path, "once", 2, 0, _Once())
    (once,) = from_runs(read_runs(tmp_path))
    bases = BaseKernels(lambda u: run_base(u.record))
    assert measure_dynamics([once], bases, tmp_path / "figures") == {}


def test_an_unreadable_checkpoint_is_left_out_with_a_warning(planted, tmp_path):
    sweep, _, _ = planted
    run = Path(shutil.copytree(sweep / "b_r2", tmp_path / "b_r2"))
    state = run / "checkpoints" / "10" / "state"
    shutil.rmtree(state)
    state.mkdir()  # the step's folder stays, its arrays are gone
    (update,) = from_runs([read_run(run)])
    with pytest.warns(UserWarning, match="checkpoint step 10 is unreadable"):
        assert sorted(checkpoint_factors(update)) == [20]

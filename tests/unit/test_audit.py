"""The base-free rank audit: the float64 r x r cores on analytic cases and against the JAX
definitions, the streaming reader against `read_adapter`, initialisations refused by name, and
rank advice that recovers planted ranks exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES
from safetensors.numpy import save_file

from lora_jax.audit.cores import phi_grid, singular_values, summarize
from lora_jax.audit.measure import advise, audit, energy_rank, write_audit
from lora_jax.peft_adapter import open_adapter, read_adapter


def _orthonormal(rng, n, k):
    return np.linalg.qr(rng.standard_normal((n, k)))[0]


def test_singular_values_of_a_known_product():
    # lora_a = Q1 diag(d), lora_b = diag(e) Q2ᵀ: dW = Q1 diag(d e) Q2ᵀ, singular values |scale| d e.
    rng = np.random.default_rng(0)
    d, e = np.array([3.0, 1.0, 0.5, 2.0]), np.array([1.0, 4.0, 0.0, 0.25])
    a = (_orthonormal(rng, 50, 4) * d).astype(np.float32)
    b = (e[:, None] * _orthonormal(rng, 30, 4).T).astype(np.float32)
    np.testing.assert_allclose(singular_values(a, b, -2.0), [8.0, 6.0, 1.0, 0.0], atol=1e-5)
    assert not np.any(singular_values(a, np.zeros_like(b)))  # B at initialisation: dW = 0


def test_cores_agree_with_the_jax_qr_definitions():
    from lora_jax.analysis.similarity import phi_grid_a
    from lora_jax.analysis.spectrum import spectrum, summarize_spectrum

    rng = np.random.default_rng(1)
    a = rng.standard_normal((96, 8)).astype(np.float32)
    b = (rng.standard_normal((8, 3)) @ rng.standard_normal((3, 40))).astype(np.float32)  # rank 3
    s = singular_values(a, b, 0.5)
    want = np.asarray(spectrum(a, b, 0.5), np.float64)
    np.testing.assert_allclose(s, want, rtol=0, atol=40 * np.finfo(np.float32).eps * want[0])
    ours, theirs = summarize(s, 8, (96, 40)), summarize_spectrum(want.astype(np.float32), (96, 40))
    for key in ("frobenius", "spectral", "stable_rank", "effective_rank"):
        assert ours[key] == pytest.approx(float(theirs[key]), rel=1e-5)
    for key in ("energy_rank_90", "energy_rank_99", "numerical_rank"):
        assert ours[key] == float(theirs[key])
    assert ours["numerical_rank"] == 3
    assert ours["utilization"] == pytest.approx(ours["stable_rank"] / 8)
    assert ours["energy_utilization"] == ours["energy_rank_90"] / 8
    a2 = rng.standard_normal((96, 5)).astype(np.float32)
    np.testing.assert_allclose(phi_grid(a, a2), np.asarray(phi_grid_a(a, a2)), atol=1e-5)


def test_energy_ranks_and_phi_on_exact_cases():
    s = np.array([3.0, 2.0, 1.0, 0.0])  # energy 9, 4, 1 of 14
    got = summarize(s, 4, (10, 10))
    assert (got["energy_rank_50"], got["energy_rank_90"], got["energy_rank_99"]) == (1, 2, 3)
    assert energy_rank(s, 0.95) == 3 and energy_rank(np.zeros(3), 0.9) == 0
    assert all(v == 0 for v in summarize(np.zeros(4), 4, (10, 10)).values())
    rng = np.random.default_rng(2)
    q = _orthonormal(rng, 20, 6)
    same = phi_grid(q[:, :3] * [5.0, 2.0, 1.0], q[:, :3] * [1.0, 3.0, 7.0])
    assert same[2, 2] == pytest.approx(1.0)  # one subspace: phi(3, 3) = 1 in any basis
    np.testing.assert_allclose(phi_grid(q[:, :3], q[:, 3:]), 0.0, atol=1e-12)  # orthogonal


def test_streaming_reads_what_read_adapter_reads():
    for name in ("peft_llama", "peft_gpt2", "peft_minilm_r4"):
        index, whole = open_adapter(FIXTURES / name), read_adapter(FIXTURES / name)
        for key, a, b in index.factors():
            np.testing.assert_array_equal(a, whole.factors[key][0])
            np.testing.assert_array_equal(b, whole.factors[key][1])
            assert index.shapes[key] == (a.shape[0], b.shape[1]) and index.ranks[key] == a.shape[1]


def _edit_config(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "adapter_config.json").read_text())
    (dst / "adapter_config.json").write_text(json.dumps({**config, **changes}))
    return dst


@pytest.mark.parametrize(
    "init, method",
    [
        ("pissa", "PiSSA"),
        ("pissa_niter_4", "PiSSA"),
        ("olora", "OLoRA"),
        ("corda", "CorDA"),
        ("lora_ga", "LoRA-GA"),
        ("mica", "MiCA"),
        ("loftq", "LoftQ"),
    ],
)
def test_adapters_whose_ba_is_not_the_update_are_refused_by_name(tmp_path, init, method):
    from lora_jax.adapter_io import init_adapters

    folder = _edit_config(FIXTURES / "peft_minilm_r2", tmp_path / init, init_lora_weights=init)
    for read in (open_adapter, lambda f: init_adapters({}, f), lambda f: audit([f])):
        with pytest.raises(ValueError, match=rf"init_lora_weights='{init}' \({method}\)") as e:
            read(folder)
        assert "allowed: true, false, 'gaussian', 'eva', 'orthogonal'" in str(e.value)
    fix = "path_initial_model_for_weight_conversion" if method not in ("MiCA", "LoftQ") else "no"
    assert fix in str(e.value)


def test_eva_and_orthogonal_adapters_read_with_their_patterns(tmp_path):
    # EVA redistributes ranks per layer into rank_pattern; B·A starts at 0, so it is the update.
    folder = _edit_config(
        FIXTURES / "peft_minilm_r4",
        tmp_path / "eva",
        init_lora_weights="eva",
        r=8,
        rank_pattern={"query": 4, "value": 4},
        alpha_pattern={"query": 2.0},
    )
    index = open_adapter(folder)
    assert set(index.ranks.values()) == {4}
    assert index.scales[(0, "q")] == 0.5 and index.scales[(0, "v")] == pytest.approx(
        json.loads((folder / "adapter_config.json").read_text())["lora_alpha"] / 4
    )
    assert open_adapter(
        _edit_config(FIXTURES / "peft_llama", tmp_path / "o", init_lora_weights="orthogonal")
    )


def _planted_adapter(folder: Path, planted: dict[tuple[int, str], int], rank: int = 8) -> Path:
    """A PEFT Llama adapter whose dW in each (layer, module) has `k` equal singular values."""
    rng = np.random.default_rng(3)
    tensors = {}
    for (layer, module), k in planted.items():
        a = _orthonormal(rng, 24, rank).T  # (r, in)
        b = np.zeros((16, rank))
        b[:, :k] = _orthonormal(rng, 16, k)
        prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
        # C order: safetensors writes an array's memory as is (a.T would be scrambled)
        tensors[f"{prefix}.lora_A.weight"] = np.ascontiguousarray(a, np.float32)
        tensors[f"{prefix}.lora_B.weight"] = np.ascontiguousarray(b, np.float32)
    folder.mkdir()
    save_file(tensors, folder / "adapter_model.safetensors")
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 16, "base_model_name_or_path": "x"}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def test_advice_recovers_planted_ranks_and_keeps_each_scale(tmp_path):
    planted = {(0, "q_proj"): 1, (0, "v_proj"): 3, (1, "q_proj"): 5, (1, "v_proj"): 2}
    folder = _planted_adapter(tmp_path / "planted", planted)
    result = write_audit([folder], tmp_path / "out", energy=0.9)
    advice = advise(result, 0.9)["planted"]
    assert advice["rank_pattern"] == {
        f"model.layers.{layer}.self_attn.{m}": k for (layer, m), k in planted.items()
    }
    # alpha/r = 16/8 = 2 kept at every advised rank
    assert all(advice["alpha_pattern"][m] == 2 * k for m, k in advice["rank_pattern"].items())
    assert advice["lora_rank_pattern"] == {"q": 5, "v": 3}
    assert advice["params_advised"] == (1 + 3 + 5 + 2) * (24 + 16)
    assert advice["params_now"] == 4 * 8 * (24 + 16)
    matrices = result["adapters"]["planted"]["matrices"]
    assert matrices["layer_1/q"]["numerical_rank"] == 5 and matrices["layer_1/q"][
        "stable_rank"
    ] == pytest.approx(5)
    with pytest.raises(ValueError, match=r"--energy 1.5 is not valid; allowed: .* \(0, 1\]"):
        write_audit([folder], tmp_path / "bad", energy=1.5)
    assert not (tmp_path / "bad").exists()


def test_one_adapter_alone_is_audited_and_a_folder_twice_is_refused():
    result = audit([FIXTURES / "peft_llama"])
    assert result["pairs"] == [] and len(result["adapters"]["peft_llama"]["matrices"]) > 0
    with pytest.raises(ValueError, match="twice"):
        audit([FIXTURES / "peft_llama", FIXTURES / "peft_llama"])


def test_a_bfloat16_adapter_reads_as_its_float32_values(tmp_path):
    import ml_dtypes
    from safetensors.numpy import load_file

    folder = tmp_path / "bf16"
    shutil.copytree(FIXTURES / "peft_llama", folder)
    tensors = load_file(folder / "adapter_model.safetensors")
    save_file(
        {k: v.astype(ml_dtypes.bfloat16) for k, v in tensors.items()},
        folder / "adapter_model.safetensors",
    )
    want = read_adapter(FIXTURES / "peft_llama")
    for key, a, b in open_adapter(folder).factors():
        np.testing.assert_array_equal(
            a, want.factors[key][0].astype(ml_dtypes.bfloat16).astype(np.float32)
        )
        assert b.dtype == np.float32

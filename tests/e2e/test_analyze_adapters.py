"""`python -m experiments.analyze --adapters`: LoRA adapters that PEFT itself saved on the real
MiniLM (tests/fixtures/peft_minilm_*, scripts/make_peft_minilm_fixtures.py), checked against
what PEFT and torch computed (spectra, norms) and against phi recomputed here in numpy; and
pairs that cannot be compared, refused with both folders named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, call_main
from safetensors.numpy import load_file, save_file

R2, R4 = FIXTURES / "peft_minilm_r2", FIXTURES / "peft_minilm_r4"


@pytest.fixture(scope="module")
def minilm_pair(tmp_path_factory):
    out = tmp_path_factory.mktemp("adapters") / "analysis"
    proc = call_main(
        "experiments.analyze",
        "--adapters",
        str(R2),
        str(R4),
        "--base",
        "minilm",
        "--suggest",
        "--svd-cache",
        str(out.parent / "svd"),
        "--out",
        str(out),
        cwd=out.parent,
    )
    return out, proc


def _phi_numpy(a1: np.ndarray, a2: np.ndarray) -> np.ndarray:
    """Eq. 4 from PEFT's lora_A (r, in): U = right singular vectors, spanning A's input space."""
    u1 = np.linalg.svd(a1.astype(np.float64), full_matrices=False)[2].T
    u2 = np.linalg.svd(a2.astype(np.float64), full_matrices=False)[2].T
    m = (u1.T @ u2) ** 2
    i, j = np.meshgrid(np.arange(1, m.shape[0] + 1), np.arange(1, m.shape[1] + 1), indexing="ij")
    return np.cumsum(np.cumsum(m, 0), 1) / np.minimum(i, j)


def test_peft_adapters_on_minilm_match_peft_and_numpy(minilm_pair):
    out, proc = minilm_pair
    assert proc.stdout.strip().splitlines()[-1] == str((out / "report.html").absolute())
    analysis = json.loads((out / "analysis.json").read_text())
    assert analysis["base"]["name"] == "sentence-transformers/all-MiniLM-L6-v2"
    for name, folder in (("peft_minilm_r2", R2), ("peft_minilm_r4", R4)):
        expected = json.loads((folder / "expected.json").read_text())
        measured = analysis["adapters"][name]["adapters"]
        assert len(measured) == 12 == len(expected)  # q and v of six layers
        for key, want in expected.items():
            layer, target = key.split(".")
            got = measured[f"layer_{layer}/{target}"]
            np.testing.assert_allclose(got["singular_values"], want["singular_values"], rtol=1e-5)
            assert got["dw_vs_w"]["dw_norm"] == pytest.approx(want["dw_norm"], rel=1e-5)
            assert got["dw_vs_w"]["w_norm"] == pytest.approx(want["w_norm"], rel=1e-6)
    (pair,) = analysis["adapter_pairs"]
    assert pair["ranks"] == [2, 4] and sorted(pair["phi"]) == sorted(pair["phi_b"])
    t2, t4 = (
        load_file(R2 / "adapter_model.safetensors"),
        load_file(R4 / "adapter_model.safetensors"),
    )
    for layer, module, target in ((0, "query", "q"), (5, "value", "v")):
        key = f"base_model.model.encoder.layer.{layer}.attention.self.{module}.lora_A.weight"
        want = _phi_numpy(t2[key], t4[key])
        np.testing.assert_allclose(pair["phi"][f"layer_{layer}/{target}"], want, atol=2e-6)
    html = (out / "report.html").read_text()
    # the audit's figure per adapter, then dW against W by matrix type (per matrix: JSON)
    assert "dW against W" in html and html.count('src="data:image/png;base64,') == 2
    report = (out / "report.md").read_text()
    against_w = report[report.index("## dW against W") :]
    assert against_w.count("\n| q | 6 |") == 2 and "layer_0/q" not in against_w
    assert "12 computed" in against_w


def test_the_audit_without_base_matches_peft_and_numpy(minilm_pair):
    """The base-free audit (float64 r x r cores) gives PEFT's singular values and the numpy
    phi of the paper's Eq. 4, both sides; its advice is a LoRA config PEFT reads."""
    out, _ = minilm_pair
    audit = json.loads((out / "audit.json").read_text())
    for name, folder in (("peft_minilm_r2", R2), ("peft_minilm_r4", R4)):
        expected = json.loads((folder / "expected.json").read_text())
        matrices = audit["adapters"][name]["matrices"]
        for key, want in expected.items():
            layer, target = key.split(".")
            got = matrices[f"layer_{layer}/{target}"]
            np.testing.assert_allclose(got["singular_values"], want["singular_values"], rtol=1e-5)
            assert got["frobenius"] == pytest.approx(want["dw_norm"], rel=1e-5)
    (pair,) = audit["pairs"]
    t2, t4 = (
        load_file(R2 / "adapter_model.safetensors"),
        load_file(R4 / "adapter_model.safetensors"),
    )
    key = "base_model.model.encoder.layer.5.attention.self.value.lora_{}.weight"
    phi_a, phi_b = (
        _phi_numpy(t2[key.format("A")], t4[key.format("A")]),
        _phi_numpy(t2[key.format("B")].T, t4[key.format("B")].T),
    )
    got = pair["matrices"]["layer_5/v"]
    assert got["phi_a"]["top"] == pytest.approx(phi_a[0, 0], abs=1e-6)
    assert got["phi_a"]["mean"] == pytest.approx(phi_a.mean(), abs=1e-6)
    assert got["phi_b"]["mean"] == pytest.approx(phi_b.mean(), abs=1e-6)
    assert got["phi_a"]["random_mean"] == pytest.approx(
        np.maximum.outer([1, 2], [1, 2, 3, 4]).mean() / 384
    )
    rows = (out / "audit.csv").read_text().splitlines()
    assert rows[0].startswith("adapter,matrix,rank,") and len(rows) == 1 + 2 * 12
    advice = json.loads((out / "rank_advice.json").read_text())["peft_minilm_r4"]
    config = json.loads((out / "advice" / "peft_minilm_r4" / "adapter_config.json").read_text())
    assert config["rank_pattern"] == advice["rank_pattern"] and len(advice["rank_pattern"]) == 12
    assert "Audit: peft_minilm_r2" in (out / "report.md").read_text()


def test_a_second_analysis_on_the_same_base_reads_ws_svds_back(minilm_pair, tmp_path):
    """W's decompositions, saved by the pair's analysis, serve one adapter alone on the same
    base: none computed again, the same numbers (the same bits: the saved float32 SVD)."""
    from lora_jax.analysis.updates import analyze_adapters
    from lora_jax.stages import adapter_base

    out, _ = minilm_pair
    first = json.loads((out / "analysis.json").read_text())
    assert first["base"]["svd_cache"] | {"dir": None} == {"dir": None, "reused": 0, "computed": 12}
    again = analyze_adapters([R4], tmp_path / "again", adapter_base("minilm"), out.parent / "svd")
    assert (
        again["base"]["svd_cache"]["reused"] == 12 and again["base"]["svd_cache"]["computed"] == 0
    )
    assert list(again["adapters"]) == ["peft_minilm_r4"] and again["adapter_pairs"] == []
    for matrix, m in again["adapters"]["peft_minilm_r4"]["adapters"].items():
        before = first["adapters"]["peft_minilm_r4"]["adapters"][matrix]
        assert m["dw_vs_w"] == before["dw_vs_w"] and m["intruders"] == before["intruders"]
        assert len(m["intruder_cosines"]) == 10


def _analyze_fails(tmp_path: Path, *folders: Path) -> str:
    proc = call_main(
        "experiments.analyze",
        "--adapters",
        *map(str, folders),
        "--out",
        str(tmp_path / "o"),
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert not (tmp_path / "o" / "analysis.json").exists()
    assert not (tmp_path / "o" / "audit.json").exists()
    return proc.stderr


def test_adapters_on_different_bases_are_refused(tmp_path):
    err = _analyze_fails(tmp_path, R2, FIXTURES / "peft_bert")
    assert "different bases" in err and str(R2) in err and str(FIXTURES / "peft_bert") in err
    assert "tiny-random-bert" in err and "all-MiniLM-L6-v2" in err


def test_adapters_on_different_matrices_are_refused(tmp_path):
    only_q = tmp_path / "only_query"
    shutil.copytree(R2, only_q)
    tensors = load_file(R2 / "adapter_model.safetensors")
    save_file(
        {k: v for k, v in tensors.items() if ".query." in k}, only_q / "adapter_model.safetensors"
    )
    config = json.loads((R2 / "adapter_config.json").read_text())
    (only_q / "adapter_config.json").write_text(json.dumps({**config, "target_modules": ["query"]}))
    err = _analyze_fails(tmp_path, R4, only_q)
    assert "adapt different matrices" in err and str(only_q) in err and "layer_0/v" in err


def test_non_lora_adapters_are_refused(tmp_path):
    err = _analyze_fails(tmp_path, R2, FIXTURES / "peft_loha")
    assert "LOHA" in err and str(FIXTURES / "peft_loha") in err


def test_base_names_resolve_to_local_checkpoints():
    from lora_jax import models

    assert models.hub_id("minilm") == "sentence-transformers/all-MiniLM-L6-v2"
    assert models.checkpoint_path(models.hub_id("minilm")) == models.minilm_folder()
    assert models.checkpoint_path("smollm2").suffix == ".gguf"
    assert models.checkpoint_path("tiny_bert") is None  # random init: runs save their W
    with pytest.raises(FileNotFoundError, match="not a registry name, a hub id"):
        models.checkpoint_path("no_such_model")

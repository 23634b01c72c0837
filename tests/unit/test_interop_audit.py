"""The audit beside the peers, on adapters PEFT itself makes (`make test-interop`): gradience's
audit gives our numbers, PEFT reads and trains our rank advice, and a PiSSA adapter is refused
as saved and read right after PEFT's own conversion to a plain LoRA."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES

from lora_jax.audit.measure import write_audit
from lora_jax.peft_adapter import read_adapter
from lora_jax.runs.layout import ADVICE_DIR

pytestmark = pytest.mark.interop
TINY_LLAMA = FIXTURES / "parity" / "tiny_llama"
torch = transformers = peft = None


@pytest.fixture(autouse=True, scope="module")
def _libraries():
    global torch, transformers, peft
    reason = "needs the interop extra (torch, transformers, peft): run `make test-interop`"
    torch = pytest.importorskip("torch", reason=reason)
    transformers = pytest.importorskip("transformers", reason=reason)
    peft = pytest.importorskip("peft", reason=reason)


def _llama():
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_pretrained(TINY_LLAMA, dtype=torch.float32)


def _trained_lora(folder: Path, steps: int = 3, **config) -> Path:
    """A PEFT LoRA on the tiny Llama, moved off its initialisation by a few SGD steps."""
    model = peft.get_peft_model(
        _llama(), peft.LoraConfig(target_modules=["q_proj", "v_proj", "down_proj"], **config)
    )
    _train(model, steps)
    model.save_pretrained(folder)
    return folder


def _train(model, steps: int) -> list[float]:
    ids = torch.randint(
        0, model.config.vocab_size, (4, 16), generator=torch.Generator().manual_seed(1)
    )
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def test_gradience_audits_the_same_numbers(tmp_path):
    folder = _trained_lora(tmp_path / "lora", r=8, lora_alpha=16)
    ours = write_audit([folder], tmp_path / "audit")["adapters"]["lora"]["matrices"]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "gradience",
            "audit",
            "--peft-dir",
            str(folder),
            "--json",
            "--layers",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = json.loads(out.stdout)["layer_data"]["layer_rows"]
    assert len(rows) == len(ours) > 0
    names = {"q_proj": "q", "v_proj": "v", "down_proj": "ffn_out"}
    for row in rows:
        parts = row["name"].split(".")
        m = ours[f"layer_{parts[parts.index('layers') + 1]}/{names[parts[-1]]}"]
        for theirs, key in (
            ("stable_rank", "stable_rank"),
            ("effective_rank", "effective_rank"),
            ("utilization", "utilization"),
            ("delta_sigma_max", "spectral"),
            ("delta_fro_norm", "frobenius"),
        ):
            assert m[key] == pytest.approx(row[theirs], rel=1e-6), (row["name"], key)
        assert (m["energy_rank_90"], m["energy_rank_99"]) == (
            row["energy_rank_90"],
            row["energy_rank_99"],
        )


def test_peft_loads_the_advice_and_trains_with_it(tmp_path):
    folder = _trained_lora(tmp_path / "lora", r=8, lora_alpha=16)
    write_audit([folder], tmp_path / "audit", energy=0.9)
    advice = json.loads((tmp_path / "audit" / "rank_advice.json").read_text())["lora"]
    config = peft.LoraConfig.from_pretrained(tmp_path / "audit" / ADVICE_DIR / "lora")
    config.inference_mode = False
    model = peft.get_peft_model(_llama(), config)
    for name, module in model.named_modules():
        if isinstance(module, peft.tuners.lora.LoraLayer):
            key = name.removeprefix("base_model.model.")
            rank, scale = module.r["default"], module.scaling["default"]
            assert rank == advice["rank_pattern"][key]
            assert scale == pytest.approx(16 / 8)  # each matrix keeps the adapter's alpha / r
    losses = _train(model, 3)
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


def test_pissa_is_refused_as_saved_and_read_after_peft_converts_it(tmp_path):
    model = peft.get_peft_model(
        _llama(), peft.LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights="pissa")
    )
    model.save_pretrained(tmp_path / "initial")
    before = {n: p.detach().clone() for n, p in model.merge_and_unload().state_dict().items()}
    model = peft.get_peft_model(
        _llama(), peft.LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights="pissa")
    )
    _train(model, 3)
    model.save_pretrained(tmp_path / "pissa")
    model.save_pretrained(
        tmp_path / "converted",
        path_initial_model_for_weight_conversion=str(tmp_path / "initial"),
    )
    with pytest.raises(ValueError, match=r"init_lora_weights='pissa' \(PiSSA\)"):
        read_adapter(tmp_path / "pissa")
    converted = read_adapter(tmp_path / "converted")
    after = model.merge_and_unload().state_dict()
    for (layer, target), (a, b) in converted.factors.items():
        assert target == "q" and a.shape[1] == 8  # PEFT's conversion: a plain LoRA of rank 2r
        name = f"model.layers.{layer}.self_attn.q_proj.weight"
        # the weight change of the trained PiSSA model: W_after - W_before (torch's (out, in))
        change = (after[name] - before[name]).numpy().T
        dw = converted.scales[(layer, target)] * a @ b
        np.testing.assert_allclose(dw, change, atol=1e-5 * np.abs(change).max() + 1e-6)


def test_intruder_counts_equal_peft_reduce_intruder_dimension(tmp_path):
    """Shuttleworth et al.'s intruders, counted by PEFT's own `reduce_intruder_dimension`
    (top_k 10, epsilon 0.5, from its log) and by ours on the same W and W + dW: the dense
    count, and the `--adapters A/ --base` analysis of the saved adapter (W's SVD and W_ft's
    top 10 only)."""
    from lora_jax.analysis.intruders import count_intruders
    from lora_jax.analysis.updates import analyze_adapters

    model = peft.get_peft_model(
        _llama(), peft.LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"])
    )
    _train(model, 8)
    model.save_pretrained(tmp_path / "lora")
    analysis = analyze_adapters([tmp_path / "lora"], tmp_path / "out", lambda _: TINY_LLAMA)
    audited = analysis["adapters"]["lora"]["adapters"]
    lines: list[str] = []
    from peft.tuners.lora.intruders import reduce_intruder_dimension

    reduce_intruder_dimension(model, logging_sink=lines.append)
    theirs, ours = {}, {}
    for line in lines:
        name, _, verdict = line.partition(": ")
        if verdict.startswith(("Intruders", "No intruders")):
            theirs[name] = int(verdict.split(": ")[1]) if verdict.startswith("Intruders") else 0
    for name, layer in model.named_modules():
        if name in theirs:
            w0 = layer.get_base_layer().weight.detach().numpy().T  # ours: (in, out)
            dw = layer.get_delta_weight("default").detach().numpy().T
            ours[name] = count_intruders(w0, w0 + dw, top_k=10, epsilon=0.5)
            parts = name.split(".")
            matrix = f"layer_{parts[parts.index('layers') + 1]}/{parts[-1][0]}"
            assert audited[matrix]["intruders"] == theirs[name], name
    assert ours == theirs and len(theirs) == 2 * model.config.num_hidden_layers == len(audited)
    assert sum(theirs.values()) > 0, "no intruders: the check compares only zeros"


@pytest.mark.parametrize("energy", [0.5, 0.9, 0.99])
def test_energy_rank_equals_the_cutoff_of_peft_convert_to_lora(tmp_path, energy):
    """`convert_to_lora(rank=<float>)` keeps, per layer, `_find_cutoff_index` of the dense
    update's singular values; ours comes from the r x r cores of the same adapter."""
    from peft.tuners.lora.conversion import _find_cutoff_index

    from lora_jax.audit.measure import energy_rank

    folder = _trained_lora(tmp_path / "lora", r=8, lora_alpha=16)
    matrices = write_audit([folder], tmp_path / "audit")["adapters"]["lora"]["matrices"]
    model = peft.PeftModel.from_pretrained(_llama(), folder)
    names = {"q_proj": "q", "v_proj": "v", "down_proj": "ffn_out"}
    checked = 0
    for name, layer in model.named_modules():
        if isinstance(layer, peft.tuners.lora.LoraLayer):
            parts = name.split(".")
            ours = matrices[f"layer_{parts[parts.index('layers') + 1]}/{names[parts[-1]]}"]
            s = torch.linalg.svd(layer.get_delta_weight("default").double())[1]
            assert energy_rank(ours["singular_values"], energy) == _find_cutoff_index(s, energy)
            checked += 1
    assert checked == len(matrices) > 0

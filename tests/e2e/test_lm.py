"""Causal-LM objective and pipeline (lora_jax.lm, CausalLMTokenize/Collate), the E2E builder,
and a generation sweep through the real entry point.

The E2E asset is not fetched in CI, so the sweep test writes a BIG-bench-shaped
`e2e_nlg/task.json` (1,000 references over 213 meaning representations made of words the tiny
tokenizer knows) into a temporary `LORA_JAX_CACHE`; the real builder prepares it offline, as it
would the real file.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import call_main

from lora_jax.data import get_task, make_loader
from lora_jax.data.e2e import E2EFormatError, assign_splits, parse_task_json
from lora_jax.data.pipeline import CausalLMCollate
from lora_jax.data.tokenize import CausalLMTokenize
from lora_jax.models.tiny import tiny_tokenizer
from lora_jax.train import lm

# Words the tiny tokenizer knows, so synthetic E2E text is not all [UNK].
_NAMES = ["the movie", "the film", "the story", "the plot", "the actor", "the music", "the scene"]
_FOODS = ["good", "bad", "great", "terrible", "fine", "funny", "boring", "dull", "fun", "slow"]
_AREAS = ["up", "down", "out", "over", "under"]


def synthetic_e2e(n_examples: int = 1000, n_mrs: int = 213) -> dict:
    """A BIG-bench-shaped e2e_nlg task file: `n_examples` references over `n_mrs` MRs."""
    examples = []
    for i in range(n_examples):
        j = i % n_mrs
        name, food, area = _NAMES[j % 7], _FOODS[(j // 7) % 10], _AREAS[(j // 70) % 5]
        target = (
            f"{name} is {food} and {area} ." if i < n_mrs else f"{name} is very {food} , {area} ."
        )
        examples.append(
            {
                "input": f"name: {name}, food: {food}, area: {area}",
                "target": target,
                "comment": f"e2e_nlg-test-{i}",
            }
        )
    return {"canary": "synthetic", "name": "e2e_nlg", "examples": examples}


def write_synthetic_e2e(cache: Path, **kw) -> Path:
    path = cache / "e2e_nlg" / "task.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(synthetic_e2e(**kw)))
    return path


# ---- loss -----------------------------------------------------------------------------------


def _case():
    ids = jnp.array([[5, 6, 7, 8, 9, 0], [5, 6, 10, 11, 0, 0]], jnp.int32)
    # Prompt = first 2 tokens of each row; target (+EOS) after; padding has mask 0.
    loss_mask = jnp.array([[0, 0, 1, 1, 1, 0], [0, 0, 1, 1, 0, 0]], jnp.int32)
    logits = jax.random.normal(jax.random.key(0), (2, 6, 16))
    return ids, loss_mask, logits


def test_loss_ignores_prompt_logits_and_padding():
    ids, loss_mask, logits = _case()
    base = lm.causal_lm_loss(logits, ids, loss_mask)
    # Logits at position t predict token t + 1: the prompt's last position (1) predicts the
    # first target token and counts; position 0 predicts a prompt token and must not count.
    # The padded tail positions (and the last position, which predicts nothing) must not count.
    noise = jax.random.normal(jax.random.key(1), logits.shape) * 50
    keep = jnp.zeros((2, 6, 1)).at[:, 0].set(1).at[0, 4:].set(1).at[1, 3:].set(1)
    assert float(lm.causal_lm_loss(logits + noise * keep, ids, loss_mask)) == pytest.approx(
        float(base), abs=1e-6
    )
    changed = jnp.zeros((2, 6, 1)).at[0, 1].set(1)
    assert abs(float(lm.causal_lm_loss(logits + noise * changed, ids, loss_mask)) - base) > 1e-3


def test_loss_matches_hand_computed_and_optax_label_smoothing():
    ids, loss_mask, logits = _case()
    logp = jax.nn.log_softmax(logits, -1)
    scored = [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2)]  # (row, position predicting t + 1)
    nll = np.mean([-float(logp[b, t, ids[b, t + 1]]) for b, t in scored])
    assert float(lm.causal_lm_loss(logits, ids, loss_mask)) == pytest.approx(nll, rel=1e-6)
    eps = 0.1
    smooth = optax.smooth_labels(jax.nn.one_hot(ids[:, 1:], 16), eps)
    per_token = optax.softmax_cross_entropy(logits[:, :-1], smooth)
    want = np.mean([float(per_token[b, t]) for b, t in scored])
    assert float(lm.causal_lm_loss(logits, ids, loss_mask, eps)) == pytest.approx(want, rel=1e-6)


# ---- text metrics ---------------------------------------------------------------------------


def test_rouge_l_matches_rouge_score():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    cases = [
        ("The Eagle is a cheap coffee shop.", ["Eagle is a cheap coffee shop near Burger King."]),
        ("Blue Spice serves French food", ["Blue Spice is French.", "French food: Blue Spice!"]),
        ("nothing in common", ["Zizzi is a pub."]),
        ("a a b a", ["a b a a", "b"]),
    ]
    for hyp, refs in cases:
        want = scorer.score_multi(refs, hyp)["rougeL"].fmeasure
        assert lm.rouge_l(hyp, refs) == pytest.approx(want, abs=1e-12), (hyp, refs)


def test_bleu_uses_every_reference():
    refs = [["the cat sat on the mat", "a cat is on the mat"], ["there is a dog in the park"]]
    perfect = lm.generation_metrics(["a cat is on the mat", "there is a dog in the park"], refs)
    assert perfect["bleu"] == pytest.approx(100.0) and perfect["rouge_l"] == pytest.approx(100.0)
    first_only = lm.generation_metrics(
        ["a cat is on the mat", "there is a dog in the park"], [[r[0]] for r in refs]
    )
    assert first_only["bleu"] < 100.0


# ---- pipeline -------------------------------------------------------------------------------


def test_causal_lm_batches_mask_prompt_and_pad_right():
    tok = tiny_tokenizer()
    tok.post_processor = None
    task = get_task("e2e")
    source = [
        {"meaning_representation": b"name: the movie", "target": b"the movie is good ."},
        {"meaning_representation": "name: a film", "target": "a film"},
    ]
    prompt = "{meaning_representation} |||"
    tokenize = CausalLMTokenize(tok, task, max_len=32, prompt=prompt, eos_id=3)
    first = tokenize.map(source[0])
    p_ids = tok.encode("name: the movie |||", add_special_tokens=False).ids
    t_ids = tok.encode("the movie is good .", add_special_tokens=False).ids
    assert first["input_ids"].tolist() == p_ids + t_ids + [3]
    assert first["loss_mask"].tolist() == [0] * len(p_ids) + [1] * (len(t_ids) + 1)
    batch = next(
        iter(
            make_loader(
                source,
                tok,
                task,
                batch_size=2,
                max_len=32,
                shuffle=False,
                pad="longest",
                prompt=prompt,
                eos_id=3,
                pad_id=0,
                shard_index=0,
                shard_count=1,
            )
        )
    )
    assert set(batch) == {"input_ids", "attention_mask", "loss_mask", "labels"}
    n0 = len(first["input_ids"])
    assert batch["input_ids"].shape == (2, n0)
    assert batch["attention_mask"][0].all() and batch["attention_mask"][1].tolist()[-1] == 0
    assert (batch["loss_mask"] <= batch["attention_mask"]).all()  # right padding never scored
    assert batch["labels"].tolist() == [len(t_ids) + 1, int(batch["loss_mask"][1].sum())]
    # Truncation keeps the prompt and shortens the target.
    short = CausalLMTokenize(tok, task, max_len=len(p_ids) + 2, prompt=prompt, eos_id=3)
    out = short.map(source[0])
    assert out["input_ids"].tolist() == p_ids + t_ids[:2]
    collate = CausalLMCollate(pad_id=0, max_len=32, pad="bucket", pad_multiple=16)
    assert collate([first])["input_ids"].shape == (1, 16)


def test_prompt_trailing_spaces_go_with_the_target():
    from lora_jax.data.tokenize import format_prompt

    assert format_prompt("{a} ||| ", {"a": b"x", "b": 1}) == ("x |||", " ")
    assert format_prompt("<u>{a}</u>\n", {"a": "x"}) == ("<u>x</u>\n", "")


def test_references_group_by_prompt():
    task = get_task("e2e")
    source = [
        {"meaning_representation": "a", "target": "x"},
        {"meaning_representation": "b", "target": "y"},
        {"meaning_representation": "a", "target": "z"},
        {"meaning_representation": "c", "target": "w"},
    ]
    assert lm.references_by_prompt(source, task, "{meaning_representation} ||| ") == [
        ("a |||", ["x", "z"]),
        ("b |||", ["y"]),
        ("c |||", ["w"]),
    ]
    assert len(lm.references_by_prompt(source, task, "{meaning_representation}", limit=2)) == 2


# ---- E2E builder ----------------------------------------------------------------------------


def test_parser_reads_synthetic_file_and_splits_by_mr(tmp_path):
    path = write_synthetic_e2e(tmp_path, n_examples=60, n_mrs=20)
    examples = parse_task_json(path, expected_count=60)
    assert len(examples) == 60 and examples[0].meaning_representation.startswith("name: ")
    splits = assign_splits([e.meaning_representation for e in examples])
    assert [len(splits[k]) for k in ("train", "validation", "test")] == [16, 2, 2]
    seen = [mr for mrs in splits.values() for mr in mrs]
    assert len(seen) == len(set(seen)) == 20  # every MR in exactly one split
    assert assign_splits([e.meaning_representation for e in reversed(examples)]) == splits


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["examples"][3].pop("target"), r"examples\[3\]: expected keys"),
        (lambda d: d["examples"][4].update(target=""), r"examples\[4\]: 'target' must be"),
        (lambda d: d["examples"][5].update(comment="x-1"), r"examples\[5\]: comment"),
        (lambda d: d["examples"][6].update(comment="e2e_nlg-test-0"), "duplicate id 0"),
        (lambda d: d["examples"].pop(), "9 examples, expected 10"),
        (lambda d: d.pop("examples"), "'examples' list"),
    ],
)
def test_parser_errors_name_the_file(tmp_path, mutate, message):
    data = synthetic_e2e(10, 4)
    mutate(data)
    path = tmp_path / "task.json"
    path.write_text(json.dumps(data))
    with pytest.raises(E2EFormatError, match=message) as err:
        parse_task_json(path, expected_count=10)
    assert str(path) in str(err.value)


def test_real_e2e_asset_if_fetched():
    from lora_jax.data import assets

    if not assets.e2e_source_path().is_file():
        pytest.skip("E2E asset not fetched (python -m lora_jax.data.assets e2e)")
    assets.ensure_e2e(fetch=False)
    from lora_jax.data import load_split

    sizes = {s: len(load_split("e2e", s)) for s in ("train", "validation", "test")}
    assert sizes == {"train": 810, "validation": 66, "test": 124}
    mrs = {
        s: {load_split("e2e", s)[i]["meaning_representation"] for i in range(n)}
        for s, n in sizes.items()
    }
    assert [len(m) for m in mrs.values()] == [171, 21, 21]
    assert not (mrs["train"] & mrs["validation"]) and not (mrs["train"] & mrs["test"])


# ---- adapters of decoders ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "key", "loadable"),
    [
        ("tiny_llama", "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight", True),
        ("tiny_gpt2", "base_model.model.transformer.h.1.attn.c_attn_v.lora_B.weight", False),
    ],
)
def test_decoder_adapter_export_round_trips(tmp_path, model, key, loadable):
    from safetensors.numpy import load_file

    from lora_jax.adapter_io import export_adapter
    from lora_jax.analysis.adapter_spectra import find_adapters
    from lora_jax.lora import LoRAConfig
    from lora_jax.models import load_decoder
    from lora_jax.peft_adapter import read_adapter

    lora = LoRAConfig(rank=2, targets="qvo")
    pre = load_decoder(model, lora, tokenizer=False)
    params = jax.tree.map(lambda x: x + 0.01 * jnp.arange(x.size).reshape(x.shape), pre.params)
    export_adapter(tmp_path, params, lora, pre)
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    assert key in tensors and tensors[key].shape[1] == 2  # lora_B (out, r), as PEFT
    adapter = read_adapter(tmp_path)
    adapters, config = adapter.factors, adapter.config
    assert config["task_type"] == "CAUSAL_LM"
    assert config["lora_jax"]["peft_loadable"] is loadable
    assert (adapter.family, adapter.model, adapter.base) == (model.split("_")[1], model, model)
    want = find_adapters(params)
    assert sorted(adapters) == sorted(want) and len(adapters) == 6
    for k, (a, b) in adapters.items():
        np.testing.assert_array_equal(a, want[k][0])
        np.testing.assert_array_equal(b, want[k][1])


# ---- the sweep entry point ------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm_sweep(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("lm_sweep")
    write_synthetic_e2e(cwd / "cache")
    sweep_dir = cwd / "sw"
    args = [
        "model=tiny_llama",
        "data=e2e",
        "rank=1,2",
        "debug=fast",
        "logger=none",
        "generate.num_beams=2",
        "generate.max_new_tokens=12",
        "optim.label_smoothing=0.1",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    proc = call_main(
        "experiments.sweep", *args, cwd=cwd, env={"LORA_JAX_CACHE": str(cwd / "cache")}
    )
    return sweep_dir, proc


@pytest.mark.slow
def test_generation_sweep_writes_bleu_adapters_and_analysis(lm_sweep):
    sweep_dir, proc = lm_sweep
    assert proc.stdout.strip().splitlines()[-1] == str((sweep_dir / "report.html").absolute())
    summary = json.loads((sweep_dir / "sweep_summary.json").read_text())
    assert sorted(e["metrics"]["rank"] for e in summary) == [1, 2]
    for entry in summary:
        m, run_dir = entry["metrics"], Path(entry["run_dir"])
        assert m["status"] == "complete" and m["task"] == "e2e" and m["main_metric"] == "bleu"
        assert 0.0 <= m["final"]["bleu"] <= 100.0 and 0.0 <= m["final"]["rouge_l"] <= 100.0
        assert np.isfinite(m["final"]["loss"]) and m["final"]["perplexity"] > 1.0
        assert m["final"]["decoded"] == 21  # the validation MRs
        lines = (run_dir / "generations.jsonl").read_text().splitlines()
        assert len(lines) == 21 and all(json.loads(x)["references"] for x in lines)
        config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
        assert config["task_type"] == "CAUSAL_LM" and config["r"] == m["rank"]
        assert config["target_modules"] == ["self_attn.q_proj", "self_attn.v_proj"]
        from safetensors.numpy import load_file

        keys = load_file(run_dir / "adapter" / "adapter_model.safetensors")
        assert "base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight" in keys
    report = (sweep_dir / "report.md").read_text()
    assert "| bleu |" in report and "r=1 vs r=2" in report
    analysis = json.loads((sweep_dir / "analysis.json").read_text())
    (pair,) = analysis["rank_pairs"]
    assert sorted(pair["phi"]) == ["layer_0/q", "layer_0/v", "layer_1/q", "layer_1/v"]
    run = next(iter(analysis["runs"].values()))
    assert run["adapters"]["layer_0/q"]["dw_vs_w"]["w_norm"] > 0

"""Build tests/fixtures/peft_*: LoRA adapters saved by PEFT itself, and the dW PEFT computes.

Each fixture is what `PeftModel.save_pretrained` writes for a small random transformers model
(no weights of the base are kept), plus `expected_dw.safetensors`: `<layer>.<target>` -> dW in
our (in, out) layout, from PEFT's own `get_delta_weight` (scaling included). The cases cover
what `lora_jax.adapter_io.read_adapter` must honour: the `bert.` prefix and a SEQ_CLS
classifier, a bare RoBERTa (no prefix) with rsLoRA and layers_to_transform, rank_pattern and
alpha_pattern, Llama, GPT-2's Conv1D (fan_in_fan_out) with a fused c_attn; and two adapters
it must refuse (DoRA, LoHa).

Run (needs the interop extra: `make test-interop` installs it):
    .venv/bin/python scripts/make_peft_fixtures.py
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import peft
import torch
import transformers
from peft import LoHaConfig, LoraConfig, get_peft_model
from safetensors.numpy import save_file

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
SMALL = dict(num_hidden_layers=2, num_attention_heads=4, intermediate_size=32, vocab_size=100)
OURS = {  # HF module (suffix) -> our target names
    "attention.self.query": ("q",),
    "attention.self.key": ("k",),
    "attention.self.value": ("v",),
    "attention.output.dense": ("o",),
    "intermediate.dense": ("ffn_in",),
    "output.dense": ("ffn_out",),
    "self_attn.q_proj": ("q",),
    "self_attn.v_proj": ("v",),
    "mlp.gate_proj": ("ffn_gate",),
    "mlp.down_proj": ("ffn_out",),
    "attn.c_attn": ("q", "k", "v"),
    "attn.c_proj": ("o",),
    "mlp.c_fc": ("ffn_in",),
}


def _models() -> dict:
    t = transformers
    return {
        "bert": t.BertForSequenceClassification(
            t.BertConfig(hidden_size=16, max_position_embeddings=64, **SMALL)
        ),
        "roberta": t.RobertaModel(
            t.RobertaConfig(hidden_size=16, max_position_embeddings=64, **SMALL),
            add_pooling_layer=False,
        ),
        "llama": t.LlamaForCausalLM(t.LlamaConfig(hidden_size=16, num_key_value_heads=2, **SMALL)),
        "gpt2": t.GPT2LMHeadModel(
            t.GPT2Config(n_embd=16, n_layer=2, n_head=4, n_positions=64, vocab_size=100)
        ),
    }


CASES = {
    # task_type SEQ_CLS: keys `bert.encoder...` and the classifier in modules_to_save.
    "peft_bert": (
        "bert",
        LoraConfig(
            task_type="SEQ_CLS",
            r=2,
            lora_alpha=8,
            target_modules=["query", "value"],
            rank_pattern={"layer.1.attention.self.query": 1},
            alpha_pattern={"value": 4},
            init_lora_weights=False,  # B random, not zero: dW != 0
        ),
    ),
    # A bare RobertaModel: keys without prefix; all six matrices of layer 1 only; rsLoRA.
    "peft_roberta": (
        "roberta",
        LoraConfig(
            task_type="FEATURE_EXTRACTION",
            r=3,
            lora_alpha=6,
            use_rslora=True,
            target_modules=["query", "key", "value", "dense"],
            layers_to_transform=[1],
            init_lora_weights=False,
        ),
    ),
    "peft_llama": (
        "llama",
        LoraConfig(
            task_type="CAUSAL_LM",
            r=2,
            lora_alpha=16,
            target_modules=["q_proj", "v_proj", "gate_proj", "down_proj"],
            rank_pattern={"gate_proj": 4},
            init_lora_weights=False,
        ),
    ),
    # Conv1D weights are (in, out): fan_in_fan_out; c_attn holds q, k and v side by side.
    "peft_gpt2": (
        "gpt2",
        LoraConfig(
            task_type="CAUSAL_LM",
            r=2,
            lora_alpha=4,
            target_modules=["c_attn", "attn.c_proj", "c_fc"],
            fan_in_fan_out=True,
            init_lora_weights=False,
        ),
    ),
    "peft_dora": (
        "bert",
        LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query"], use_dora=True),
    ),
    "peft_loha": ("bert", LoHaConfig(task_type="SEQ_CLS", r=2, target_modules=["query"])),
}
NAMES = {  # what base_model_name_or_path will say (a bare RoBERTa has no prefix to tell it)
    "bert": "tiny-random-bert",
    "roberta": "tiny-random-roberta",
    "llama": "tiny-random-llama",
    "gpt2": "tiny-random-gpt2",
}


def expected_dw(model) -> dict[str, np.ndarray]:
    """`<layer>.<target>` -> dW (in, out) from PEFT's `get_delta_weight` of every LoRA layer."""
    out = {}
    for name, module in model.named_modules():
        if not isinstance(module, peft.tuners.lora.LoraLayer):
            continue
        dw = module.get_delta_weight("default").detach().numpy()
        # PEFT returns dW in the base weight's layout: (out, in) for Linear, (in, out) for
        # Conv1D (fan_in_fan_out); ours is (in, out).
        dw = dw if module.fan_in_fan_out else dw.T
        layer = next(int(p) for p in name.split(".") if p.isdigit())
        suffix = next(s for s in OURS if name.endswith(s))
        targets = OURS[suffix]
        width = dw.shape[1] // len(targets)
        for j, target in enumerate(targets):
            out[f"{layer}.{target}"] = np.ascontiguousarray(dw[:, j * width : (j + 1) * width])
    return out


def main() -> None:
    for case, (family, config) in CASES.items():
        torch.manual_seed(0)
        model = _models()[family]
        model.name_or_path = NAMES[family]
        peft_model = get_peft_model(model, config)
        folder = OUT / case
        shutil.rmtree(folder, ignore_errors=True)
        peft_model.save_pretrained(folder)
        if isinstance(config, LoraConfig) and not config.use_dora:
            save_file(expected_dw(peft_model), folder / "expected_dw.safetensors")
        (folder / "README.md").unlink(missing_ok=True)  # PEFT's model card: noise here
        saved = json.loads((folder / "adapter_config.json").read_text())
        size = sum(f.stat().st_size for f in folder.iterdir())
        print(f"{folder.name}: {saved['peft_type']} {saved['task_type']}, {size} bytes")
    print(
        f"peft {peft.__version__}, transformers {transformers.__version__}, torch {torch.__version__}"
    )


if __name__ == "__main__":
    main()

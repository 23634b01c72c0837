"""Hugging Face module names inside one Transformer layer, per family: pure tables.

Checkpoint readers (`weights.params`, `weights.base_kernels`) and the PEFT adapter reader/writer
(`adapter_io`) share them, so a name is spelled once. Keys are our param paths inside a
`layer_<i>` scope; values the HF module path inside `<LAYERS[family]>.<i>.`. No imports of ours.
"""

from __future__ import annotations

# BERT, MiniLM, RoBERTa: `encoder.layer.<i>.` (after a `bert.`/`roberta.` prefix in *For* classes).
ENCODER_LAYER = {
    ("attention", "q"): "attention.self.query",
    ("attention", "k"): "attention.self.key",
    ("attention", "v"): "attention.self.value",
    ("attention", "o"): "attention.output.dense",
    ("attention", "layer_norm"): "attention.output.LayerNorm",
    ("ffn", "ffn_in"): "intermediate.dense",
    ("ffn", "ffn_out"): "output.dense",
    ("ffn", "layer_norm"): "output.LayerNorm",
}
# Llama (SmolLM2): `model.layers.<i>.`.
LLAMA_LAYER = {
    ("attention_norm",): "input_layernorm",
    ("attention", "q"): "self_attn.q_proj",
    ("attention", "k"): "self_attn.k_proj",
    ("attention", "v"): "self_attn.v_proj",
    ("attention", "o"): "self_attn.o_proj",
    ("ffn_norm",): "post_attention_layernorm",
    ("ffn", "ffn_gate"): "mlp.gate_proj",
    ("ffn", "ffn_in"): "mlp.up_proj",
    ("ffn", "ffn_out"): "mlp.down_proj",
}
# GPT-2: `transformer.h.<i>.` (`h.<i>.` in a bare GPT2Model). q/k/v are column slices of the
# fused Conv1D `attn.c_attn`, so they have no module of their own here.
GPT2_LAYER = {
    ("ln_1",): "ln_1",
    ("attention", "o"): "attn.c_proj",
    ("ln_2",): "ln_2",
    ("ffn", "ffn_in"): "mlp.c_fc",
    ("ffn", "ffn_out"): "mlp.c_proj",
}
GPT2_FUSED_QKV = "attn.c_attn"
# Column slice (of 3) of c_attn that holds q, k and v.
GPT2_QKV = {"q": 0, "k": 1, "v": 2}


def _targets(layer: dict[tuple[str, ...], str]) -> dict[str, str]:
    return {
        path[-1]: name
        for path, name in layer.items()
        if len(path) == 2 and path[-1] != "layer_norm"
    }


# Per family: our LoRA target name (q, k, v, o, ffn_in, ffn_out, ffn_gate) -> HF module.
TARGET_MODULES: dict[str, dict[str, str]] = {
    "bert": _targets(ENCODER_LAYER),
    "roberta": _targets(ENCODER_LAYER),
    "llama": _targets(LLAMA_LAYER),
    "gpt2": _targets(GPT2_LAYER),
}
# Per family: the HF path of the layer list in the model class a user loads (`BertModel`,
# `RobertaModel`, `LlamaForCausalLM`, `GPT2LMHeadModel`).
LAYERS = {
    "bert": "encoder.layer",
    "roberta": "encoder.layer",
    "llama": "model.layers",
    "gpt2": "transformer.h",
}

"""PEFT LoRA adapters, out and in: export ours so PEFT loads them, read any PEFT LoRA adapter.

`export_adapter` writes what `PeftModel.from_pretrained` loads, without a warning, on the
transformers class a PyTorch user would pick for the model we trained:

| ours                                     | task_type          | transformers class               |
|------------------------------------------|--------------------|----------------------------------|
| bert, pooling cls with pretrained pooler | SEQ_CLS            | BertForSequenceClassification    |
| roberta, pooling cls (dense+tanh head)   | SEQ_CLS            | RobertaForSequenceClassification |
| bert/roberta, any other head (MiniLM's   | FEATURE_EXTRACTION | BertModel / RobertaModel         |
|   mean pooling: sentence-transformers)   |                    |                                  |
| llama (SmolLM2)                          | CAUSAL_LM          | LlamaForCausalLM                 |
| gpt2                                     | CAUSAL_LM          | GPT2LMHeadModel (fan_in_fan_out) |

Tensors are PEFT's `base_model.model.<module>.lora_A.weight` (r, in) / `lora_B.weight` (out, r),
`<module>` relative to that class (`bert.encoder.layer.3.attention.self.query`, or
`encoder.layer.3...` on a bare BertModel); our `lora_a` (in, r) / `lora_b` (r, out) are their
transposes. A SEQ_CLS export carries the trained head as PEFT's `modules_to_save: [classifier]`
in HF's layout (so `num_labels` must match); every export also writes the head in our param
layout to `head.safetensors` (no HF class pools by mean, so FEATURE_EXTRACTION users apply it
themselves). GPT-2's q/k/v are slices of the fused Conv1D `attn.c_attn`, which PEFT cannot
adapt separately: they are written as `attn.c_attn_q` etc. and `peft_loadable` is false.
`adapter_config.json` holds PEFT's keys only (PEFT warns on unknown ones); our own (alpha,
scaling, targets, family, peft_loadable, model) go to `lora_jax.json` beside it.

`init_adapters` starts a run from any PEFT LoRA adapter, read by `lora_jax.peft_adapter` (which
refuses, by name, adapters whose B·A is not the weight update).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from flax import traverse_util
from safetensors.numpy import save_file

from lora_jax.lora import LORA_LEAVES, LoRAConfig, layer_index, lora_scale
from lora_jax.peft_adapter import (
    ADAPTER_FILE,
    CONFIG_FILE,
    HEAD_FILE,
    MODULES,
    OURS_FILE,
    ROOT,
    read_adapter,
)
from lora_jax.weights.hf_names import LAYERS

# ---- out -------------------------------------------------------------------------------------


def family_of(pretrained: Any) -> str:
    """bert, roberta, llama or gpt2: the family of a loaded encoder or decoder."""
    family = getattr(pretrained.config, "family", None)
    return family or ("gpt2" if type(pretrained.config).__name__ == "GPT2Config" else "llama")


def _task(family: str, pretrained: Any, head: dict[str, np.ndarray]) -> str:
    if family in ("llama", "gpt2"):
        return "CAUSAL_LM"
    config = pretrained.config
    # HF's classification classes: BERT pools with its pretrained pooler, RoBERTa with a
    # dense+tanh head on <s>; our head is theirs exactly then. Mean pooling has no HF class.
    hf_head = (family == "bert") == config.add_pooler
    return "SEQ_CLS" if pretrained.pooling == "cls" and hf_head and head else "FEATURE_EXTRACTION"


def _classifier(family: str, head: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Our head as HF's `classifier` tensors (PEFT `modules_to_save`), Linear weights (out, in)."""
    names = (
        {"out": "classifier"}
        if family == "bert"
        else {"dense": "classifier.dense", "out": "classifier.out_proj"}
    )
    out = {}
    for path, array in head.items():
        _, layer, leaf = path.split("/")
        name = f"{ROOT}{names[layer]}.{'weight' if leaf == 'kernel' else 'bias'}"
        out[name] = np.ascontiguousarray(array.T if leaf == "kernel" else array)
    return out


def export_adapter(
    out_dir: str | Path, trainable: dict, lora: LoRAConfig, pretrained: Any, base: str | None = None
) -> Path:
    """Write `trainable`'s adapters and head (see the module docstring); returns `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    family = family_of(pretrained)
    modules = MODULES[family]
    flat = {p: np.asarray(v) for p, v in traverse_util.flatten_dict(trainable).items()}
    head = {"/".join(p): v for p, v in flat.items() if p[0] not in ("encoder", "decoder")}
    task = _task(family, pretrained, head)
    layers = f"{family}.{LAYERS[family]}" if task == "SEQ_CLS" else LAYERS[family]
    tensors = _classifier(family, head) if task == "SEQ_CLS" else {}
    for path, array in flat.items():
        if path[-1] in LORA_LEAVES:
            side = "A" if path[-1] == "lora_a" else "B"
            key = f"{ROOT}{layers}.{layer_index(path)}.{modules[path[-2]]}.lora_{side}.weight"
            tensors[key] = np.ascontiguousarray(array.T)
    save_file(tensors, out_dir / ADAPTER_FILE, metadata={"format": "pt"})
    if head:
        save_file(head, out_dir / HEAD_FILE)
    ranks = {t: lora.rank_pattern.get(t, lora.rank) for t in lora.targets if t in modules}
    # PEFT knows alpha/r and alpha/sqrt(r) (use_rslora); a scale of 1 ("none") is alpha = r.
    none = lora.scaling == "none"
    config = {
        "peft_type": "LORA",
        "task_type": task,
        # What a PEFT user loads: a hub id or a path (`models.hub_id`); default the source.
        "base_model_name_or_path": base or str(pretrained.source),
        "r": lora.rank,
        "lora_alpha": float(lora.rank) if none else float(lora.alpha),
        "use_rslora": lora.scaling == "alpha_over_sqrt_r",
        "lora_dropout": lora.dropout,
        # PEFT matches these as suffixes of module names.
        "target_modules": sorted(modules[t] for t in ranks),
        "layers_to_transform": list(lora.layers) if lora.layers is not None else None,
        "rank_pattern": {modules[t]: r for t, r in ranks.items() if r != lora.rank},
        "alpha_pattern": {
            modules[t]: float(r) for t, r in ranks.items() if none and r != lora.rank
        },
        "modules_to_save": ["classifier"] if task == "SEQ_CLS" else None,
        "bias": "none",
        "fan_in_fan_out": family == "gpt2",  # GPT-2's Conv1D weights are (in, out)
        "inference_mode": True,
    }
    ours = {
        "alpha": lora.alpha,
        "scaling": lora.scaling,
        "targets": list(lora.targets),
        "family": family,
        # GPT-2's q/k/v adapters sit on slices of the fused c_attn: not PEFT-loadable.
        "peft_loadable": not (family == "gpt2" and set(lora.targets) & set("qkv")),
        "model": str(pretrained.source),
    }
    if family in ("bert", "roberta"):
        ours["pooling"] = pretrained.pooling
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    (out_dir / OURS_FILE).write_text(json.dumps(ours, indent=2))
    return out_dir


# ---- in --------------------------------------------------------------------------------------


def init_adapters(trainable: dict, adapter_dir: str | Path, lora: LoRAConfig | None = None) -> dict:
    """`trainable` with every lora_a/lora_b replaced by the adapter's (e.g. MRPC starting from
    the MNLI adapter, or from any PEFT LoRA adapter). The two must adapt the same matrices at the
    same ranks. With `lora` (the run's config), lora_b is rescaled where the adapter's scale
    differs from the run's, so the run starts at the adapter's dW."""
    adapter = read_adapter(adapter_dir)
    flat = traverse_util.flatten_dict(trainable)
    wanted = {(layer_index(p), p[-2]) for p in flat if p[-1] in LORA_LEAVES and len(p) > 1}
    if wanted != set(adapter.factors):
        raise ValueError(
            f"the adapter in {adapter_dir} adapts {sorted(adapter.factors)}, this run "
            f"{sorted(wanted)}; allowed: the same targets and layers. Use the targets and layers "
            "of that adapter."
        )
    for path, leaf in flat.items():
        if path[-1] in LORA_LEAVES and len(path) > 1:
            key = (layer_index(path), path[-2])
            a, b = adapter.factors[key]
            new = a if path[-1] == "lora_a" else b
            if new.shape != leaf.shape:
                raise ValueError(
                    f"{'/'.join(path)} has shape {new.shape} in {adapter_dir} and {leaf.shape} in "
                    "this run; allowed: the same rank. Set rank to that adapter's rank."
                )
            if lora is not None and path[-1] == "lora_b":
                ratio = adapter.scales[key] / lora_scale(a.shape[1], lora.alpha, lora.scaling)
                new = new if ratio == 1.0 else new * ratio
            flat[path] = np.asarray(new, dtype=leaf.dtype)
    return traverse_util.unflatten_dict(flat)

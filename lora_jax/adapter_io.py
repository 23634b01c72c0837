"""Export trained adapters in the Hugging Face PEFT layout, and read them back for analysis.

`adapter/adapter_model.safetensors` holds `base_model.model.<layers>.<i>.<module>.lora_A.weight`
(r, in) and `lora_B.weight` (out, r), as PEFT saves a LoRA on the HF model class; `<layers>` and
`<module>` depend on the family:

    bert/roberta  (`*ForSequenceClassification`): `<family>.encoder.layer`, `attention.self.query`
    llama         (`LlamaForCausalLM`): `model.layers`, `self_attn.q_proj`, `mlp.up_proj`, ...
    gpt2          (`GPT2LMHeadModel`):  `transformer.h`, `attn.c_attn_q` (`_k`, `_v`),
                  `attn.c_proj`, `mlp.c_fc`, `mlp.c_proj`

`adapter_config.json` holds r, lora_alpha, target_modules and use_rslora. So PyTorch users can
load it with `PeftModel.from_pretrained` on the same base -- except GPT-2's q/k/v: HF fuses them
into one Conv1D `attn.c_attn` and PEFT cannot put three separate adapters on one module, so
those are written in OUR layout (`attn.c_attn_q` etc., each (r, d) / (d, r) as PEFT's, the
delta of c_attn's column slice j) and `adapter_config.json` says `"peft_loadable": false`
(GPT-2 adapters on `o`/`ffn_*` only are plain PEFT with `fan_in_fan_out: true`).
The task head (which PEFT cannot describe for mean pooling) goes to `head.safetensors` in our
own param layout. Our `lora_a` (in, r) is PEFT's lora_A transposed; likewise `lora_b`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from lora_jax.lora import LORA_LEAVES, LoRAConfig, layer_index
from lora_jax.weights import HF_TARGET_MODULES
from lora_jax.weights_decoder import _GPT2_LAYER, _LLAMA_LAYER

ADAPTER_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
HEAD_FILE = "head.safetensors"
_PEFT_ROOT = "base_model.model."
# Per family: the HF module (inside one layer) of each LoRA target.
_MODULES = {
    "bert": HF_TARGET_MODULES,
    "llama": {mods[1]: name for mods, name in _LLAMA_LAYER.items() if len(mods) == 2},
    "gpt2": {mods[1]: name for mods, name in _GPT2_LAYER.items() if len(mods) == 2}
    | {t: f"attn.c_attn_{t}" for t in "qkv"},
}
_MODULES["roberta"] = _MODULES["bert"]
_LAYERS = {"llama": "model.layers", "gpt2": "transformer.h"}  # encoders: <family>.encoder.layer
_TARGET_OF_MODULE = {m: t for modules in _MODULES.values() for t, m in modules.items()}
_PEFT_KEY = re.compile(
    r"(?:encoder\.layer|model\.layers|transformer\.h)\.(\d+)\.(.+)\.lora_([AB])\.weight$"
)


def family_of(pretrained: Any) -> str:
    """bert, roberta, llama or gpt2: the family of a loaded encoder or decoder."""
    from lora_jax.models.gpt2 import GPT2Config

    family = getattr(pretrained.config, "family", None)
    return family or ("gpt2" if isinstance(pretrained.config, GPT2Config) else "llama")


def _peft_alpha(lora: LoRAConfig, rank: int) -> float:
    # PEFT knows alpha/r and alpha/sqrt(r) (use_rslora); scale 1 ("none") is alpha = r.
    return float(rank) if lora.scaling == "none" else float(lora.alpha)


def export_adapter(out_dir: str | Path, trainable: dict, lora: LoRAConfig, pretrained: Any) -> Path:
    """Write `trainable`'s adapters (PEFT layout, see the module docstring) and head (ours)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    family = family_of(pretrained)
    modules = _MODULES[family]
    layers = _LAYERS.get(family, f"{family}.encoder.layer")
    tensors, head = {}, {}
    for path, leaf in traverse_util.flatten_dict(trainable).items():
        array = np.asarray(leaf)
        if path[-1] in LORA_LEAVES:
            layer = layer_index(path)
            side = "A" if path[-1] == "lora_a" else "B"
            key = f"{_PEFT_ROOT}{layers}.{layer}.{modules[path[-2]]}.lora_{side}.weight"
            tensors[key] = np.ascontiguousarray(array.T)
        elif path[0] not in ("encoder", "decoder"):
            head["/".join(path)] = array
    save_file(tensors, out_dir / ADAPTER_FILE, metadata={"format": "pt"})
    if head:
        save_file(head, out_dir / HEAD_FILE)
    ranks = {t: lora.rank_pattern.get(t, lora.rank) for t in lora.targets}
    decoder = family in _LAYERS
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM" if decoder else "SEQ_CLS",
        "base_model_name_or_path": str(pretrained.source),
        "r": lora.rank,
        "lora_alpha": _peft_alpha(lora, lora.rank),
        "use_rslora": lora.scaling == "alpha_over_sqrt_r",
        "lora_dropout": lora.dropout,
        # PEFT matches these as suffixes of module names.
        "target_modules": sorted(modules[t] for t in lora.targets),
        "layers_to_transform": list(lora.layers) if lora.layers is not None else None,
        "rank_pattern": {modules[t]: r for t, r in ranks.items() if r != lora.rank},
        "alpha_pattern": {},
        "bias": "none",
        "fan_in_fan_out": family == "gpt2",  # GPT-2's Conv1D weights are (in, out)
        "inference_mode": True,
        # Ours, for analysis: the exact scaling name and alpha (PEFT ignores unknown keys).
        "lora_jax": {
            "alpha": lora.alpha,
            "scaling": lora.scaling,
            "targets": list(lora.targets),
            "family": family,
            # GPT-2's q/k/v adapters sit on slices of the fused c_attn: not PEFT-loadable.
            "peft_loadable": not (family == "gpt2" and set(lora.targets) & set("qkv")),
        },
    }
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    return out_dir


def load_adapter(
    adapter_dir: str | Path,
) -> tuple[dict[tuple[int, str], tuple[np.ndarray, np.ndarray]], dict]:
    """Read an exported adapter: {(layer, target): (lora_a (in, r), lora_b (r, out))}, config."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / ADAPTER_FILE).is_file():
        raise FileNotFoundError(
            f"{adapter_dir / ADAPTER_FILE} does not exist: is this a finished run's adapter/?"
        )
    config = json.loads((adapter_dir / CONFIG_FILE).read_text())
    parts: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for key, array in load_file(adapter_dir / ADAPTER_FILE).items():
        m = _PEFT_KEY.search(key)
        if m is None:
            raise ValueError(f"{adapter_dir / ADAPTER_FILE}: unexpected tensor {key!r}")
        layer, module, side = int(m[1]), m[2], m[3]
        if module not in _TARGET_OF_MODULE:
            raise ValueError(
                f"{adapter_dir / ADAPTER_FILE}: {module!r} is not one of {sorted(_TARGET_OF_MODULE)}"
            )
        parts.setdefault((layer, _TARGET_OF_MODULE[module]), {})[side] = array.T
    return {k: (v["A"], v["B"]) for k, v in sorted(parts.items())}, config


def adapter_folder(path: str | Path) -> Path:
    """The exported adapter at `path`: an `adapter/` folder or a run folder holding one."""
    path = Path(path)
    for folder in (path, path / "adapter"):
        if (folder / ADAPTER_FILE).is_file():
            return folder
    raise FileNotFoundError(
        f"lora.init_from={str(path)!r} holds no {ADAPTER_FILE}; allowed: a finished run's folder "
        "or its adapter/ folder. Train that run first (e.g. the MNLI sweep of Table 2)."
    )


def init_adapters(trainable: dict, adapter_dir: str | Path) -> dict:
    """`trainable` with every lora_a/lora_b replaced by the exported adapter's (e.g. MRPC
    starting from the MNLI adapter). The two must adapt the same matrices at the same ranks."""
    loaded, _ = load_adapter(adapter_folder(adapter_dir))
    flat = traverse_util.flatten_dict(trainable)
    wanted = {(layer_index(p), p[-2]) for p in flat if p[-1] in LORA_LEAVES and len(p) > 1}
    if wanted != set(loaded):
        raise ValueError(
            f"the adapter in {adapter_dir} adapts {sorted(loaded)}, this run {sorted(wanted)}; "
            "allowed: the same targets and layers. Use the targets and layers of that run."
        )
    for path, leaf in flat.items():
        if path[-1] in LORA_LEAVES and len(path) > 1:
            a, b = loaded[(layer_index(path), path[-2])]
            new = a if path[-1] == "lora_a" else b
            if new.shape != leaf.shape:
                raise ValueError(
                    f"{'/'.join(path)} has shape {new.shape} in {adapter_dir} and {leaf.shape} in "
                    "this run; allowed: the same rank. Set rank to that run's rank."
                )
            flat[path] = np.asarray(new, dtype=leaf.dtype)
    return traverse_util.unflatten_dict(flat)

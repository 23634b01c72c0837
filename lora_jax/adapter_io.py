"""Export trained adapters in the Hugging Face PEFT layout, and read them back for analysis.

`adapter/adapter_model.safetensors` holds `base_model.model.<prefix>encoder.layer.<i>.<module>.
lora_A.weight` (r, in) and `lora_B.weight` (out, r), as PEFT saves a LoRA on
`BertForSequenceClassification`; `adapter_config.json` holds r, lora_alpha, target_modules and
use_rslora. So PyTorch users can load it with `PeftModel.from_pretrained` on the same base.
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

from lora_jax.lora import LoRAConfig
from lora_jax.weights import HF_TARGET_MODULES, hf_name

ADAPTER_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
HEAD_FILE = "head.safetensors"
_PEFT_ROOT = "base_model.model."
_TARGET_OF_MODULE = {module: target for target, module in HF_TARGET_MODULES.items()}
_PEFT_KEY = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.lora_([AB])\.weight$")


def _peft_alpha(lora: LoRAConfig, rank: int) -> float:
    # PEFT knows alpha/r and alpha/sqrt(r) (use_rslora); scale 1 ("none") is alpha = r.
    return float(rank) if lora.scaling == "none" else float(lora.alpha)


def export_adapter(out_dir: str | Path, trainable: dict, lora: LoRAConfig, pretrained: Any) -> Path:
    """Write `trainable`'s adapters (PEFT layout) and head (ours) into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = f"{_PEFT_ROOT}{pretrained.config.family}."
    tensors, head = {}, {}
    for path, leaf in traverse_util.flatten_dict(trainable).items():
        array = np.asarray(leaf)
        if path[-1] in ("lora_a", "lora_b") and path[0] == "encoder":
            module, _ = hf_name((*path[1:-1], "kernel"))
            module = module.removesuffix(".weight")
            side = "A" if path[-1] == "lora_a" else "B"
            tensors[f"{prefix}{module}.lora_{side}.weight"] = np.ascontiguousarray(array.T)
        elif path[0] != "encoder":
            head["/".join(path)] = array
    save_file(tensors, out_dir / ADAPTER_FILE, metadata={"format": "pt"})
    if head:
        save_file(head, out_dir / HEAD_FILE)
    ranks = {t: lora.rank_pattern.get(t, lora.rank) for t in lora.targets}
    config = {
        "peft_type": "LORA",
        "task_type": "SEQ_CLS",
        "base_model_name_or_path": str(pretrained.source),
        "r": lora.rank,
        "lora_alpha": _peft_alpha(lora, lora.rank),
        "use_rslora": lora.scaling == "alpha_over_sqrt_r",
        "lora_dropout": lora.dropout,
        # PEFT matches these as suffixes of module names.
        "target_modules": sorted(HF_TARGET_MODULES[t] for t in lora.targets),
        "layers_to_transform": list(lora.layers) if lora.layers is not None else None,
        "rank_pattern": {HF_TARGET_MODULES[t]: r for t, r in ranks.items() if r != lora.rank},
        "alpha_pattern": {},
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        # Ours, for analysis: the exact scaling name and alpha (PEFT ignores unknown keys).
        "lora_jax": {"alpha": lora.alpha, "scaling": lora.scaling, "targets": list(lora.targets)},
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

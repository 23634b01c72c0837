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

`read_adapter` reads any PEFT LoRA adapter of a family we know (bert/roberta with or without
the `bert.`/`roberta.` prefix, llama, gpt2 incl. a fused `c_attn`) into our orientation and
per-module scales (rank_pattern, alpha_pattern, use_rslora as PEFT applies them).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from lora_jax.lora import LORA_LEAVES, LoRAConfig, layer_index, lora_scale
from lora_jax.weights.hf_names import GPT2_FUSED_QKV, LAYERS, TARGET_MODULES

ADAPTER_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
HEAD_FILE = "head.safetensors"
OURS_FILE = "lora_jax.json"
_ROOT = "base_model.model."
# Per family: target -> module inside a layer; GPT-2's q/k/v in our non-PEFT layout.
_MODULES = {
    **TARGET_MODULES,
    "gpt2": TARGET_MODULES["gpt2"] | {t: f"attn.c_attn_{t}" for t in "qkv"},
}
_TARGETS = {f: {m: (t,) for t, m in mods.items()} for f, mods in _MODULES.items()}
_TARGETS["gpt2"][GPT2_FUSED_QKV] = ("q", "k", "v")  # PEFT on the fused c_attn: one A, B split
# `<layers>.<i>.<module>.lora_<A|B>.weight`, with the layer lists of the *For* and bare classes.
_KEY = re.compile(
    r"(?:(?P<root>bert|roberta|transformer|model)\.)?(?P<layers>encoder\.layer|layers|h)"
    r"\.(?P<layer>\d+)\.(?P<module>.+)\.lora_(?P<side>[AB])\.weight"
)
# Layer list -> (families, the prefixes its *For* classes put before it).
_FAMILIES_OF_LAYERS = {
    "encoder.layer": (("bert", "roberta"), (None, "bert", "roberta")),
    "layers": (("llama",), (None, "model")),
    "h": (("gpt2",), (None, "transformer")),
}
_KNOWN = (
    "bert/roberta `[bert.|roberta.]encoder.layer.<i>.<m>` with <m> in "
    + ", ".join(TARGET_MODULES["bert"].values())
    + "; llama `model.layers.<i>.<m>` with <m> in "
    + ", ".join(TARGET_MODULES["llama"].values())
    + "; gpt2 `[transformer.]h.<i>.<m>` with <m> in "
    + ", ".join([GPT2_FUSED_QKV, *TARGET_MODULES["gpt2"].values()])
)


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter in our orientation: dW[(layer, target)] = scale * lora_a @ lora_b (in, out).

    Attributes:
        folder: the folder holding adapter_model.safetensors.
        factors: (layer, target) -> (lora_a (in, r), lora_b (r, out)), float32, sorted by key;
            targets in our names (q, k, v, o, ffn_in, ffn_out, ffn_gate).
        scales: (layer, target) -> the scale of lora_a @ lora_b.
        family: bert, roberta, llama or gpt2.
        base: base_model_name_or_path as written.
        model: the registry name or path we trained from (our adapters), else None.
        config: adapter_config.json as a dict; for our adapters with `lora_jax.json` under
            "lora_jax".
    """

    folder: Path
    factors: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]]
    scales: dict[tuple[int, str], float]
    family: str
    base: str
    model: str | None
    config: dict


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
        name = f"{_ROOT}{names[layer]}.{'weight' if leaf == 'kernel' else 'bias'}"
        out[name] = np.ascontiguousarray(array.T if leaf == "kernel" else array)
    return out


def export_adapter(
    out_dir: str | Path, trainable: dict, lora: LoRAConfig, pretrained: Any, base: str | None = None
) -> Path:
    """Write `trainable`'s adapters and head (see the module docstring); returns `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    family = family_of(pretrained)
    modules = _MODULES[family]
    flat = {p: np.asarray(v) for p, v in traverse_util.flatten_dict(trainable).items()}
    head = {"/".join(p): v for p, v in flat.items() if p[0] not in ("encoder", "decoder")}
    task = _task(family, pretrained, head)
    layers = f"{family}.{LAYERS[family]}" if task == "SEQ_CLS" else LAYERS[family]
    tensors = _classifier(family, head) if task == "SEQ_CLS" else {}
    for path, array in flat.items():
        if path[-1] in LORA_LEAVES:
            side = "A" if path[-1] == "lora_a" else "B"
            key = f"{_ROOT}{layers}.{layer_index(path)}.{modules[path[-2]]}.lora_{side}.weight"
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


def adapter_folder(path: str | Path, *, setting: str = "lora.init_from") -> Path:
    """The adapter at `path`: a folder holding adapter_model.safetensors, or a run folder
    holding such an `adapter/`. `setting` names where `path` came from, for the error."""
    path = Path(path)
    for folder in (path, path / "adapter"):
        if (folder / ADAPTER_FILE).is_file():
            return folder
    state = "does not exist" if not path.exists() else f"holds no {ADAPTER_FILE}"
    raise FileNotFoundError(
        f"{setting}={str(path)!r} {state}; allowed: a PEFT LoRA adapter folder ({CONFIG_FILE} + "
        f"{ADAPTER_FILE}, as `save_pretrained` writes it) or a finished run's folder holding "
        "adapter/. Pass such a folder, or train that run first (e.g. the MNLI sweep of Table 2)."
    )


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    # PEFT's `get_pattern_key`: the first key that is a regex matching the end of the module
    # name at a dot boundary.
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _check_config(where: Path, config: dict) -> None:
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise ValueError(
            f"{where}: peft_type={peft_type!r}; allowed: LORA. Only LoRA adapters can be analysed "
            "(dW = B A of rank r); LoHa, LoKr, IA3 and the other PEFT methods are no such product."
            " Pass an adapter trained with peft.LoraConfig."
        )
    if config.get("use_dora"):
        raise ValueError(
            f"{where}: use_dora=True; allowed: use_dora=False. DoRA rescales each column of W + BA"
            " by a learned magnitude, so its update is not the low-rank dW = BA. Train with "
            "LoraConfig(use_dora=False)."
        )
    if config.get("lora_bias"):
        raise ValueError(
            f"{where}: lora_bias=True; allowed: lora_bias=False. A bias on lora_B is no part of "
            "the low-rank dW = BA. Train with LoraConfig(lora_bias=False)."
        )


def _family(root: str | None, layers: str, module: str, config: dict, ours: dict | None) -> str:
    families, roots = _FAMILIES_OF_LAYERS[layers]
    families = [f for f in families if module in _TARGETS[f]]
    if not families or root not in roots:
        return ""
    if root in ("bert", "roberta"):
        return root
    if ours and ours.get("family") in families:
        return ours["family"]
    # Bare encoders carry no prefix: RoBERTa only when the base model says so.
    base = str(config.get("base_model_name_or_path") or "").lower()
    return "roberta" if "roberta" in base and "roberta" in families else families[0]


def read_adapter(folder: str | Path) -> Adapter:
    """Read a PEFT LoRA adapter (ours or PEFT's own `save_pretrained`) from `folder` or from
    a run folder holding `adapter/`.

    Example:
        >>> a = read_adapter("outputs/runs/r8/adapter")  # doctest: +SKIP
        >>> dw = a.scales[(0, "q")] * a.factors[(0, "q")][0] @ a.factors[(0, "q")][1]  # (in, out)
    """
    folder = adapter_folder(folder, setting="adapter")
    if not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"{folder} has {ADAPTER_FILE} but no {CONFIG_FILE}; allowed: both, as PEFT's "
            "`save_pretrained` writes them. Save the adapter again with `save_pretrained`."
        )
    config = json.loads((folder / CONFIG_FILE).read_text())
    _check_config(folder / CONFIG_FILE, config)
    ours = config.get("lora_jax")  # adapters exported before lora_jax.json existed
    if (folder / OURS_FILE).is_file():
        ours = json.loads((folder / OURS_FILE).read_text())
        config = {**config, "lora_jax": ours}
    saved = tuple(config.get("modules_to_save") or ())
    layers_ok = config.get("layers_to_transform")
    layers_ok = {layers_ok} if isinstance(layers_ok, int) else set(layers_ok or ())
    parts: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    families, module_of = set(), {}
    for key, array in load_file(folder / ADAPTER_FILE).items():
        name = key.removeprefix(_ROOT)
        if name.split(".")[0] in saved or ".modules_to_save." in name:
            continue  # PEFT's fully trained modules (the classifier): not a LoRA factor
        m = _KEY.fullmatch(name)
        family = m and _family(m["root"], m["layers"], m["module"], config, ours)
        if not family:
            raise ValueError(
                f"{folder / ADAPTER_FILE}: tensor {key!r} is on a module lora_jax does not know; "
                f"allowed: LoRA on {_KNOWN}. Train the adapter with target_modules among these."
            )
        layer = int(m["layer"])
        if layers_ok and layer not in layers_ok:
            raise ValueError(
                f"{folder / ADAPTER_FILE}: tensor {key!r} is in layer {layer}, but "
                f"layers_to_transform={sorted(layers_ok)}; allowed: those layers. The adapter "
                "files disagree: save the adapter again with PEFT's `save_pretrained`."
            )
        families.add(family)
        module = name[: -len(".lora_A.weight")]
        module_of[(layer, m["module"])] = module
        parts.setdefault((layer, m["module"]), {})[m["side"]] = np.asarray(array, np.float32)
    if len(families) > 1:
        raise ValueError(
            f"{folder / ADAPTER_FILE} mixes modules of {sorted(families)}; allowed: one family."
        )
    family = next(iter(families), str((ours or {}).get("family", "")))
    factors, scales = {}, {}
    for (layer, module), ab in sorted(parts.items()):
        if len(ab) < 2:
            have, miss = ("A", "B") if "A" in ab else ("B", "A")
            raise ValueError(
                f"{folder / ADAPTER_FILE}: {module_of[(layer, module)]}.lora_{have}.weight has no "
                f"lora_{miss}.weight; allowed: both factors of every adapted module. The file is "
                "incomplete: save the adapter again with PEFT's `save_pretrained`."
            )
        a, b = ab["A"].T, ab["B"].T  # ours: (in, r), (r, out)
        rank = a.shape[1]
        scale = _scale(folder, config, ours, module_of[(layer, module)], rank)
        targets = _TARGETS[family][module]
        width = b.shape[1] // len(targets)  # a fused c_attn: q, k, v share A, each its B slice
        for j, target in enumerate(targets):
            factors[(layer, target)] = (a, np.ascontiguousarray(b[:, j * width : (j + 1) * width]))
            scales[(layer, target)] = scale
    order = sorted(factors)
    return Adapter(
        folder=folder,
        factors={k: factors[k] for k in order},
        scales={k: scales[k] for k in order},
        family=family,
        base=str(config.get("base_model_name_or_path") or ""),
        model=ours.get("model") if ours else None,
        config=config,
    )


def _scale(folder: Path, config: dict, ours: dict | None, module: str, rank: int) -> float:
    if ours:
        return lora_scale(rank, ours["alpha"], ours["scaling"])
    r = _pattern_value(config.get("rank_pattern") or {}, module, config.get("r", 8))
    if r != rank:
        raise ValueError(
            f"{folder / ADAPTER_FILE}: {module} has rank {rank}, but {CONFIG_FILE} gives it "
            f"r={r} (r and rank_pattern); allowed: the same. Save the adapter again with PEFT."
        )
    alpha = _pattern_value(config.get("alpha_pattern") or {}, module, config.get("lora_alpha", 8))
    return float(alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r)


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

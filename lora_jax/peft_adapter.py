"""Read any PEFT LoRA adapter folder, one module at a time, without JAX.

`open_adapter` reads `adapter_config.json` and the tensors' names and shapes (no data) and
checks, before any long work, that B·A is the weight update of a known family: LoRA only (not
DoRA, LoHa, IA3...), no bias on B, no initialisation that starts B·A at part of W (PiSSA,
OLoRA, CorDA, LoRA-GA, MiCA, LoftQ), every factor paired, every rank as the config says.
`AdapterFile.factors()` then yields each matrix's factors in our orientation, so an 8B
adapter is measured in the memory of one module; `read_adapter` holds them all.

Tensors are PEFT's `base_model.model.<module>.lora_A.weight` (r, in) / `lora_B.weight` (out, r);
our `lora_a` (in, r) / `lora_b` (r, out) are their transposes. Families: bert/roberta with or
without the `bert.`/`roberta.` prefix, llama, gpt2 incl. a fused `c_attn` (q, k, v share A,
each its slice of B). Scales as PEFT applies them: r, lora_alpha, rank_pattern, alpha_pattern
(EVA's per-layer ranks included), use_rslora; our own adapters carry theirs in `lora_jax.json`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

from lora_jax.runs.layout import ADAPTER_DIR, RunFolder
from lora_jax.scaling import lora_scale
from lora_jax.weights.hf_names import GPT2_FUSED_QKV, TARGET_MODULES
from lora_jax.weights.safetensors import SafetensorsReader

Key = tuple[int, str]  # (layer, target)
ADAPTER_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
HEAD_FILE = "head.safetensors"
OURS_FILE = "lora_jax.json"
ROOT = "base_model.model."
# Per family: target -> module inside a layer; GPT-2's q/k/v in our non-PEFT layout.
MODULES = {
    **TARGET_MODULES,
    "gpt2": TARGET_MODULES["gpt2"] | {t: f"attn.c_attn_{t}" for t in "qkv"},
}
_TARGETS = {f: {m: (t,) for t, m in mods.items()} for f, mods in MODULES.items()}
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
# PEFT initialisations (`init_lora_weights`) that do not start B·A at 0: the saved B·A is not
# the weight update (PiSSA and OLoRA start it at W's top or QR part and subtract that from W;
# CorDA, LoRA-GA and MiCA likewise from data; LoftQ at the quantisation residual). Value: the
# method's name, and whether PEFT's save-time conversion (`path_initial_model_for_weight_
# conversion`: the update as a plain LoRA of rank 2r) exists for it.
_NOT_AN_UPDATE = {
    "pissa": ("PiSSA", True),
    "olora": ("OLoRA", True),
    "corda": ("CorDA", True),
    "lora_ga": ("LoRA-GA", True),
    "mica": ("MiCA", False),
    "loftq": ("LoftQ", False),
}


def matrix_name(key: Key) -> str:
    """`layer_<i>/<target>`: how analysis.json and audit.json name an adapted matrix."""
    return f"layer_{key[0]}/{key[1]}"


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
    factors: dict[Key, tuple[np.ndarray, np.ndarray]]
    scales: dict[Key, float]
    family: str
    base: str
    model: str | None
    config: dict


@dataclass(frozen=True)
class _Module:
    """One adapted PEFT module: its tensors, rank, scale and the targets it holds."""

    name: str  # e.g. model.layers.3.self_attn.q_proj
    a: str  # tensor names
    b: str
    rank: int
    scale: float
    targets: tuple[str, ...]


@dataclass(frozen=True)
class AdapterFile:
    """An adapter folder, checked and indexed, with no tensor read yet (`open_adapter`).

    Attributes:
        folder, family, base, model, config: as in `Adapter`.
        scales: (layer, target) -> scale, sorted by key.
        ranks: (layer, target) -> r.
        shapes: (layer, target) -> (in, out) of dW.
        modules: (layer, target) -> the PEFT module holding its factors.
    """

    folder: Path
    family: str
    base: str
    model: str | None
    config: dict
    scales: dict[Key, float]
    ranks: dict[Key, int]
    shapes: dict[Key, tuple[int, int]]
    modules: dict[Key, _Module]  # a fused c_attn's q, k and v share one

    def factors(self) -> Iterator[tuple[Key, np.ndarray, np.ndarray]]:
        """(key, lora_a (in, r), lora_b (r, out)) float32 for every matrix in key order, reading
        one module at a time (a fused c_attn once for its q, k and v)."""
        tensors = SafetensorsReader(self.folder / ADAPTER_FILE)
        last, a, b = None, None, None
        for key, module in self.modules.items():
            if module is not last:
                last, a, b = module, _f32(tensors[module.a]).T, _f32(tensors[module.b]).T
            if len(module.targets) == 1:
                yield key, a, b
                continue
            j, width = module.targets.index(key[1]), b.shape[1] // len(module.targets)
            yield key, a, np.ascontiguousarray(b[:, j * width : (j + 1) * width])


def _f32(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float32)


def adapter_folder(path: str | Path, *, setting: str = "lora.init_from") -> Path:
    """The adapter at `path`: a folder holding adapter_model.safetensors, or a run folder
    holding such an `adapter/`. `setting` names where `path` came from, for the error."""
    path = Path(path)
    for folder in (path, RunFolder(path).adapter):
        if (folder / ADAPTER_FILE).is_file():
            return folder
    state = "does not exist" if not path.exists() else f"holds no {ADAPTER_FILE}"
    raise FileNotFoundError(
        f"{setting}={str(path)!r} {state}; allowed: a PEFT LoRA adapter folder ({CONFIG_FILE} + "
        f"{ADAPTER_FILE}, as `save_pretrained` writes it) or a finished run's folder holding "
        f"{ADAPTER_DIR}/. Pass such a folder, or train that run first (e.g. the MNLI sweep of Table 2)."
    )


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    # PEFT's `get_pattern_key`: the first key that is a regex matching the end of the module
    # name at a dot boundary.
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def check_config(where: Path, config: dict) -> None:
    """Refuse, by name and with the fix, an adapter whose B·A is not the low-rank update."""
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
    init = config.get("init_lora_weights", True)
    found = [v for k, v in _NOT_AN_UPDATE.items() if str(init).lower().startswith(k)]
    if isinstance(init, str) and found:
        method, convertible = found[0]
        fix = (
            "Save it as a plain LoRA with PEFT: `model.save_pretrained(out, path_initial_model_"
            "for_weight_conversion=<the adapter saved before training>)` writes its update as a "
            "LoRA of rank 2r, which lora_jax reads."
            if convertible
            else f"PEFT has no conversion for {method}; its update is W_after - W_before, which "
            "a full-update analysis of the two merged weights measures."
        )
        raise ValueError(
            f"{where}: init_lora_weights={init!r} ({method}); allowed: true, false, 'gaussian', "
            f"'eva', 'orthogonal' (B·A starts at 0, so B·A is the weight update). {method} starts "
            f"B·A at part of W and takes that part out of W, so the saved B·A is not the update "
            f"(a PiSSA adapter's B·A holds ~31% of ||W|| with no training at all). {fix}"
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


def _read_config(folder: Path) -> tuple[dict, dict | None]:
    if not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"{folder} has {ADAPTER_FILE} but no {CONFIG_FILE}; allowed: both, as PEFT's "
            "`save_pretrained` writes them. Save the adapter again with `save_pretrained`."
        )
    config = json.loads((folder / CONFIG_FILE).read_text())
    check_config(folder / CONFIG_FILE, config)
    ours = config.get("lora_jax")  # adapters exported before lora_jax.json existed
    if (folder / OURS_FILE).is_file():
        ours = json.loads((folder / OURS_FILE).read_text())
        config = {**config, "lora_jax": ours}
    return config, ours


def _tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    with safe_open(path, framework="numpy") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118


def open_adapter(folder: str | Path) -> AdapterFile:
    """Check and index a PEFT LoRA adapter (ours or PEFT's own `save_pretrained`) in `folder`
    or in a run folder holding `adapter/`, reading no tensor data.

    Raises:
        ValueError, FileNotFoundError: what is wrong, which file, what is allowed and the fix.
    """
    folder = adapter_folder(folder, setting="adapter")
    config, ours = _read_config(folder)
    saved = tuple(config.get("modules_to_save") or ())
    layers_ok = config.get("layers_to_transform")
    layers_ok = {layers_ok} if isinstance(layers_ok, int) else set(layers_ok or ())
    parts: dict[tuple[int, str], dict[str, str]] = {}
    families, module_of = set(), {}
    shapes = _tensor_shapes(folder / ADAPTER_FILE)
    for key in shapes:
        name = key.removeprefix(ROOT)
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
        module_of[(layer, m["module"])] = name[: -len(".lora_A.weight")]
        parts.setdefault((layer, m["module"]), {})[m["side"]] = key
    if len(families) > 1:
        raise ValueError(
            f"{folder / ADAPTER_FILE} mixes modules of {sorted(families)}; allowed: one family."
        )
    family = next(iter(families), str((ours or {}).get("family", "")))
    modules, scales, ranks, dims = {}, {}, {}, {}
    for (layer, module), ab in sorted(parts.items()):
        if len(ab) < 2:
            have, miss = ("A", "B") if "A" in ab else ("B", "A")
            raise ValueError(
                f"{folder / ADAPTER_FILE}: {module_of[(layer, module)]}.lora_{have}.weight has no "
                f"lora_{miss}.weight; allowed: both factors of every adapted module. The file is "
                "incomplete: save the adapter again with PEFT's `save_pretrained`."
            )
        (rank, fan_in), (fan_out, _) = shapes[ab["A"]], shapes[ab["B"]]
        targets = _TARGETS[family][module]
        scale = _scale(folder, config, ours, module_of[(layer, module)], rank)
        adapted = _Module(module_of[(layer, module)], ab["A"], ab["B"], rank, scale, targets)
        for target in targets:
            modules[(layer, target)] = adapted
            scales[(layer, target)], ranks[(layer, target)] = scale, rank
            dims[(layer, target)] = (fan_in, fan_out // len(targets))
    order = sorted(scales)
    return AdapterFile(
        folder=folder,
        family=family,
        base=str(config.get("base_model_name_or_path") or ""),
        model=ours.get("model") if ours else None,
        config=config,
        scales={k: scales[k] for k in order},
        ranks=ranks,
        shapes=dims,
        modules={k: modules[k] for k in order},
    )


def read_adapter(folder: str | Path) -> Adapter:
    """Read a PEFT LoRA adapter (ours or PEFT's own `save_pretrained`) from `folder` or from
    a run folder holding `adapter/`, every factor in memory.

    Example:
        >>> a = read_adapter("outputs/runs/r8/adapter")  # doctest: +SKIP
        >>> dw = a.scales[(0, "q")] * a.factors[(0, "q")][0] @ a.factors[(0, "q")][1]  # (in, out)
    """
    index = open_adapter(folder)
    return Adapter(
        folder=index.folder,
        factors={key: (a, b) for key, a, b in index.factors()},
        scales=index.scales,
        family=index.family,
        base=index.base,
        model=index.model,
        config=index.config,
    )

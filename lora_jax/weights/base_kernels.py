"""The frozen kernels W that LoRA adapters were added to, read by tensor name from a checkpoint.

The analysis needs W (dW vs W, Table 7) but never the model: for each adapted (layer, target)
it reads that one tensor by its Hugging Face name (`lora_jax.weights.hf_names`) from the base
checkpoint, a HF folder (`model.safetensors` or shards), one `.safetensors` file or a GGUF
file, and returns it in our (in, out) layout. A random-init base (the tiny test models) has no
checkpoint: its run saves the adapted kernels as `base_kernels.safetensors` (`save_kernels`),
read here the same way.

Example:
    >>> read_kernels(minilm_folder, "bert", [(0, "q"), (5, "v")])[(0, "q")].shape  # doctest: +SKIP
    (384, 384)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flax import traverse_util
from safetensors import safe_open
from safetensors.numpy import save_file

from lora_jax.lora import layer_index
from lora_jax.runs.layout import BASE_KERNELS_FILE
from lora_jax.weights.hf_names import GPT2_FUSED_QKV, GPT2_QKV, LAYERS, TARGET_MODULES
from lora_jax.weights.safetensors import SafetensorsReader

Key = tuple[int, str]  # (layer, target)
_TARGETS = {t for modules in TARGET_MODULES.values() for t in modules} | set(GPT2_QKV)


def _hf_tensor(family: str, key: Key) -> tuple[str, int | None]:
    """The HF tensor name (no model-class prefix) behind an adapted kernel, and for GPT-2's
    q/k/v the column slice of the fused `c_attn` it is."""
    layer, target = key
    if family not in LAYERS:
        raise ValueError(f"family={family!r} is not supported; allowed: {', '.join(LAYERS)}.")
    if family == "gpt2" and target in GPT2_QKV:
        return f"h.{layer}.{GPT2_FUSED_QKV}.weight", GPT2_QKV[target]
    modules = TARGET_MODULES[family]
    if target not in modules:
        raise ValueError(
            f"target {target!r} has no {family} module; allowed: {', '.join(modules)}."
        )
    return f"{LAYERS[family]}.{layer}.{modules[target]}.weight", None


def _our_layout(family: str, array: np.ndarray, part: int | None) -> np.ndarray:
    """HF layout -> ours (in, out): Linear weights are (out, in); GPT-2's Conv1D are (in, out)."""
    if family != "gpt2":
        return array.T
    if part is None:
        return array
    n = array.shape[1] // 3
    return array[:, part * n : (part + 1) * n]


def _match(names: Iterable[str], wanted: str) -> str | None:
    """The checkpoint name that is `wanted` behind any prefix (`bert.`, `transformer.`...)."""
    hits = [n for n in names if n == wanted or n.endswith("." + wanted)]
    return min(hits, key=len) if hits else None


def read_kernels(source: str | Path, family: str, keys: Iterable[Key]) -> dict[Key, np.ndarray]:
    """{(layer, target): W (in, out) float32} for `keys`, read from the checkpoint at `source`.

    Args:
        source: a HF model folder, a `.safetensors` file, a `.gguf` file, or a run's
            `base_kernels.safetensors` (our layout, from `save_kernels`).
        family: bert, roberta, llama or gpt2 (how tensors are named and laid out).
        keys: the adapted (layer, target) pairs.

    Raises:
        FileNotFoundError: `source` is missing or holds no weights.
        KeyError: a kernel is not in the checkpoint (the message names it and the file).
    """
    source, keys = Path(source), list(keys)
    if not source.exists():
        raise FileNotFoundError(f"base checkpoint {source} does not exist.")
    if source.name == BASE_KERNELS_FILE:
        return _read_saved(source, keys)
    wanted = {key: _hf_tensor(family, key) for key in keys}
    if source.suffix == ".gguf":
        from lora_jax.weights.gguf import read_gguf

        _, reader = read_gguf(source, {name for name, _ in wanted.values()})
    else:
        reader = SafetensorsReader(source)  # lazy: reads only the tensors asked for
    out = {}
    for key, (name, part) in wanted.items():
        full = _match(reader, name)
        if full is None:
            raise KeyError(
                f"the base checkpoint {source} has no tensor {name!r} (layer {key[0]}, target "
                f"{key[1]!r}); is it the base these adapters were trained on?"
            )
        out[key] = np.ascontiguousarray(_our_layout(family, reader[full], part), np.float32)
    return out


def load_kernels(path: str | Path) -> dict[Key, np.ndarray]:
    """Every kernel of a file `save_kernels` wrote: {(layer, target): array (in, out)}."""
    out = {}
    with safe_open(path, framework="numpy") as f:
        for name in f.keys():  # noqa: SIM118 (safe_open is not a Mapping)
            layer, target = name.split("/")
            out[(int(layer.removeprefix("layer_")), target)] = f.get_tensor(name)
    return dict(sorted(out.items()))


def _read_saved(path: Path, keys: list[Key]) -> dict[Key, np.ndarray]:
    saved = load_kernels(path)
    missing = [k for k in keys if k not in saved]
    if missing:
        raise KeyError(f"{path} has no kernel for {missing}; it holds {sorted(saved)}.")
    return {k: saved[k] for k in keys}


def layer_kernels(params: Mapping[str, Any]) -> dict[Key, np.ndarray]:
    """{(layer, target): kernel (in, out)} of every matrix in `params` that a LoRA could adapt."""
    flat = traverse_util.flatten_dict(dict(params))
    return {
        (layer_index(path), path[-2]): np.array(leaf, copy=True)  # not a view of a device buffer
        for path, leaf in flat.items()
        if path[-1] == "kernel"
        and len(path) > 1
        and path[-2] in _TARGETS
        and layer_index(path) is not None
    }


def save_kernels(path: str | Path, kernels: Mapping[Key, np.ndarray], family: str) -> Path:
    """Write `kernels` (our layout; `load_kernels` reads them back): the base W_0 of a run
    without a checkpoint, or a full fine-tuning update. `family` goes to the file's metadata."""
    path = Path(path)
    tensors = {f"layer_{layer}/{t}": np.ascontiguousarray(w) for (layer, t), w in kernels.items()}
    save_file(tensors, path, metadata={"family": family})
    return path


def saved_family(path: str | Path) -> str:
    """The model family a `save_kernels` file was written for."""
    with safe_open(path, framework="numpy") as f:
        return (f.metadata() or {})["family"]

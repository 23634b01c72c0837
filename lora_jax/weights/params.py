"""Our param paths -> Hugging Face tensor names, per family, and filling a param tree from them.

A name map takes a param path (e.g. `("layer_3", "attention", "q", "kernel")`) to a `Source`:
the HF tensor's name, the transform to our layout and its description. HF Linear weights are
(out, in) and are transposed to Flax's (in, out); GPT-2's Conv1D weights are already (in, out)
and its fused `c_attn` (d, 3d) gives q, k, v as column slices. `fill_params` reads every
non-LoRA leaf through a map, one tensor at a time, checking each shape against the template.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import flax.traverse_util as tu
import jax
import jax.numpy as jnp
import numpy as np

from lora_jax.lora import LORA_LEAVES
from lora_jax.weights.hf_names import ENCODER_LAYER, GPT2_LAYER, GPT2_QKV, LLAMA_LAYER

log = logging.getLogger(__name__)
# (HF name, transform to our layout, what the transform is in words) of one of our params.
Source = tuple[str, Callable[[np.ndarray], np.ndarray], str]
# Puts one host array (a checkpoint tensor in our layout and dtype) on its device(s).
Place = Callable[[np.ndarray], jax.Array]
# The tensor whose name, stripped, gives the prefix HF puts before a family's names
# (`bert.`/`roberta.` in *For* classes, `transformer.` in GPT2LMHeadModel).
ENCODER_ANCHOR = "embeddings.word_embeddings.weight"
GPT2_ANCHOR = "wte.weight"

_LEAF = {"kernel": "weight", "bias": "bias", "scale": "weight", "embedding": "weight"}
# Old checkpoints (TF-converted BERT) name LayerNorm params gamma/beta.
_ALIASES = {"LayerNorm.weight": "LayerNorm.gamma", "LayerNorm.bias": "LayerNorm.beta"}


class CheckpointError(ValueError):
    """A checkpoint lacks a tensor the model needs, or a tensor's shape does not fit."""


def _same(a: np.ndarray) -> np.ndarray:
    return a


def _transpose(a: np.ndarray) -> np.ndarray:
    return a.T


def _layer(mod: str) -> str | None:
    m = re.fullmatch(r"layer_(\d+)", mod)
    return m[1] if m else None


def hf_name(path: tuple[str, ...]) -> tuple[str, bool]:
    """The HF name (without `bert.`/`roberta.` prefix) of an encoder param, and whether the
    tensor is transposed. `path` is relative to the encoder, e.g. ("layer_3", "attention", "q",
    "kernel") -> ("encoder.layer.3.attention.self.query.weight", True).
    """
    *mods, leaf = path
    if leaf not in _LEAF:
        raise KeyError(f"No HF name for param {'/'.join(path)}")
    suffix, transpose = _LEAF[leaf], leaf == "kernel"
    if mods[0] == "embeddings":
        module = {"layer_norm": "LayerNorm"}.get(mods[1], mods[1])
        return f"embeddings.{module}.{suffix}", transpose
    if mods[0] == "pooler":
        return f"pooler.dense.{suffix}", transpose
    if (i := _layer(mods[0])) and tuple(mods[1:]) in ENCODER_LAYER:
        return f"encoder.layer.{i}.{ENCODER_LAYER[tuple(mods[1:])]}.{suffix}", transpose
    raise KeyError(f"No HF name for param {'/'.join(path)}")


def encoder_source(path: tuple[str, ...]) -> Source:
    """`hf_name` as a `Source` (BERT, MiniLM, RoBERTa; path relative to the encoder)."""
    name, transpose = hf_name(path)
    return (name, _transpose, "transposed") if transpose else (name, _same, "as is")


def llama_source(path: tuple[str, ...]) -> Source:
    """The HF tensor behind a Llama param, e.g. ("decoder", "layer_0", "attention", "q",
    "kernel") -> ("model.layers.0.self_attn.q_proj.weight", transpose, "transposed")."""
    *mods, leaf = path
    suffix = _LEAF[leaf]
    fn, how = (_transpose, "transposed") if leaf == "kernel" else (_same, "as is")
    if tuple(mods) == ("lm_head",):
        return f"lm_head.{suffix}", fn, how
    if mods[0] == "decoder":
        mods = mods[1:]
        if mods in (["embed_tokens"], ["norm"]):
            return f"model.{mods[0]}.{suffix}", fn, how
        if (i := _layer(mods[0])) and tuple(mods[1:]) in LLAMA_LAYER:
            return f"model.layers.{i}.{LLAMA_LAYER[tuple(mods[1:])]}.{suffix}", fn, how
    raise KeyError(f"No HF name for param {'/'.join(path)}")


def gpt2_source(path: tuple[str, ...]) -> Source:
    """The HF tensor behind a GPT-2 param (names without the `transformer.` prefix).

    Conv1D weights are (in, out) as ours; q/k/v are column slices of `attn.c_attn`.
    """
    *mods, leaf = path
    suffix = _LEAF[leaf]
    mods = mods[1:] if mods[0] == "decoder" else mods
    if mods in (["wte"], ["wpe"], ["ln_f"]):
        return f"{mods[0]}.{suffix}", _same, "as is"
    if i := _layer(mods[0]):
        sub = tuple(mods[1:])
        if sub in GPT2_LAYER:
            return f"h.{i}.{GPT2_LAYER[sub]}.{suffix}", _same, "as is"
        if len(sub) == 2 and sub[0] == "attention" and sub[1] in GPT2_QKV:
            j = GPT2_QKV[sub[1]]

            def part(a: np.ndarray, j: int = j) -> np.ndarray:
                n = a.shape[-1] // 3
                return a[..., j * n : (j + 1) * n]

            return f"h.{i}.attn.c_attn.{suffix}", part, f"slice {j} of 3 along the last axis"
    raise KeyError(f"No HF name for param {'/'.join(path)}")


def find_prefix(names: Collection[str], anchor: str, kind: str, where: Any = "") -> str:
    """The shortest prefix before `anchor` among the tensor `names` (e.g. "roberta.")."""
    hits = [k[: -len(anchor)] for k in names if k.endswith(anchor)]
    if not hits:
        raise CheckpointError(
            f"No '*{anchor}' tensor in {where or 'the checkpoint'}: not a {kind} checkpoint."
        )
    return min(hits, key=len)


def find_tensor(names: Collection[str], prefix: str, name: str) -> str | None:
    """The checkpoint name of HF tensor `name` behind `prefix`, under its old alias if need be."""
    for cand in (name, *[name.replace(a, b) for a, b in _ALIASES.items() if name.endswith(a)]):
        if prefix + cand in names:
            return prefix + cand
    return None


def fill_params(
    reader: Mapping[str, np.ndarray],
    template: Mapping[str, Any],
    source: Callable[[tuple[str, ...]], Source],
    prefix: str = "",
    where: str | Path = "the checkpoint",
    place: Place | None = None,
) -> dict:
    """Fill every non-LoRA leaf of `template` (arrays or ShapeDtypeStructs) from `reader`.

    Tensors are read, converted and placed one at a time, each host copy dropped before the
    next read, so the host never holds more than one tensor of the model. `place` puts each
    converted host array on its device(s) (e.g. sharded over a mesh, `lora_jax.train.parallel
    .placer`); the default is `jnp.asarray` (the default device).

    Returns a flat `{path: jax.Array}`. A tensor that is missing or does not fit raises
    `CheckpointError` naming it, the param, both shapes and its file (`reader.file_of` when the
    reader has one, else `where`). Unused checkpoint tensors are logged.
    """
    names = set(reader)  # `in reader` would read the tensor (Mapping.__contains__)
    file_of = getattr(reader, "file_of", lambda _: where)
    out: dict[tuple[str, ...], jax.Array] = {}
    used = set()
    for path, want in tu.flatten_dict(dict(template)).items():
        if path[-1] in LORA_LEAVES:
            continue
        name, fn, how = source(path)
        key, expected = find_tensor(names, prefix, name), tuple(want.shape)
        if key is None:
            raise CheckpointError(
                f"Tensor {prefix + name!r} (for param {'/'.join(path)}, shape {expected} after "
                f"{how}) is missing from {file_of(prefix + name)}. Is config.json from the same "
                "checkpoint?"
            )
        raw = reader[key]
        array = fn(raw)
        if tuple(array.shape) != expected:
            hf = f"; {expected[::-1]} before transposing" if fn is _transpose else ""
            raise CheckpointError(
                f"Tensor {key!r} in {file_of(key)} has shape {tuple(raw.shape)}, giving "
                f"{tuple(array.shape)} ({how}), but param {'/'.join(path)} expects "
                f"{expected}{hf}."
            )
        out[path] = (place or jnp.asarray)(np.asarray(array, dtype=want.dtype))
        used.add(key)
        del raw, array
    if unused := sorted(names - used):
        log.info("Checkpoint tensors not used by the model: %s", ", ".join(unused))
    return out

"""Decoder checkpoints -> Flax param trees: HF folders (GPT-2, Llama) and GGUF files (SmolLM2).

Both sources end as `{HF tensor name: np.ndarray}` (a GGUF file through
`lora_jax.gguf_weights.read_gguf`), then one explicit name map per family fills every non-LoRA
leaf of the model's abstract param tree, checking each shape and naming the tensor, the file
and both shapes on a mismatch (`lora_jax.weights.CheckpointError`).

Layouts: HF Linear weights are (out, in) and are transposed to Flax's (in, out); GPT-2's
Conv1D weights are already (in, out). GPT-2's fused `c_attn` (d, 3d) is split into three
`LoRADense` kernels `q`, `k`, `v` (d, d each), so each slice gets its own adapter, as loralib's
`MergedLinear(enable_lora=[True, True, True])` does.

Example:
    pre = load_decoder("smollm2", LoRAConfig(rank=8, targets="qv"))
    ids = jnp.asarray([pre.tokenizer.encode("The capital of France is").ids])
    logits = pre.module.apply({"params": pre.params}, ids)  # (1, L, 49152)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import flax.traverse_util as tu
import jax
import jax.numpy as jnp
import numpy as np

from lora_jax.hf_names import GPT2_LAYER, GPT2_QKV, LLAMA_LAYER
from lora_jax.lora import LORA_LEAVES, LoRAConfig
from lora_jax.models.gpt2 import GPT2Config, GPT2LMHeadModel
from lora_jax.models.llama import LlamaConfig, LlamaForCausalLM
from lora_jax.weights import CheckpointError, load_hf_folder, load_tokenizer

_LEAF = {"kernel": "weight", "bias": "bias", "scale": "weight", "embedding": "weight"}

# (name, transform) of the HF tensor behind one of our params.
Source = tuple[str, Callable[[np.ndarray], np.ndarray], str]


def _same(a: np.ndarray) -> np.ndarray:
    return a


def _transpose(a: np.ndarray) -> np.ndarray:
    return a.T


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
        if (m := re.fullmatch(r"layer_(\d+)", mods[0])) and tuple(mods[1:]) in LLAMA_LAYER:
            return f"model.layers.{m[1]}.{LLAMA_LAYER[tuple(mods[1:])]}.{suffix}", fn, how
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
    if m := re.fullmatch(r"layer_(\d+)", mods[0]):
        sub = tuple(mods[1:])
        if sub in GPT2_LAYER:
            return f"h.{m[1]}.{GPT2_LAYER[sub]}.{suffix}", _same, "as is"
        if len(sub) == 2 and sub[0] == "attention" and sub[1] in GPT2_QKV:
            j = GPT2_QKV[sub[1]]

            def part(a: np.ndarray, j: int = j) -> np.ndarray:
                n = a.shape[-1] // 3
                return a[..., j * n : (j + 1) * n]

            return f"h.{m[1]}.attn.c_attn.{suffix}", part, f"slice {j} of 3 along the last axis"
    raise KeyError(f"No HF name for param {'/'.join(path)}")


def fill_params(
    reader: Mapping[str, np.ndarray],
    template: Mapping[str, Any],
    source: Callable[[tuple[str, ...]], Source],
    prefix: str = "",
    where: str = "the checkpoint",
) -> dict:
    """Fill every non-LoRA leaf of `template` (arrays or ShapeDtypeStructs) from `reader`.

    Returns a flat `{path: jax.Array}`; raises `CheckpointError` (tensor, file, both shapes).
    """
    out = {}
    names = set(reader)  # `in reader` would read the tensor (Mapping.__contains__)
    for path, want in tu.flatten_dict(dict(template)).items():
        if path[-1] in LORA_LEAVES:
            continue
        name, fn, how = source(path)
        key = prefix + name
        if key not in names:
            raise CheckpointError(
                f"Tensor {key!r} (for param {'/'.join(path)}, shape {tuple(want.shape)} after "
                f"{how}) is missing from {where}. Is config.json from the same checkpoint?"
            )
        raw = reader[key]
        array = fn(raw)
        if tuple(array.shape) != tuple(want.shape):
            raise CheckpointError(
                f"Tensor {key!r} in {where} has shape {tuple(raw.shape)}, giving "
                f"{tuple(array.shape)} ({how}), but param {'/'.join(path)} expects "
                f"{tuple(want.shape)}."
            )
        out[path] = jnp.asarray(array, dtype=want.dtype)
    return out


def _gpt2_prefix(reader: Mapping[str, Any]) -> str:
    hits = [k[: -len("wte.weight")] for k in reader if k.endswith("wte.weight")]
    if not hits:
        raise CheckpointError("No '*wte.weight' tensor: not a GPT-2 checkpoint.")
    return min(hits, key=len)


class PretrainedDecoder(NamedTuple):
    """A causal LM ready to fine-tune with LoRA.

    Attributes:
        module: a `LlamaForCausalLM` or `GPT2LMHeadModel`.
        params: pretrained base weights + fresh LoRA (`lora_b = 0`).
        tokenizer: a `tokenizers.Tokenizer`, or None (`tokenizer=False`).
        config: the `LlamaConfig` / `GPT2Config`.
        head_rules: () -- decoders have no new head; only adapters train.
        source: the registry name or path it came from.
    """

    module: Any
    params: dict
    tokenizer: Any
    config: Any
    head_rules: tuple[str, ...]
    source: str


def _family_of(hf_config: Mapping[str, Any]) -> str:
    mt = hf_config.get("model_type")
    if mt == "gpt2":
        return "gpt2"
    if mt in ("llama", "mistral", "qwen2"):
        return "llama"
    raise ValueError(f"model_type={mt!r} is not a supported decoder; allowed: gpt2, llama.")


def build_decoder(family: str, config: Any, lora: LoRAConfig):
    """The causal-LM module of a family ("gpt2" or "llama") for `config`."""
    if family == "gpt2":
        return GPT2LMHeadModel(config, lora)
    if family == "llama":
        return LlamaForCausalLM(config, lora)
    raise ValueError(f"family={family!r} is not a decoder family; allowed: gpt2, llama.")


def decoder_from_tensors(
    hf_config: Mapping[str, Any],
    tensors: Mapping[str, np.ndarray],
    lora: LoRAConfig,
    rng: jax.Array | None = None,
    where: str = "the checkpoint",
) -> tuple[Any, dict, Any]:
    """`(module, params, config)` from a HF config dict and `{HF name: array}`."""
    rng = jax.random.key(0) if rng is None else rng
    family = _family_of(hf_config)
    if family == "gpt2":
        config, source = GPT2Config.from_hf(hf_config), gpt2_source
        prefix = _gpt2_prefix(tensors)
    else:
        config, source, prefix = LlamaConfig.from_hf(hf_config), llama_source, ""
        if not config.tie_word_embeddings and "lm_head.weight" not in set(tensors):
            config = LlamaConfig.from_hf(hf_config, tie_word_embeddings=True)
    module = build_decoder(family, config, lora)
    ids = jnp.zeros((1, 2), jnp.int32)

    def init(key):
        return module.init(key, ids)["params"]

    template = jax.eval_shape(init, rng)

    def fresh(key):  # only LoRA leaves: XLA drops the unused base-weight init
        return {p: v for p, v in tu.flatten_dict(init(key)).items() if p[-1] in LORA_LEAVES}

    flat = fill_params(tensors, template, source, prefix, where)
    flat.update(jax.jit(fresh)(rng))
    return module, tu.unflatten_dict(flat), config


def load_decoder(
    name_or_path: str | Path,
    lora: LoRAConfig,
    *,
    rng: jax.Array | None = None,
    tokenizer: bool = True,
) -> PretrainedDecoder:
    """Build a causal LM from a registry name (`lora_jax.models.DECODER_MODELS`: smollm2, gpt2,
    gpt2_medium, gpt2_large, tiny_gpt2, tiny_llama), a HF folder (config.json +
    model.safetensors [+ tokenizer.json]) or a `.gguf` file (llama architecture)."""
    from lora_jax.models import DECODER_MODELS, get_decoder_spec, resolve_decoder

    name = str(name_or_path)
    if name not in DECODER_MODELS and not Path(name).exists():
        get_decoder_spec(name)  # raises listing the valid names
    location = resolve_decoder(name) if name in DECODER_MODELS else Path(name)
    tok = None
    if location is None:  # random tiny model
        from lora_jax.models.bert import tiny_tokenizer

        family = DECODER_MODELS[name].family
        config = GPT2Config.tiny() if family == "gpt2" else LlamaConfig.tiny()
        module = build_decoder(family, config, lora)
        ids = jnp.zeros((1, 2), jnp.int32)
        key = jax.random.key(0) if rng is None else rng
        params = jax.jit(lambda k: module.init(k, ids)["params"])(key)
        if tokenizer:
            tok = tiny_tokenizer()
            tok.post_processor = None  # no [CLS]/[SEP] wrapping for a decoder
        return PretrainedDecoder(module, params, tok, config, (), name)
    if location.suffix == ".gguf":
        from lora_jax.gguf_weights import gguf_tokenizer, read_gguf

        hf_config, tensors = read_gguf(location)
        module, params, config = decoder_from_tensors(hf_config, tensors, lora, rng, str(location))
        del tensors
        tok = gguf_tokenizer(location) if tokenizer else None
    else:
        hf_config, reader = load_hf_folder(location)
        module, params, config = decoder_from_tensors(
            hf_config, reader, lora, rng, str(location / "model.safetensors")
        )
        tok = load_tokenizer(location) if tokenizer else None
    return PretrainedDecoder(module, params, tok, config, (), name)

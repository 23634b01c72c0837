"""Loading any registered or local model ready to fine-tune: `load_model` -> `Pretrained`
(module, params with the checkpoint's base weights and fresh LoRA/head leaves, tokenizer).

Example (ids, mask: int arrays (B, L) from `pre.tokenizer`):

    pre = load_pretrained("minilm", LoRAConfig(rank=8, targets="qv"), num_labels=2)
    logits = pre.module.apply({"params": pre.params}, ids, mask)  # (B, 2)
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import flax.traverse_util as tu
import jax
import jax.numpy as jnp
import numpy as np

from lora_jax.lora import LORA_LEAVES, LoRAConfig, check_dtype
from lora_jax.models.bert import POOLINGS
from lora_jax.models.registry import (
    FAMILIES,
    MODELS,
    family_module,
    get_spec,
    is_decoder,
    resolve_folder,
)
from lora_jax.models.tiny import tiny_tokenizer
from lora_jax.weights.gguf import gguf_tokenizer, read_gguf
from lora_jax.weights.hf_folder import load_hf_folder, load_tokenizer
from lora_jax.weights.params import Place


class Pretrained(NamedTuple):
    """A model ready to fine-tune (encoder or decoder).

    Attributes:
        module: a `BertForSequenceClassification`, `GPT2LMHeadModel` or `LlamaForCausalLM`.
        params: the full param tree: pretrained base weights, freshly initialised LoRA
            (`lora_a`, `lora_b = 0`) and, for an encoder, the new head under `head/`.
        tokenizer: a `tokenizers.Tokenizer`, or None if `tokenizer=False` was passed.
        config: the family's config (`BertConfig`, `GPT2Config`, `LlamaConfig`).
        head_rules: param-path prefixes that are trained fully: ("head/",) for an encoder,
            () for a decoder (only adapters train).
        pooling: "cls" or "mean" for an encoder, "none" for a decoder.
        source: the registry name or path it came from.
    """

    module: Any
    params: dict
    tokenizer: Any
    config: Any
    head_rules: tuple[str, ...]
    pooling: str
    source: str


def load_model(
    name_or_path: str | Path,
    lora: LoRAConfig,
    *,
    rng: jax.Array | None = None,
    tokenizer: bool = True,
    num_labels: int = 1,
    pooling: str | None = None,
    head_dropout: float = 0.1,
    dtype: str = "float32",
    place: Place | None = None,
) -> Pretrained:
    """Build a model of any family from a registry name (`lora_jax.models.MODELS`), a HF folder
    (config.json + model.safetensors [+ tokenizer.json]) or a `.gguf` file (llama).

    The family module (by the checkpoint's model_type) fits its config to the tensors present,
    builds the module and fills every base leaf (`load_base`: one tensor at a time, each shape
    checked); only LoRA leaves (and an encoder's new head) are initialised. A random-init
    registry model (tests' tiny ones) is all init.

    Args:
        lora: where the adapters go.
        rng: initialises LoRA and the head (default `jax.random.key(0)`).
        tokenizer: also load the tokenizer (an error if the checkpoint has none).
        num_labels, pooling, head_dropout: an encoder's new head (classes, 1 = regression;
            "cls" or "mean", None = the model's default; dropout before its output layer).
            A decoder has no head and ignores them.
        dtype: the projections' compute dtype, "float32" or "bfloat16" (the config's `dtype`).
            The params come back float32 either way: which leaves to store in bfloat16 (the
            frozen ones) is the trainer's choice, `lora_jax.train.precision.cast_frozen`.
        place: puts each checkpoint tensor on its device(s) as it is read, e.g. sharded over
            a mesh (`lora_jax.train.parallel.placer`); default: the default device. The host
            holds one tensor at a time, never the whole model (`fill_params`).
    """
    rng = jax.random.key(0) if rng is None else rng
    dtype = check_dtype(dtype)
    name = str(name_or_path)
    if name not in MODELS and not Path(name).exists():
        get_spec(name)  # raises listing the valid names
    location = resolve_folder(name) if name in MODELS else Path(name)
    hf, tensors, where = None, None, location
    if location is None:  # random tiny model
        module_of = FAMILIES[MODELS[name].family]
    else:
        hf, tensors = (
            read_gguf(location) if location.suffix == ".gguf" else load_hf_folder(location)
        )
        where = location if location.suffix == ".gguf" else location / "model.safetensors"
        module_of = family_module(hf)
    if module_of.DECODER:
        pooling, head = "none", {}
    else:
        pooling = pooling or _default_pooling(name, location)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r} is not valid; allowed: {', '.join(POOLINGS)}.")
        head = dict(num_labels=num_labels, pooling=pooling, head_dropout=head_dropout)
    if tensors is None:
        config = module_of.Config.tiny(dtype=dtype)
        module = module_of.build(config, lora, **head)
        params = _params(module, rng)
    else:
        module, params, config = model_from_tensors(
            hf, tensors, lora, rng, where, dtype=dtype, place=place, **head
        )
    del tensors
    tok = _tokenizer(location, module_of.DECODER) if tokenizer else None
    return Pretrained(module, params, tok, config, module.head_rules, pooling, name)


def load_pretrained(
    name_or_path: str | Path,
    lora: LoRAConfig,
    *,
    num_labels: int,
    pooling: str | None = None,
    head_dropout: float = 0.1,
    rng: jax.Array | None = None,
    tokenizer: bool = True,
    dtype: str = "float32",
    place: Place | None = None,
) -> Pretrained:
    """`load_model` of an encoder with its new head: num_labels (1 = regression), pooling
    ("cls" or "mean"; None = the model's default, mean for minilm), head_dropout, dtype,
    place."""
    _check_kind(name_or_path, decoder=False)
    return load_model(
        name_or_path,
        lora,
        rng=rng,
        tokenizer=tokenizer,
        num_labels=num_labels,
        pooling=pooling,
        head_dropout=head_dropout,
        dtype=dtype,
        place=place,
    )


def load_decoder(
    name_or_path: str | Path,
    lora: LoRAConfig,
    *,
    rng: jax.Array | None = None,
    tokenizer: bool = True,
    dtype: str = "float32",
    place: Place | None = None,
) -> Pretrained:
    """`load_model` of a causal LM (smollm2, gpt2*, tiny_gpt2, tiny_llama, a HF folder or a
    `.gguf` file)."""
    _check_kind(name_or_path, decoder=True)
    return load_model(name_or_path, lora, rng=rng, tokenizer=tokenizer, dtype=dtype, place=place)


def _check_kind(name_or_path: str | Path, decoder: bool) -> None:
    """Raise if a model whose kind is known (a registry name, a `.gguf` file, a folder with a
    config.json) is not of the kind asked for."""
    name = str(name_or_path)
    known = name in MODELS or name.endswith(".gguf") or (Path(name) / "config.json").is_file()
    if known and is_decoder(name) != decoder:
        kind, other = (
            ("an encoder", "load_pretrained") if decoder else ("a decoder", "load_decoder")
        )
        raise ValueError(f"model={name!r} is {kind}; load it with `{other}` or `load_model`.")


def model_from_tensors(
    hf_config: Mapping[str, Any],
    tensors: Mapping[str, np.ndarray],
    lora: LoRAConfig,
    rng: jax.Array | None = None,
    where: str = "the checkpoint",
    dtype: str = "float32",
    place: Place | None = None,
    **head: Any,
) -> tuple[Any, dict, Any]:
    """`(module, params, config)` from a HF config dict and `{HF name: array}`; `dtype`, `place`
    and `head` as `load_model`'s (an encoder's num_labels, pooling, head_dropout)."""
    rng = jax.random.key(0) if rng is None else rng
    module_of = family_module(dict(hf_config))
    config = module_of.config_for(hf_config, set(tensors))
    config = dataclasses.replace(config, dtype=check_dtype(dtype))
    module = module_of.build(config, lora, **head)
    return module, _params(module, rng, tensors, module_of.load_base, where, place), config


def _params(module, rng, tensors=None, load_base=None, where=None, place=None) -> dict:
    """The module's param tree: base leaves from `tensors` by `load_base` (all init when there
    are none), the rest initialised from `rng`."""
    ids = jnp.zeros((1, 2), jnp.int32)

    def init(key):  # every family takes (input_ids, attention_mask)
        return module.init(key, ids, jnp.ones_like(ids))["params"]

    if tensors is None:
        return jax.jit(init)(rng)
    template = jax.eval_shape(init, rng)

    def fresh(key):  # only the leaves a checkpoint lacks: XLA drops the unused base-weight init
        flat = tu.flatten_dict(init(key))
        return {p: v for p, v in flat.items() if p[-1] in LORA_LEAVES or p[0] == "head"}

    flat = load_base(tensors, template, where, place)
    flat.update(jax.jit(fresh)(rng))
    params = tu.unflatten_dict(flat)
    got = jax.tree_util.tree_structure(params)
    if got != jax.tree_util.tree_structure(template):
        raise AssertionError(f"Loaded tree differs from the model's: {got}")
    return params


def _default_pooling(name: str, folder: Path | None) -> str:
    if name in MODELS:
        return MODELS[name].default_pooling
    # sentence-transformers folders say how they pool.
    pool_cfg = folder / "1_Pooling" / "config.json" if folder else None
    if (
        pool_cfg
        and pool_cfg.is_file()
        and json.loads(pool_cfg.read_text()).get("pooling_mode_mean_tokens")
    ):
        return "mean"
    return "cls"


def tokenizer_of(name: str):
    """The tokenizer a model loads with (`load_model`), without its weights: for checks that
    count tokens before a run (a prompt longer than `data.max_len`)."""
    location = resolve_folder(name) if name in MODELS else Path(name)
    return _tokenizer(location, is_decoder(name))


def _tokenizer(location: Path | None, decoder: bool):
    if location is None:
        return tiny_tokenizer(wrap=not decoder)  # a decoder's prompt is not wrapped
    if location.suffix == ".gguf":
        return gguf_tokenizer(location)
    return load_tokenizer(location)

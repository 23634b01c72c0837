"""Write tiny Llama-family checkpoints in the Hugging Face hub layout, with transformers' logits.

tests/unit/test_hub_layouts.py loads each folder with our loader and compares its logits with the
ones saved here. Needs PyTorch and transformers (the `interop` extra):

    .venv/bin/python scripts/make_hub_layout_fixtures.py

Writes tests/fixtures/hub_layouts/ (about 600 kB in all):
  <name>/config.json, model-0000i-of-0000N.safetensors (N >= 2), model.safetensors.index.json
      as `save_pretrained(max_shard_size=...)` writes them, weights in bfloat16 as the hub's
      Llama, Mistral and Qwen2 checkpoints ship.
  <name>.npz   input_ids (2, 24) and transformers' float32 logits (2, 24, vocab) of the model
               whose weights are those bfloat16 values.
  VERSIONS.json  torch and transformers versions.

The models (seeded random; 2 layers, hidden 64, 4 query / 2 KV heads, FFN 64, vocab 128):
  llama2   LlamaForCausalLM, rope_theta 10000, untied LM head
  llama3   LlamaForCausalLM, rope_theta 500000, rope_scaling of type "llama3" (its three
           frequency bands all present at head_dim 16 with original_max_position_embeddings 16)
  mistral  MistralForCausalLM, GQA, sliding_window null
  qwen2    Qwen2ForCausalLM, q/k/v biases (o without), tied embeddings
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "hub_layouts"
# Small enough that every model needs several shards.
SHARD = "64KB"
COMMON = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
    # Larger than the default 0.02, so attention and RoPE move the logits well above the tolerance.
    initializer_range=0.1,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
LLAMA3_ROPE = dict(
    rope_type="llama3",
    rope_theta=500000.0,
    factor=4.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=16,
)
MODELS = {
    "llama2": (
        LlamaForCausalLM,
        LlamaConfig(**COMMON, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    ),
    "llama3": (LlamaForCausalLM, LlamaConfig(**COMMON, rope_parameters=LLAMA3_ROPE)),
    "mistral": (MistralForCausalLM, MistralConfig(**COMMON, sliding_window=None)),
    "qwen2": (Qwen2ForCausalLM, Qwen2Config(**COMMON, tie_word_embeddings=True)),
}


def _perturb(model: torch.nn.Module) -> None:
    # Default init leaves norms at 1 and biases at 0; perturb them so the test checks them.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    ids = torch.randint(
        3, COMMON["vocab_size"], (2, 24), generator=torch.Generator().manual_seed(1)
    )
    for seed, (name, (cls, config)) in enumerate(MODELS.items()):
        torch.manual_seed(seed)
        model = cls(config).eval()
        _perturb(model)
        folder = OUT / name
        model.to(torch.bfloat16).save_pretrained(folder, max_shard_size=SHARD)
        shards = sorted(p.name for p in folder.glob("model-*.safetensors"))
        assert len(shards) >= 2 and (folder / "model.safetensors.index.json").is_file(), shards
        (folder / "generation_config.json").unlink(missing_ok=True)
        # The reference: transformers loading the folder in float32 (not `model.float()`: the
        # bfloat16 cast also rounded the RoPE frequencies, a buffer that is not saved).
        model = cls.from_pretrained(folder, dtype=torch.float32).eval()
        with torch.no_grad():
            logits = model(input_ids=ids).logits.numpy()
        np.savez(OUT / f"{name}.npz", input_ids=ids.numpy(), logits=logits)
        print(f"{name}: {len(shards)} shards, logits {logits.shape}")
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    (OUT / "VERSIONS.json").write_text(json.dumps(versions, indent=1) + "\n")


if __name__ == "__main__":
    main()

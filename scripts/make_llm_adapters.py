"""PEFT LoRA adapters shaped like those researchers hold on 1-8B Llama decoders, with a known
spectrum, for the audit's benchmark and tests (numpy and safetensors only: no torch, no hub).

    python scripts/make_llm_adapters.py --shape llama3_8b --rank 64 --out outputs/bench/audit/8b
    python scripts/make_llm_adapters.py --shape llama_1b --rank 16 --seed 1 --out .../1b_s1 --base

Each matrix's update dW = (alpha/r) B·A gets the planted rank `--planted` (default r/4): B is
a Gaussian (out, k) times a Gaussian (k, r), so B·A has rank k exactly and its k nonzero
singular values spread as those of a random matrix do. The files are what PEFT's
`save_pretrained` writes (`base_model.model.model.layers.<i>.<module>.lora_A.weight` (r, in),
`lora_B.weight` (out, r), float32; `adapter_config.json` with PEFT's keys). `--base` also
writes a random-weight Llama folder of the shape (config.json, bfloat16 model.safetensors).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

# hidden, layers, FFN width, query heads, KV heads (Llama-3.2-1B and Llama-3-8B).
SHAPES = {
    "llama_1b": (2048, 16, 8192, 32, 8),
    "llama3_8b": (4096, 32, 14336, 32, 8),
}
MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


def module_path(layer: int, module: str) -> str:
    return f"model.layers.{layer}.{'self_attn' if module in ATTENTION else 'mlp'}.{module}"


def module_shapes(shape: str) -> dict[str, tuple[int, int]]:
    """(in, out) of each adapted module of one layer."""
    hidden, _, ffn, heads, kv = SHAPES[shape]
    kv_dim = hidden // heads * kv
    return {
        "q_proj": (hidden, hidden),
        "k_proj": (hidden, kv_dim),
        "v_proj": (hidden, kv_dim),
        "o_proj": (hidden, hidden),
        "gate_proj": (hidden, ffn),
        "up_proj": (hidden, ffn),
        "down_proj": (ffn, hidden),
    }


def write_adapter(out: Path, shape: str, rank: int, planted: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    layers = SHAPES[shape][1]
    tensors = {}
    for layer in range(layers):
        for module, (fan_in, fan_out) in module_shapes(shape).items():
            prefix = f"base_model.model.{module_path(layer, module)}"
            a = rng.standard_normal((rank, fan_in), np.float32) / np.float32(np.sqrt(fan_in))
            b = rng.standard_normal((fan_out, planted), np.float32) @ rng.standard_normal(
                (planted, rank), np.float32
            )
            tensors[f"{prefix}.lora_A.weight"] = a
            tensors[f"{prefix}.lora_B.weight"] = (b * 1e-2).astype(np.float32)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / "adapter_model.safetensors", metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": f"random-{shape}",
        "r": rank,
        "lora_alpha": 2 * rank,
        "use_rslora": False,
        "lora_dropout": 0.0,
        "target_modules": list(MODULES),
        "rank_pattern": {},
        "alpha_pattern": {},
        "bias": "none",
        "init_lora_weights": True,
        "inference_mode": True,
    }
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return out


def write_base(out: Path, shape: str, seed: int) -> Path:
    """A random-weight Llama folder: the projection weights only (what the analysis reads)."""
    rng = np.random.default_rng(seed)
    hidden, layers, ffn, heads, kv = SHAPES[shape]
    tensors = {}
    for layer in range(layers):
        for module, (fan_in, fan_out) in module_shapes(shape).items():
            w = rng.standard_normal((fan_out, fan_in), np.float32) / np.sqrt(fan_in)
            tensors[f"{module_path(layer, module)}.weight"] = w.astype(ml_dtypes.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "intermediate_size": ffn,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "vocab_size": 32000,
        "rms_norm_eps": 1e-5,
        "torch_dtype": "bfloat16",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), required=True)
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--planted", type=int, help="rank of B·A (default: rank // 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--base", type=Path, help="also write a random-weight base folder here")
    args = parser.parse_args()
    write_adapter(
        args.out, args.shape, args.rank, args.planted or max(1, args.rank // 4), args.seed
    )
    if args.base:
        write_base(args.base, args.shape, seed=1000)
    print(args.out)


if __name__ == "__main__":
    main()

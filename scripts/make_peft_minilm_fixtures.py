"""Build tests/fixtures/peft_minilm_r{2,4}: LoRA adapters that PEFT saves on the real MiniLM.

The analysis must read any PEFT adapter against the real base checkpoint. These two adapters
(r=2 seed 0 and r=4 seed 1, on query and value of all six layers, B random so dW != 0) are
what `PeftModel.save_pretrained` writes for `BertModel` on all-MiniLM-L6-v2, with
`base_model_name_or_path` set to the hub id a downloaded adapter would name. Beside each,
`expected.json` holds what PEFT and torch say independently of our code, per matrix
`<layer>.<target>`: dW's singular values (from PEFT's `get_delta_weight`), ||dW||_F, and
||W||_F of the base weight in the model torch loaded.

Run (needs the interop extra: `make test-interop` installs it):
    .venv/bin/python scripts/make_peft_minilm_fixtures.py
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import torch
import transformers
from make_peft_fixtures import OUT, expected_dw
from peft import LoraConfig, get_peft_model

from lora_jax.models import minilm_folder

HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
CASES = {"peft_minilm_r2": (2, 0), "peft_minilm_r4": (4, 1)}
HF_MODULE = {"q": "attention.self.query", "v": "attention.self.value"}


def main() -> None:
    for case, (rank, seed) in CASES.items():
        torch.manual_seed(seed)
        model = transformers.BertModel.from_pretrained(minilm_folder(), add_pooling_layer=False)
        model.name_or_path = HUB_ID
        config = LoraConfig(
            task_type="FEATURE_EXTRACTION",
            r=rank,
            lora_alpha=8,
            target_modules=["query", "value"],
            init_lora_weights=False,  # B random, not zero: dW != 0
        )
        peft_model = get_peft_model(model, config)
        folder = OUT / case
        shutil.rmtree(folder, ignore_errors=True)
        peft_model.save_pretrained(folder)
        (folder / "README.md").unlink(missing_ok=True)  # PEFT's model card: noise here
        base = dict(model.named_parameters())
        expected = {}
        for key, dw in expected_dw(peft_model).items():
            layer, target = key.split(".")
            w = base[f"encoder.layer.{layer}.{HF_MODULE[target]}.base_layer.weight"]
            s = np.linalg.svd(dw.astype(np.float64), compute_uv=False)[:rank]
            expected[key] = {
                "singular_values": s.tolist(),
                "dw_norm": float(np.linalg.norm(dw.astype(np.float64))),
                "w_norm": float(torch.linalg.norm(w.detach().double())),
            }
        (folder / "expected.json").write_text(json.dumps(expected, indent=1))
        size = sum(f.stat().st_size for f in folder.iterdir())
        print(f"{case}: r={rank}, seed {seed}, {size} bytes")


if __name__ == "__main__":
    main()

"""A Hugging Face model folder read as files: `config.json`, lazy tensors, `tokenizer.json`.

The tensors come through `SafetensorsReader` (one tensor at a time; sharded or single file).
"""

from __future__ import annotations

import json
from pathlib import Path

from lora_jax.weights.safetensors import SafetensorsReader


def read_config(folder: str | Path) -> dict:
    """The folder's `config.json` as a dict."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; a HF model folder needs config.json.")
    return json.loads(path.read_text())


def load_hf_folder(folder: str | Path) -> tuple[dict, SafetensorsReader]:
    """`(config.json as a dict, lazy {HF tensor name: np.ndarray})` of a HF model folder."""
    return read_config(folder), SafetensorsReader(folder)


def load_tokenizer(folder: str | Path):
    """The `tokenizers.Tokenizer` of the folder's `tokenizer.json` (padding/truncation as saved)."""
    from tokenizers import Tokenizer

    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist. Save one with `AutoTokenizer.from_pretrained(...)"
            ".save_pretrained(folder)` (fast tokenizer), or pass tokenizer=False."
        )
    return Tokenizer.from_file(str(path))

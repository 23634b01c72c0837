"""Writes tests/fixtures/local_mr/: the first MR sentences of each split (prepared by
`python -m lora_jax.data.assets`), in split order, as JSONL, CSV and Parquet, for the test that
`data=local` gives the same examples, batches and metrics as `data=mr` / `data=mr_rating`
(tests/unit/test_data_local.py).

    python scripts/make_local_data_fixtures.py

Each format's folder holds train/validation/test files with the columns `sentence`, `label`
(negative/positive: sorted, the ids of MR's ClassLabel) and `rating` (MR's float32 rating).
For a decoder, the train sentences once more as one file of each other kind (validation split
by the hash rule): `completion.jsonl` (`prompt`: the review and a question, `completion`: the
label) and `chat.jsonl` (`messages`: the same as a user turn and an assistant turn).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lora_jax.data import load_split

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "local_mr"
SIZES = {"train": 96, "validation": 32, "test": 32}
LABELS = ("negative", "positive")


def rows(split: str) -> list[dict]:
    source = load_split("mr", split)
    out = []
    for i in range(SIZES[split]):
        e = source[i]
        out.append(
            {
                "sentence": e["sentence"].decode("utf-8"),
                "label": LABELS[int(e["label"])],
                # float32 -> the shortest decimal that reads back as the same float32
                "rating": float(str(np.float32(e["rating"]))),
            }
        )
    return out


def main() -> None:
    for fmt in ("jsonl", "csv", "parquet"):
        (OUT / fmt).mkdir(parents=True, exist_ok=True)
    for split in SIZES:
        data = rows(split)
        with open(OUT / "jsonl" / f"{split}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in data)
        with open(OUT / "csv" / f"{split}.csv", "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(data[0]))
            writer.writeheader()
            writer.writerows(data)
        pq.write_table(pa.Table.from_pylist(data), OUT / "parquet" / f"{split}.parquet")
    train = rows("train")
    question = "Is this movie review positive or negative?"
    with open(OUT / "completion.jsonl", "w", encoding="utf-8") as f:
        for r in train:
            record = {"prompt": f"{r['sentence']}\n{question} ", "completion": r["label"]}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    with open(OUT / "chat.jsonl", "w", encoding="utf-8") as f:
        for r in train:
            turns = [
                {"role": "user", "content": f"{r['sentence']}\n{question}"},
                {"role": "assistant", "content": r["label"]},
            ]
            f.write(json.dumps({"messages": turns}, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

"""The peer's real training run: PEFT LoRA r=8 on MiniLM + MR, doing the work of
`python -m experiments.train model=minilm rank=8 trainer.steps=N` (`benchmarks/real_run.py`
runs both and compares their peak RSS).

    python -m benchmarks.peer_peft_run --steps 20 --eval-every 10 --out DIR   # JSON on stdout

The same work: MR's train split (the same sentences and split rule, `lora_jax.data.mr`, which
imports no JAX), MiniLM's own tokenizer (transformers' fast one, from the same local folder),
batches of 32 shuffled sentences padded to the longest and cut at 64 tokens, PEFT
`LoraConfig(r=8, lora_alpha=8, target_modules=["query", "value"])` with the classifier trained,
AdamW lr 1e-3 (weight decay 0.01, 6% linear warmup then linear decay, gradient norm clipped
at 1), an evaluation of the 1,060 validation sentences (batches of 128) every `--eval-every`
steps and at the end, and a checkpoint there (`save_pretrained` plus the optimizer state) as a
PEFT user's loop keeps one. Needs the `interop` extra.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

from benchmarks.peer_peft import minilm_folder
from benchmarks.step import BATCH, LENGTH

EVAL_BATCH, LR = 32, 1e-3  # = conf/data/mr.yaml's eval_batch_size, conf/optim/adamw.yaml's lr


def mr_splits() -> dict[str, list[tuple[str, int]]]:
    """MR's train and validation (sentence, label) pairs, split by lora_jax's rule."""
    from lora_jax.data.assets import cache_dir
    from lora_jax.data.mr import SOURCE_FILENAME, assign_splits, parse_source

    examples = parse_source(cache_dir() / SOURCE_FILENAME)
    by_id = {e.id: e for e in examples}
    splits = assign_splits(list(by_id))
    return {
        name: [(by_id[i].sentence, by_id[i].label) for i in splits[name]]
        for name in ("train", "validation")
    }


def train(steps: int, eval_every: int, out: Path) -> dict:
    """Train, evaluate and checkpoint as a PEFT user's loop does; the run's numbers."""
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoTokenizer,
        BertForSequenceClassification,
        get_linear_schedule_with_warmup,
    )

    start = time.perf_counter()
    torch.manual_seed(0)
    data = mr_splits()
    tokenizer = AutoTokenizer.from_pretrained(minilm_folder())
    model = BertForSequenceClassification.from_pretrained(minilm_folder(), num_labels=2)
    config = LoraConfig(
        r=8, lora_alpha=8, lora_dropout=0.0, target_modules=["query", "value"], task_type="SEQ_CLS"
    )
    model = get_peft_model(model, config)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.01)
    schedule = get_linear_schedule_with_warmup(opt, round(0.06 * steps), steps)

    def encode(rows):
        texts, labels = zip(*rows, strict=True)
        batch = tokenizer(
            list(texts), padding=True, truncation=True, max_length=LENGTH, return_tensors="pt"
        )
        return batch, torch.tensor(labels)

    def evaluate() -> float:
        model.eval()
        rows, correct = data["validation"], 0
        with torch.no_grad():
            for i in range(0, len(rows), EVAL_BATCH):
                batch, labels = encode(rows[i : i + EVAL_BATCH])
                correct += int((model(**batch).logits.argmax(-1) == labels).sum())
        model.train()
        return correct / len(rows)

    order = np.random.default_rng(0).permutation(len(data["train"]))
    accuracies, step_times = [], []
    for step in range(1, steps + 1):
        t = time.perf_counter()
        idx = order[(step - 1) * BATCH % len(order) :][:BATCH]
        batch, labels = encode([data["train"][i] for i in idx])
        loss = model(**batch, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        schedule.step()
        opt.zero_grad(set_to_none=True)
        step_times.append(time.perf_counter() - t)
        if step % eval_every == 0 or step == steps:
            accuracies.append(evaluate())
            model.save_pretrained(out / f"checkpoint-{step}")
            torch.save(opt.state_dict(), out / f"checkpoint-{step}" / "optimizer.pt")
    return {
        "side": "peft",
        "steps": steps,
        "accuracies": accuracies,
        "step_s_median": float(np.median(step_times)),
        "steps_s": sum(step_times),
        "wall_s": time.perf_counter() - start,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder")
    args = parser.parse_args()
    print(json.dumps(train(args.steps, args.eval_every, args.out)))


if __name__ == "__main__":
    main()

"""`python -m experiments.sweep data=local data.path=<file> ... rank=1,4` end to end, one sweep
per kind of file (and a format each), to the report: the runs, labels.json, the rank analysis.
The files are the MR fixtures (tests/fixtures/local_mr); nothing is written beside them. ~20 s
each on 2 CPU cores; the chat sweep loads SmolLM2 (`slow`).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import FAST, FIXTURES, call_main

MR_FILES = FIXTURES / "local_mr"
DECODER = ["data.max_len=96", "data.batch_size=8", "generate.max_new_tokens=4"]


def _sweep(tmp_path: Path, *overrides: str) -> tuple[Path, list[dict]]:
    sweep = tmp_path / "sw"
    before = sorted(p.name for p in MR_FILES.rglob("*"))
    call_main(
        "experiments.sweep",
        "rank=1,4",
        "logger=none",
        "data=local",
        *overrides,
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert sorted(p.name for p in MR_FILES.rglob("*")) == before  # nothing beside the files
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert sorted(e["metrics"]["rank"] for e in summary) == [1, 4]
    assert all(e["metrics"]["status"] == "complete" for e in summary)
    assert "## Rank analysis" in (sweep / "report.md").read_text()
    return sweep, summary


@pytest.mark.slow
def test_classification_from_jsonl(tmp_path):
    _, summary = _sweep(
        tmp_path, *FAST, f"data.path={MR_FILES / 'jsonl'}", "data.columns.text=sentence"
    )
    for entry in summary:
        assert set(entry["metrics"]["final"]) >= {"accuracy", "f1"}
        labels = Path(entry["run_dir"]) / "labels.json"
        assert json.loads(labels.read_text()) == ["negative", "positive"]


def test_regression_from_parquet(tmp_path):
    # Through the fused launcher: the members of one group read the same local task.
    _, summary = _sweep(
        tmp_path,
        *FAST,
        "hydra/launcher=fused",
        f"data.path={MR_FILES / 'parquet' / 'train.parquet'}",  # validation by the hash rule
        "data.kind=regression",
        "data.columns.text=sentence",
        "data.columns.label=rating",
    )
    assert all(set(e["metrics"]["final"]) >= {"pearson", "spearman"} for e in summary)


@pytest.mark.slow
def test_prompt_completion_from_csv(tmp_path):
    rows = [json.loads(line) for line in (MR_FILES / "completion.jsonl").read_text().splitlines()]
    path = tmp_path / "data" / "reviews.csv"
    path.parent.mkdir()
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["prompt", "completion"])
        writer.writeheader()
        writer.writerows(rows)
    _, summary = _sweep(
        tmp_path,
        "model=tiny_llama",
        "debug=fast",
        f"data.path={path}",
        "data.kind=completion",
        *DECODER,
    )
    assert all({"bleu", "loss"} <= set(e["metrics"]["final"]) for e in summary)


@pytest.mark.slow
def test_chat_on_smollm2(tmp_path):
    """SmolLM2's chat template, the loss on the assistant turns: ~6 min on 2 CPU cores."""
    _, summary = _sweep(
        tmp_path,
        "model=smollm2",
        "debug=fast",
        f"data.path={MR_FILES / 'chat.jsonl'}",
        "data.kind=chat",
        "trainer.steps=4",
        "trainer.eval_every=2",
        "trainer.checkpoint_every=2",
        "trainer.spectrum_every=2",
        "data.eval_limit=16",
        "generate.eval_limit=4",
        *DECODER,
    )
    for entry in summary:
        first = json.loads(
            (Path(entry["run_dir"]) / "generations.jsonl").read_text().splitlines()[0]
        )
        assert first["prompt"].endswith("<|im_start|>assistant\n")
        assert first["references"][0] in ("negative", "positive")

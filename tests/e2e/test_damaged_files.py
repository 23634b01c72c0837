"""Damaged run files: resume falls back to the newest intact checkpoint, a damaged
`metrics.json` makes the run run again, readers of `history.jsonl` skip a cut last line, and
result files are written atomically. Runs go through the real entry point."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import pytest
from conftest import FINISHED_RUN, call_main

from lora_jax.report.render.wandb_report import spectrum_keys
from lora_jax.runs.files import read_jsonl, write_atomic
from lora_jax.runs.record import read_run
from lora_jax.train.tracking import Tracker


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _largest(folder: Path) -> Path:
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


DAMAGE = {
    "state data truncated": lambda step: _truncate(_largest(step / "state")),
    "state metadata garbled": lambda step: (step / "state" / "_METADATA").write_bytes(b"\xff{x"),
    "meta truncated": lambda step: _truncate(step / "meta" / "metadata"),
    "data position garbled": lambda step: _truncate(step / "data" / "process_0-of-1.json"),
    "empty step folder": lambda step: (shutil.rmtree(step), step.mkdir()),
    "partial step folder": lambda step: shutil.rmtree(step / "state"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_resume_falls_back_to_the_newest_intact_checkpoint(run_copy, finished_run, damage):
    """A run killed after its last checkpoint, whose newest checkpoint (20) is damaged:
    it resumes from step 10 with a warning naming step 20 and ends as the uninterrupted run."""
    (run_copy / "metrics.json").unlink()
    DAMAGE[damage](run_copy / "checkpoints" / "20")
    proc = call_main(
        "experiments.train", *FINISHED_RUN, f"hydra.run.dir={run_copy}", cwd=run_copy.parent
    )
    assert "checkpoint step 20" in proc.stderr and "is damaged" in proc.stderr
    # one warning, no traceback (Orbax's event loop used to print ~70 on the way)
    assert "Traceback" not in proc.stderr and "Event loop is closed" not in proc.stderr
    assert "resuming run from step 10" in proc.stdout
    assert (run_copy / "checkpoints_damaged" / "20").is_dir()
    assert sorted(p.name for p in (run_copy / "checkpoints").iterdir()) == ["10", "20"]
    ref = json.loads((finished_run / "metrics.json").read_text())
    got = json.loads((run_copy / "metrics.json").read_text())
    assert got["steps"] == 20 and got["final"] == ref["final"] and got["best"] == ref["best"]


def test_every_checkpoint_damaged_starts_over(run_copy, finished_run):
    (run_copy / "metrics.json").unlink()
    for step in ("10", "20"):
        DAMAGE["meta truncated"](run_copy / "checkpoints" / step)
    proc = call_main(
        "experiments.train", *FINISHED_RUN, f"hydra.run.dir={run_copy}", cwd=run_copy.parent
    )
    assert proc.stderr.count("is damaged") == 2 and "resuming" not in proc.stdout
    ref = json.loads((finished_run / "metrics.json").read_text())
    assert json.loads((run_copy / "metrics.json").read_text())["final"] == ref["final"]


def test_truncated_metrics_json_makes_the_run_run_again(run_copy, finished_run):
    _truncate(run_copy / "metrics.json")
    with pytest.warns(UserWarning, match="metrics.json is damaged"):
        assert read_run(run_copy) is None  # the analysis sees an unfinished run
    proc = call_main(
        "experiments.train", *FINISHED_RUN, f"hydra.run.dir={run_copy}", cwd=run_copy.parent
    )
    assert "metrics.json is damaged" in proc.stderr
    assert "resuming run from step 20" in proc.stdout
    ref = json.loads((finished_run / "metrics.json").read_text())
    assert json.loads((run_copy / "metrics.json").read_text())["final"] == ref["final"]


def test_history_readers_skip_a_cut_last_line(run_copy):
    history = run_copy / "history.jsonl"
    full = read_run(run_copy)
    want_evals, want_keys = full.eval_steps, spectrum_keys([full])
    assert want_evals == 2 and want_keys
    # The last row is the evaluation of step 20: cut the file inside it (a kill mid-write).
    text = history.read_text()
    history.write_text(text[: text.rstrip("\n").rfind("\n") + 20])
    cut = read_run(run_copy)
    assert cut.eval_steps == want_evals - 1
    assert spectrum_keys([cut]) == want_keys
    rows = list(read_jsonl(history))
    assert len(rows) == len(text.splitlines()) - 1


def test_tracker_appends_after_a_cut_line_on_a_line_of_its_own(tmp_path):
    history = tmp_path / "history.jsonl"
    history.write_text('{"step": 1, "a": 1}\n{"step": 2, "a"')
    with Tracker(tmp_path, "none") as tracker:
        tracker.log({"a": 3}, 3)
    assert history.read_text() == '{"step": 1, "a": 1}\n{"step": 3, "a": 3}\n'


def test_write_atomic_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "metrics.json"
    write_atomic(path, '{"status": "complete"}')
    with pytest.raises(TypeError):
        write_atomic(path, None)  # fails mid-write
    assert path.read_text() == '{"status": "complete"}'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp file left


def test_read_run_of_a_garbled_metrics_json_warns(tmp_path):
    (tmp_path / "metrics.json").write_bytes(b"\xff\xfe{")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert read_run(tmp_path) is None
    assert any("is damaged" in str(w.message) for w in caught)


@pytest.mark.slow
def test_fused_group_goes_back_to_the_step_every_member_has(tmp_path):
    """A killed fused sweep whose member rank=2 has a damaged newest checkpoint: the group
    resumes fused from step 10 and every member ends as its uninterrupted run."""
    sweep_dir = tmp_path / "sw"
    args = [*FINISHED_RUN[:-1], "rank=1,2", "hydra/launcher=fused", f"hydra.sweep.dir={sweep_dir}"]
    call_main("experiments.sweep", *args, cwd=tmp_path)
    runs = sorted(p.parent for p in sweep_dir.glob("*/metrics.json"))
    ref = {r: json.loads((r / "metrics.json").read_text()) for r in runs}
    for r in runs:  # killed after the last checkpoint
        (r / "metrics.json").unlink()
    (damaged,) = [r for r in runs if r.name.endswith("rank=2")]
    DAMAGE["state data truncated"](damaged / "checkpoints" / "20")
    proc = call_main("experiments.sweep", *args, cwd=tmp_path)
    assert "fused: training 2 runs as one" in proc.stdout
    assert "checkpoint step 20" in proc.stderr and "Traceback" not in proc.stderr
    assert "every member goes back to step 10" in proc.stdout
    for r in runs:
        got = json.loads((r / "metrics.json").read_text())
        assert got["final"] == ref[r]["final"] and got["best"] == ref[r]["best"]


@pytest.mark.slow
def test_a_full_disk_mid_run_is_one_message_and_the_rerun_resumes(tmp_path):
    """A write that fails for lack of space (here a file-size limit, `ulimit -f`, which fails
    writes with EFBIG as a full disk fails them with ENOSPC): one message naming the file, the
    space and what is saved, exit 2; with room again the same command resumes and finishes."""
    import os
    import resource
    import subprocess
    import sys

    from conftest import ROOT

    run_dir = tmp_path / "run"
    args = [
        *FINISHED_RUN,
        "trainer.steps=60",
        "trainer.log_every=1",
        "trainer.spectrum_every=1",  # ~1.4 KB of history.jsonl a step
        "trainer.checkpoint_every=10",
        f"hydra.run.dir={run_dir}",
    ]
    limit = 72 * 1024  # above base_kernels.safetensors (66 KB); history.jsonl reaches it

    def file_size_limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HYDRA_FULL_ERROR": "0",
        # compiled programs over the limit would be cut in the shared cache
        "LORA_JAX_COMPILE_CACHE": str(tmp_path / "jax_cache"),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.train", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=file_size_limit,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    message = re.search(r"out of space writing (\S+) .* Saved: checkpoint step (\d+)", proc.stderr)
    assert message and message[1] == str(run_dir / "history.jsonl"), proc.stderr[-3000:]
    assert "MiB free there, a checkpoint of this run takes" in proc.stderr
    assert (run_dir / "checkpoints" / message[2]).is_dir() and int(message[2]) < 60
    resumed = call_main("experiments.train", *args, cwd=tmp_path, env=env)
    assert f"resuming run from step {message[2]}" in resumed.stdout
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 60

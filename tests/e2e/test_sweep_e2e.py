"""The main job through its real entry points, on the tiny model and the real MR data.

Each test runs `python -m experiments.*` in a subprocess, exactly as a user would.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import FAST, ROOT, call_main, run_module, start_module, wait_until


@pytest.fixture(scope="module")
def fast_sweep(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("sweep")
    sweep_dir = cwd / "sw"
    proc = call_main(
        "experiments.sweep", "rank=1,4", *FAST, f"hydra.sweep.dir={sweep_dir}", cwd=cwd
    )
    return sweep_dir, proc


def test_sweep_writes_runs_summary_and_report(fast_sweep):
    sweep_dir, proc = fast_sweep
    assert proc.stdout.strip().splitlines()[-1] == str((sweep_dir / "report.html").absolute())
    summary = json.loads((sweep_dir / "sweep_summary.json").read_text())
    assert sorted(e["metrics"]["rank"] for e in summary) == [1, 4]
    for entry in summary:
        run_dir = Path(entry["run_dir"])
        m = entry["metrics"]
        assert m["status"] == "complete" and m["steps"] == 20
        assert 0.0 <= m["final"]["accuracy"] <= 1.0
        split = m["time_split_s"]  # where the run's time went: the phases sum to its wall time
        assert {"setup", "steps", "eval", "save", "spectra", "compile", "other"} <= set(split)
        assert sum(split.values()) == pytest.approx(m["wall_time_s"], abs=0.05)
        assert min(split.values()) >= -0.01
        assert m["peak_rss_mb"] > 200  # the process's peak: JAX and MiniLM's weights at least
        assert (run_dir / "adapter" / "adapter_model.safetensors").exists()
        assert (
            json.loads((run_dir / "adapter" / "adapter_config.json").read_text())["r"] == m["rank"]
        )
        assert (run_dir / "checkpoints").is_dir()
        assert (run_dir / "config.yaml").exists()
        assert f"rank={m['rank']}" in entry["overrides"]
    assert "[lora_jax] time per run (median of 2): compile" in proc.stdout
    report = (sweep_dir / "report.md").read_text()
    assert "| rank | metric |" in report and "\n| 1 | accuracy (%) |" in report
    assert not (sweep_dir / "report").exists()  # one report per sweep, at its root
    analysis = json.loads((sweep_dir / "analysis.json").read_text())
    (pair,) = analysis["rank_pairs"]
    assert pair["ranks"] == [1, 4]
    assert sorted(pair["phi"]) == ["layer_0/q", "layer_0/v", "layer_1/q", "layer_1/v"]
    assert all(len(grid) == 1 and len(grid[0]) == 4 for grid in pair["phi"].values())
    assert Path(pair["figure"]).exists()
    assert "## Rank analysis" in report and "r=1 vs r=4" in report


def test_sweep_audits_each_run_and_advises_a_rank(fast_sweep):
    """Each run's audit (numpy, from the r x r core) agrees with the sweep analysis's spectra
    (JAX, from dW itself), and the report shows it with the rank advice."""
    sweep_dir, _ = fast_sweep
    audit = json.loads((sweep_dir / "audit.json").read_text())
    analysis = json.loads((sweep_dir / "analysis.json").read_text())
    advice = json.loads((sweep_dir / "rank_advice.json").read_text())
    assert sorted(audit["adapters"]) == sorted(analysis["runs"])
    assert [audit["adapters"][n]["rank"] for n in sorted(audit["adapters"])] == [1, 4]
    assert audit["pairs"] == []  # the sweep's own phi pairs are in analysis.json
    for name, run in analysis["runs"].items():
        audited = audit["adapters"][name]["matrices"]
        assert sorted(audited) == sorted(run["adapters"])
        for matrix, measured in run["adapters"].items():
            s = measured["singular_values"]
            assert audited[matrix]["singular_values"] == pytest.approx(s, rel=1e-4, abs=1e-7)
        rank = run["rank"]
        assert all(1 <= r <= rank for r in advice[name]["lora_rank_pattern"].values())
        config = json.loads((sweep_dir / "advice" / name / "adapter_config.json").read_text())
        assert config["rank_pattern"] == advice[name]["rank_pattern"]
    report = (sweep_dir / "report.md").read_text()
    assert all(f"## Audit: {name}" in report for name in analysis["runs"])
    assert "lora.rank_pattern={" in report


def test_sweep_html_report_shows_the_rank_analysis(fast_sweep):
    """The HTML page (what a researcher opens) has the results, phi heatmaps, spectra and Table 7."""
    sweep_dir, _ = fast_sweep
    page = _HTMLOutline()
    page.feed((sweep_dir / "report.html").read_text())
    assert {"Results by cell", "Rank analysis"} <= set(page.headings)
    rank = page.sections["Rank analysis"]
    assert any("phi(A r=1, A r=4" in c for c in rank["captions"])
    assert any(c.startswith("dW spectra") for c in rank["captions"])
    assert {"dW vs W (Table 7 style)", "Spectra and effective rank of dW"} <= set(rank["captions"])
    assert rank["images"] >= 3 and all(
        src.startswith("data:image/png;base64,") for src in page.srcs
    )


def test_sweep_analysis_follows_the_rank_measurements_over_training(fast_sweep, tmp_path):
    """The runs kept two checkpoints (steps 10 and 20): the sweep's analysis adds the dynamics
    by itself, ending at the final analysis's numbers, into the report and the W&B run."""
    import wandb_workspaces.reports.v2 as wr

    from lora_jax.report import make_report

    sweep_dir, _ = fast_sweep
    analysis = json.loads((sweep_dir / "analysis.json").read_text())
    dyn = analysis["dynamics"]
    assert {e["steps"] == [10, 20] for e in dyn["runs"].values()} == {True}
    assert dyn["without_checkpoints"] == [] and dyn["seed_pairs"] == []
    (pair,) = dyn["rank_pairs"]
    (final_pair,) = analysis["rank_pairs"]
    assert pair["ranks"] == [1, 4] and pair["steps"] == [10, 20]
    for matrix, curve in pair["phi11"].items():  # the last checkpoint is the exported adapter
        assert curve[-1] == pytest.approx(final_pair["phi"][matrix][0][0], abs=1e-6)
    for name, entry in dyn["runs"].items():
        for matrix, curves in entry["adapters"].items():
            final = analysis["runs"][name]["adapters"][matrix]
            assert curves["amplification"][-1] == final["dw_vs_w"]["amplification"]
            assert curves["dw_norm"][-1] == final["dw_vs_w"]["dw_norm"]
            assert curves["effective_rank"][-1] == final["effective_rank"]
    report = (sweep_dir / "report.md").read_text()
    assert "## Rank measurements over training" in report and "figures/dynamics.png" in report
    logged = [
        json.loads(line)
        for line in (sweep_dir / "analysis_run" / "history.jsonl").read_text().splitlines()
    ]
    steps = {row["step"] for row in logged if any(k.startswith("dynamics/") for k in row)}
    assert steps == {10, 20}
    wandb_file = sorted((sweep_dir / "analysis_run").glob("wandb/offline-run-*/run-*.wandb"))[-1]
    wandb = str(Path(sys.executable).parent / "wandb")
    out = subprocess.run(
        [wandb, "leet", "inspect", "--summary", "--json", str(wandb_file)],
        capture_output=True,
        text=True,
        check=True,
    )
    summary = json.loads(out.stdout)["summary"]  # the curves' x axis is the training step
    assert summary["dynamics/step"] == 20 and "dynamics/phi11/Wq/r=1 vs 4, seed=0" in summary
    rep = make_report(sweep_dir, out=tmp_path).wandb_report
    plots = [p for b in rep.blocks if isinstance(b, wr.PanelGrid) for p in b.panels]
    ys = {k for p in plots if isinstance(p, wr.LinePlot) for k in p.y}
    assert "dynamics/phi11/Wq/r=1 vs 4, seed=0" in ys
    assert {p.x for p in plots if isinstance(p, wr.LinePlot) and "dynamics/" in p.y[0]} == {
        "dynamics/step"
    }
    assert "dynamics/amplification/Wv/r=4, seed=0" in ys


class _HTMLOutline(HTMLParser):
    """Headings, and per <h2> section the images and the captions of figures and tables."""

    def __init__(self) -> None:
        super().__init__()
        self.headings, self.sections, self.srcs = [], {}, []
        self._tag, self._current = None, None

    def handle_starttag(self, tag, attrs):
        self._tag = tag
        if tag == "img" and self._current:
            self.sections[self._current]["images"] += 1
            self.srcs.append(dict(attrs)["src"])

    def handle_data(self, data):
        text = data.strip()
        if not text:
            return
        if self._tag == "h2":
            self.headings.append(text)
            self._current = text
            self.sections[text] = {"images": 0, "captions": []}
        elif self._tag in ("figcaption", "caption") and self._current:
            self.sections[self._current]["captions"].append(text)

    def handle_endtag(self, tag):
        self._tag = None


def test_analyze_reproduces_the_analysis_from_saved_adapters(fast_sweep):
    """Also after a SIGTERM in the middle of it: one line, exit 143, no half-written file."""
    sweep_dir, _ = fast_sweep
    before = json.loads((sweep_dir / "analysis.json").read_text())
    (sweep_dir / "analysis.json").unlink()
    summary = sweep_dir / "sweep_summary.json"
    written = summary.stat().st_mtime_ns
    stopped = start_module("experiments.analyze", str(sweep_dir), cwd=sweep_dir.parent)
    # the summary is written first, then the analysis starts
    wait_until(lambda: summary.stat().st_mtime_ns != written, stopped)
    stopped.send_signal(signal.SIGTERM)
    _, err = stopped.communicate(timeout=120)
    assert stopped.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM: the analysis stopped" in err and "Traceback" not in err, err
    analysis = sweep_dir / "analysis.json"
    assert not analysis.exists() or json.loads(analysis.read_text()) == before
    proc = call_main("experiments.analyze", str(sweep_dir), cwd=sweep_dir.parent)
    assert proc.stdout.strip().splitlines()[-1] == str((sweep_dir / "report.html").absolute())
    assert json.loads((sweep_dir / "analysis.json").read_text()) == before
    assert list((sweep_dir / "analysis_run").glob("wandb/offline-run-*/run-*.wandb"))


def test_analyze_adapters_of_our_runs_agrees_with_the_sweep_analysis(fast_sweep, tmp_path):
    """Our exported adapters through `--adapters --base auto` (W from the kernels the tiny run
    saved): the A-side phi equals the sweep's rank pair, and the B side comes too."""
    sweep_dir, _ = fast_sweep
    runs = [sweep_dir / "model=tiny_bert,rank=1", sweep_dir / "model=tiny_bert,rank=4" / "adapter"]
    out = tmp_path / "adapters"
    proc = call_main(
        "experiments.analyze",
        "--adapters",
        *map(str, runs),
        "--base",
        "auto",
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert proc.stdout.strip().splitlines()[-1] == str((out / "report.html").absolute())
    (pair,) = json.loads((out / "analysis.json").read_text())["adapter_pairs"]
    (sweep_pair,) = json.loads((sweep_dir / "analysis.json").read_text())["rank_pairs"]
    assert pair["phi"] == sweep_pair["phi"] and sorted(pair["phi_b"]) == sorted(pair["phi"])


def test_wandb_offline_run_reads_back(fast_sweep):
    sweep_dir, _ = fast_sweep
    run_dir = sweep_dir / "model=tiny_bert,rank=4"
    wandb_files = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert wandb_files, "no offline W&B run was written"
    out = subprocess.run(
        [
            str(Path(sys.executable).parent / "wandb"),
            "leet",
            "inspect",
            "--summary",
            "--json",
            str(wandb_files[-1]),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    logged = json.loads(out.stdout)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert logged["state"] == "finished"
    assert logged["config"]["rank"] == 4 and logged["config"]["targets"] == "qv"
    assert logged["summary"]["final/accuracy"] == pytest.approx(metrics["final"]["accuracy"])
    assert logged["summary"]["trainable_params"] == metrics["trainable_params"]
    for key in ("train/loss", "train/lr", "train/grad_norm", "eval/accuracy"):
        assert key in logged["summary"], key


def test_rerun_skips_finished_runs(fast_sweep):
    sweep_dir, _ = fast_sweep
    before = {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/metrics.json")}
    proc = call_main(
        "experiments.sweep", "rank=1,4", *FAST, f"hydra.sweep.dir={sweep_dir}", cwd=sweep_dir.parent
    )
    assert proc.stdout.count("is complete; skipping") == 2
    assert before == {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/metrics.json")}


RESUME_RUN = [
    "model=tiny_bert",
    "debug=fast",
    "trainer.steps=60",
    "trainer.checkpoint_every=20",
    "trainer.eval_every=60",
    "logger=none",
    "rank=2",
]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    cwd = tmp_path_factory.mktemp("uninterrupted")
    call_main("experiments.train", *RESUME_RUN, f"hydra.run.dir={cwd / 'run'}", cwd=cwd)
    return json.loads((cwd / "run" / "metrics.json").read_text())


def _signal_once(module: str, args: list[str], ready, signum: int, cwd: Path):
    """Run `python -m module args`, send `signum` as soon as `ready()` holds; (status, stderr)."""
    proc = start_module(module, *args, cwd=cwd)
    wait_until(ready, proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _assert_stopped_with_a_checkpoint(status: int, err: str, signum: int, folder: Path) -> None:
    assert status == 128 + signum, err
    stopped = re.search(r"stopped after step (\d+); checkpoint saved", err)
    assert stopped and "Traceback" not in err, err
    assert (folder / "checkpoints" / stopped[1]).is_dir()


@pytest.mark.parametrize(
    "signum",
    # SIGINT takes SIGTERM's path (the same handler): the long suite checks it.
    [signal.SIGKILL, signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)],
)
def test_resume_after_a_signal_matches_uninterrupted(tmp_path, uninterrupted, signum):
    """SIGKILL loses the steps since the last checkpoint (20); SIGTERM and SIGINT finish the
    step, save it, say so and exit 128 + signal. Either way the rerun ends where an
    uninterrupted run does."""
    killed_dir = tmp_path / "killed"
    args = [*RESUME_RUN, f"hydra.run.dir={killed_dir}"]
    ready = (killed_dir / "checkpoints" / "20").exists
    status, err = _signal_once("experiments.train", args, ready, signum, tmp_path)
    assert not (killed_dir / "metrics.json").exists(), "the run finished before it could be killed"
    if signum != signal.SIGKILL:
        _assert_stopped_with_a_checkpoint(status, err, signum, killed_dir)
    resumed = call_main("experiments.train", *args, cwd=tmp_path)
    assert "resuming" in resumed.stdout
    got = json.loads((killed_dir / "metrics.json").read_text())
    assert got["final"] == pytest.approx(uninterrupted["final"], abs=1e-6)


@pytest.mark.slow
def test_a_fused_group_stops_on_sigterm_and_resumes(tmp_path, uninterrupted):
    """`hydra/launcher=fused`: the group finishes its step, every member saves it; the rerun
    resumes fused and the rank-2 member ends as the separate uninterrupted run (within the
    fused engine's float tolerance, tests/e2e/test_fused.py)."""
    sweep_dir = tmp_path / "sw"
    args = [*RESUME_RUN[:-1], "rank=1,2", "hydra/launcher=fused", f"hydra.sweep.dir={sweep_dir}"]
    ready = lambda: any(sweep_dir.glob("*rank=2*/checkpoints/20"))  # noqa: E731
    status, err = _signal_once("experiments.sweep", args, ready, signal.SIGTERM, tmp_path)
    members = [next(sweep_dir.glob(f"*rank={r}*")) for r in (1, 2)]
    assert not (members[1] / "metrics.json").exists(), "the group finished before the signal"
    for member in members:
        _assert_stopped_with_a_checkpoint(status, err, signal.SIGTERM, member)
    resumed = call_main("experiments.sweep", *args, cwd=tmp_path)
    assert "fused: training 2 runs as one" in resumed.stdout
    got = json.loads((members[1] / "metrics.json").read_text())
    assert got["final"] == pytest.approx(uninterrupted["final"], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("rank=-1", "rank=-1"),
        ("rank=1,999", "rank=999 is larger than"),
        ("targets=qz", "targets='qz'"),
        ("model.name=gpt5", "gpt5"),
        ("data.task=imdb", "imdb"),
        ("rank=abc", "rank"),
        ("trainer.stepz=3", "stepz"),
    ],
)
def test_bad_overrides_fail_before_training(tmp_path, override, message):
    proc = call_main(
        "experiments.sweep",
        override,
        *FAST,
        f"hydra.sweep.dir={tmp_path / 's'}",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout
    assert not list(tmp_path.glob("s/*/checkpoints")), "training started before the error"


def test_non_finite_loss_stops_with_clear_error_and_keeps_checkpoint(tmp_path):
    """The NaN stop says what was kept and a fix that applies (clipping is already on)."""
    run_dir = tmp_path / "nan"
    proc = call_main(
        "experiments.train",
        "model=tiny_bert",
        "debug=fast",
        "logger=none",
        "trainer.checkpoint_every=1",
        "optim.lr=1e30",
        "optim.warmup_ratio=0.5",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "the last good checkpoint is step" in proc.stderr
    assert "Lower optim.lr, and train again" in proc.stderr  # not "set clip_norm": it is on
    assert "trainer.restart=true" in proc.stderr and "step None" not in proc.stderr
    assert not (run_dir / "metrics.json").exists()
    steps = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps, "no checkpoint kept"


def test_slurm_launcher_writes_a_job_script(tmp_path):
    # A stand-in `sbatch` keeps the script submitit writes and refuses it: the real launcher
    # code runs up to the submission, no cluster needed.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(
        f'#!/bin/sh\ncp "$1" {tmp_path}/job.sh\necho no cluster >&2\nexit 1\n'
    )
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit looks for it
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "PYTHONPATH": str(ROOT),
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
    }
    args = [
        "experiments.sweep",
        "rank=1,4",
        *FAST,
        "hydra/launcher=slurm",
        "hydra.launcher.partition=gpu",
        f"hydra.sweep.dir={tmp_path / 's'}",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", *args], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode != 0
    script = (tmp_path / "job.sh").read_text()
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --array=0-1%2",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --time=240",
        "#SBATCH --cpus-per-task=8",
    ):
        assert line in script, line
    assert "submitit.core._submit" in script


@pytest.mark.slow
def test_later_jobs_reuse_the_persistent_compilation_cache(tmp_path):
    cache = tmp_path / "jax_cache"
    args = ["model=tiny_bert", "debug=fast", "logger=none", "rank=2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LORA_JAX_COMPILE_CACHE": str(cache)}
    entries = []
    for job in ("first", "second"):  # the same program in two jobs (e.g. a rerun elsewhere)
        subprocess.run(
            [sys.executable, "-m", "experiments.train", *args, f"hydra.run.dir={tmp_path / job}"],
            cwd=tmp_path,
            env=env,
            check=True,
            capture_output=True,
        )
        entries.append(sorted(p.name for p in cache.iterdir()))
    assert any(name.startswith("jit_train_step") for name in entries[0])
    assert entries[1] == entries[0], (
        "the second job compiled again instead of loading from the cache"
    )


@pytest.mark.slow
def test_joblib_launcher_and_seed_pairs(tmp_path):
    """Two seeds in parallel processes (joblib); the analysis pairs them next to a random baseline."""
    sweep_dir = tmp_path / "jl"
    proc = run_module(
        "experiments.sweep",
        "rank=2",
        "seed=0,1",
        *FAST,
        "logger=none",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )
    assert proc.stdout.strip().splitlines()[-1] == str((sweep_dir / "report.html").absolute())
    summary = json.loads((sweep_dir / "sweep_summary.json").read_text())
    assert sorted(e["metrics"]["seed"] for e in summary) == [0, 1]
    analysis = json.loads((sweep_dir / "analysis.json").read_text())
    assert analysis["rank_pairs"] == []
    (pair,) = analysis["seed_pairs"]
    assert pair["seeds"] == [0, 1]
    assert len(pair["random_baseline"]) == 2 and len(pair["random_baseline"][0]) == 2
    assert pair["expected_random_mean"] == pytest.approx(
        (1 + 2 + 2 + 2) / 4 / 32
    )  # max(i, j) / n, n = 32
    assert Path(pair["figure"]).exists()
    assert "seed 0 vs 1 (r=2)" in (sweep_dir / "report.md").read_text()


@pytest.mark.slow
def test_analysis_of_runs_that_adapt_different_matrices(tmp_path):
    """dW vs W needs each run's own base kernels (q in one run, v in the other)."""
    sweep_dir = tmp_path / "targets"
    short = ["trainer.steps=4", "trainer.eval_every=4", "trainer.checkpoint_every=4"]
    call_main(
        "experiments.sweep",
        "rank=1",
        "targets=q,v",
        *FAST,
        *short,
        "logger=none",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )
    analysis = json.loads((sweep_dir / "analysis.json").read_text())
    adapted = [
        sorted({key.split("/")[1] for key in run["adapters"]}) for run in analysis["runs"].values()
    ]
    assert sorted(adapted) == [["q"], ["v"]]
    # the audit takes runs with different matrices, each alone
    audit = json.loads((sweep_dir / "audit.json").read_text())
    assert sorted(m.split("/")[1] for a in audit["adapters"].values() for m in a["matrices"]) == [
        "q",
        "q",
        "v",
        "v",
    ]


def test_the_sweep_report_options_are_overridable_from_the_command_line():
    """`hydra.callbacks.sweep_report.model_evals=false` / `.eval_limit=N` (the README's way to
    skip or cap the model evaluations): keys absent from conf/sweep.yaml made Hydra refuse the
    override, and it then reported every comma list of the grid as ambiguous."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    overrides = [
        "hydra.callbacks.sweep_report.model_evals=false",
        "hydra.callbacks.sweep_report.eval_limit=5",
    ]
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("sweep", overrides, return_hydra_config=True)
    callback = instantiate(cfg.hydra.callbacks.sweep_report)
    assert (callback.model_evals, callback.eval_limit) == (False, 5)
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        default = instantiate(
            compose("sweep", return_hydra_config=True).hydra.callbacks.sweep_report
        )
    assert (default.model_evals, default.eval_limit) == (True, None)


@pytest.mark.parametrize(
    "overrides, launcher",
    [
        ([], "FusedLauncher"),  # the default sweep: its ranks as one program
        (["hydra/launcher=basic"], "BasicLauncher"),
        (["experiment=rank_growth_cpu"], "BasicLauncher"),  # r up to 256: padding costs more
        (["experiment=table5_cpu"], "FusedLauncher"),
    ],
)
def test_the_sweeps_launcher_is_fused_unless_the_command_or_the_experiment_says_basic(
    overrides, launcher
):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("sweep", overrides, return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith(f".{launcher}")

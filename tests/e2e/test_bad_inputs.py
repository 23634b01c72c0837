"""Bad input through the real entry points: one message, exit status 2, before any work.

Each case calls the entry point's `main()` as `python -m experiments.*` would (`call_main`: its
arguments, working folder and environment, in this process), with a pre-made sweep folder (a
finished fake run in it) as the output folder where one applies, and asserts: exit status 2,
the message names the key and what is allowed, no traceback, and the whole working folder byte
for byte as before (no run folder, `metrics.json` or `checkpoints/` made, nothing existing
rewritten, `.hydra/` included). A handful (`END_TO_END`) also run in a subprocess, as a user
runs them. The README's examples that used to fail are checked to work, in process.

The `slow` ones load the model code or the MR split before failing.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAST, ROOT, call_main, compose_config, compose_jobs, run_module, write_run

from lora_jax.lora import parse_targets
from lora_jax.train import plan
from lora_jax.user_errors import check_output_dir

TRAIN, SWEEP = "experiments.train", "experiments.sweep"
ANALYZE, REPORT = "experiments.analyze", "experiments.report"
# The slower cases load the model code and the MR split (~5 s each instead of ~2 s).
slow = pytest.mark.slow
# Placeholders in a case's arguments: {sweep} a pre-made sweep folder, {run} the finished run
# in it, {file} a plain file, {empty} an empty folder, {nope} a path that does not exist.

# (entry point, arguments, what the message must contain: the key and the allowed values)
TRAIN_CASES = [
    # A typo in an optional group used to start the default job (exit 0).
    (
        ["experiment=table99"],
        ["experiment='table99'", "allowed: attention_vs_all_cpu", "fig3_fig4_cpu", "table6_cpu"],
    ),
    (["debug=fst"], ["debug='fst'", "allowed: fast", "`debug=fast`"]),
    # Nonsense numbers used to run to completion.
    (["optim.lr=0"], ["optim.lr=0", "allowed: a number > 0", "`optim.lr=1e-3`"]),
    (["optim.lr=-1"], ["optim.lr=-1", "allowed: a number > 0"]),
    (["optim.name=lion"], ["optim.name='lion'", "allowed: adamw, sgd", "`optim=adamw`"]),
    (["optim.momentum=1.5"], ["optim.momentum=1.5", "[0, 1)"]),
    # One source for the rank: `lora.rank` follows the sweep axis `rank`.
    (["lora.rank=4"], ["lora.rank=4", "the top-level rank (8)", "`rank=4`"]),
    (["alpha=0"], ["alpha=0", "allowed: a number > 0", "`alpha=8`"]),
    (["alpha=-2"], ["alpha=-2", "allowed: a number > 0"]),
    (["lora.alpha=0"], ["lora.alpha=0", "allowed: a number > 0"]),
    (["optim.warmup_ratio=-0.5"], ["optim.warmup_ratio=-0.5", "allowed: a number in [0, 1)"]),
    (["optim.warmup_ratio=1"], ["optim.warmup_ratio=1", "[0, 1)"]),
    (["optim.warmup_steps=-1"], ["optim.warmup_steps=-1", "null (use warmup_ratio)"]),
    (["trainer.spectrum_every=-1"], ["trainer.spectrum_every=-1", "0 (off) or an integer >= 1"]),
    (["trainer.keep_checkpoints=0"], ["trainer.keep_checkpoints=0", "an integer >= 1"]),
    (["trainer.steps=0"], ["trainer.steps=0", "an integer >= 1"]),
    (["trainer.eval_every=0"], ["trainer.eval_every=0", "an integer >= 1"]),
    (["trainer.log_every=-5"], ["trainer.log_every=-5", "an integer >= 1"]),
    (["trainer.checkpoint_every=0"], ["trainer.checkpoint_every=0", "an integer >= 1"]),
    (["trainer.epochs=0"], ["trainer.epochs=0", "null (use steps)"]),
    (["trainer.mesh.fsdp=0"], ["trainer.mesh.fsdp=0", "an integer >= 1 dividing the device"]),
    # Checked against the devices (one here) before the model loads.
    (["trainer.mesh.fsdp=3"], ["trainer.mesh.fsdp=3", "a divisor of the device count"]),
    (["trainer.distributed=yes"], ["trainer.distributed='yes'", "auto (start", "on, off"]),
    (
        ["trainer.num_processes=2", "trainer.process_id=2"],
        ["trainer.process_id=2", "0..1 (trainer.num_processes=2)", "`trainer.process_id=0`"],
    ),
    (["data.batch_size=0"], ["data.batch_size=0", "an integer >= 1"]),
    (["data.eval_batch_size=0"], ["data.eval_batch_size=0", "an integer >= 1"]),
    (["data.max_len=0"], ["data.max_len=0", "an integer >= 1"]),
    (["data.pad=left"], ["data.pad='left'", "allowed: max_len, longest, bucket"]),
    (["data.eval_limit=0"], ["data.eval_limit=0", "null (all)"]),
    (["data.worker_count=-1"], ["data.worker_count=-1", "an integer >= 0"]),
    (["seed=-1"], ["seed=-1", "an integer >= 0", "`seed=0`"]),
    (["lora.dropout=1.0"], ["lora.dropout=1.0", "[0, 1)"]),
    (["lora.dropout=-0.1"], ["lora.dropout=-0.1", "[0, 1)"]),
    (["model.head_dropout=1.5"], ["model.head_dropout=1.5", "[0, 1)"]),
    (["model.pooling=max"], ["model.pooling='max'", "cls, mean"]),
    (["model.dtype=float16"], ["model.dtype='float16'", "allowed: float32, bfloat16"]),
    (["optim.weight_decay=-0.01"], ["optim.weight_decay=-0.01", "a number >= 0"]),
    (["optim.b2=1.0"], ["optim.b2=1.0", "[0, 1)"]),
    (["optim.clip_norm=0"], ["optim.clip_norm=0", "null (no clipping) or a number > 0"]),
    (["optim.label_smoothing=1"], ["optim.label_smoothing=1", "[0, 1)"]),
    (["lora.budget_rank=0"], ["lora.budget_rank=0", "null (no budget)"]),
    (["generate.num_beams=0"], ["generate.num_beams=0", "1 = greedy"]),
    (["planted.k=0"], ["planted.k=0", "an integer >= 1"]),
    (["lora.rank_pattern={q:-1}"], ["lora.rank_pattern.q=-1", "an integer >= 0"]),
    (["optim.lr_multipliers={lora_c:2}"], ["optim.lr_multipliers.lora_c", "lora_a, lora_b"]),
    (["optim.lr_multipliers={lora_b:0}"], ["optim.lr_multipliers.lora_b=0", "a number > 0"]),
    # The logger, checked before the model loads.
    (["logger.backend=mlflow"], ["logger.backend='mlflow'", "allowed: wandb, none"]),
    (["logger.mode=sometimes"], ["logger.mode='sometimes'", "offline, online, disabled"]),
    # Hydra's own composition errors: Hydra's message, exit status 2.
    (["model=foo"], ["model/foo", "Available options in 'model'", "tiny_bert"]),
    (["data=foo"], ["data/foo", "Available options in 'data'", "mr"]),
    (["rank=abc"], ["rank=abc", "Integer"]),
    (["trainer.progress=maybe"], ["trainer.progress", "not a valid bool"]),
    (["trainer.stepz=3"], ["trainer.stepz", "Allowed keys in trainer: steps"]),
    (["+trainer.stepz=3"], ["trainer.stepz is not a config key", "allowed keys in trainer"]),
    (["modle=tiny_bert"], ["modle", "Allowed keys: rank"]),
    (["targets=q,v"], ["targets=q,v", "quote the value"]),  # a list outside a sweep
    # The output folder, before Hydra makes it.
    (["hydra.run.dir={file}/run"], ["hydra.run.dir=", "is a file", "allowed: a folder"]),
    # Names checked with the model and task (`train.plan`): they used to print a traceback.
    pytest.param(["rank=-1"], ["rank=-1", "a non-negative integer"], marks=slow),
    pytest.param(["rank=999"], ["rank=999", "allowed: 0..32"], marks=slow),
    pytest.param(["targets=xyz"], ["targets='xyz'", "ffn_in", "`targets=q+ffn_in`"], marks=slow),
    pytest.param(["targets=q+bogus"], ["targets='bogus'", "ffn_in"], marks=slow),
    pytest.param(["scaling=sqrt"], ["scaling='sqrt'", "alpha_over_sqrt_r"], marks=slow),
    pytest.param(["lora.a_init=zeros"], ["a_init='zeros'", "kaiming_uniform"], marks=slow),
    pytest.param(["lora.layers=[7]"], ["layers", "indices in 0..1"], marks=slow),
    pytest.param(["lora.rank_pattern={k:4}"], ["rank_pattern key='k'", "q, v"], marks=slow),
    pytest.param(["data.task=glue_foo"], ["data.task='glue_foo'", "glue_mnli", "mr"], marks=slow),
    pytest.param(["data=e2e"], ["data.task='e2e'", "does not fit model='tiny_bert'"], marks=slow),
    pytest.param(["lora.init_from={nope}"], ["does not exist", "adapter"], marks=slow),
    # Data: the split's size, its names, and the asset cache, before the first step.
    pytest.param(["data.batch_size=20000"], ["data.batch_size=20000", "1..8485"], marks=slow),
    pytest.param(["data.eval_split=foo"], ["data.eval_split='foo'", "train, validation, test"]),
    # data=local: a researcher's files ({data}, see `folders`), read and checked before any work.
    (["data=local"], ["data.path=None is not valid", "`data.path=my_reviews.jsonl`"]),
    (["data=local", "data.path={data}/nope.jsonl"], ["nope.jsonl' does not exist", ".parquet"]),
    (["data=local", "data.path={data}/notes.txt"], ["has an unknown extension", ".csv, .json"]),
    (["data=local", "data.kind=summary"], ["data.kind='summary'", "regression, completion, chat"]),
    (
        ["data=local", "data.path={data}/good.jsonl", "data.columns.text=txt"],
        [
            "data.columns.text='txt' is not a column",
            "columns found: text, label",
            "columns.text=text`",
        ],
    ),
    (
        ["data=local", "data.path={data}/empty_rows.csv"],
        ["2 row(s) with an empty or bad 'text'", "empty_rows.csv:4", "a non-empty string"],
    ),
    (
        ["data=local", "data.path={data}/one_class.jsonl"],
        ["holds one class only ('pos')", "at least 2 classes", "data.kind=regression"],
    ),
    (
        ["data=local", "data.path={data}/good.jsonl", "data.kind=regression"],
        ["40 row(s) with an empty or bad 'label'", "good.jsonl:1: 'a'", "a finite number"],
    ),
    (
        ["data=local", "data.path={data}/tiny.jsonl"],
        ["the validation split is empty", "`data.validation_path=...`"],
    ),
    pytest.param(
        ["data=local", "data.path={data}/good.jsonl", "data.eval_split=test"],
        ["data.eval_split='test'", "allowed: train, validation."],
        marks=slow,
    ),
    pytest.param(
        [
            "model=tiny_llama",
            "data=local",
            "data.kind=completion",
            "data.path={data}/prompts.jsonl",
        ],
        ["data.max_len=32 is not valid", "40 prompt(s) leave no room", "`data.max_len="],
        marks=slow,
    ),
    pytest.param(
        ["model=tiny_llama", "data=local", "data.kind=chat", "data.path={data}/chat.jsonl"],
        ["data.kind='chat' needs a model", "model='tiny_llama' has none", "model=smollm2"],
        marks=slow,
    ),
]
SWEEP_CASES = [
    (["experiment=table99"], ["experiment='table99'", "table6_cpu"]),
    (["debug=fst"], ["debug='fst'", "allowed: fast"]),
    (["optim.lr=1e-3,0"], ["Error in sweep job `", "optim.lr=0.0 is not valid", "> 0"]),
    (["seed=0,-1"], ["seed=-1", "an integer >= 0"]),
    (["trainer.keep_checkpoints=0"], ["trainer.keep_checkpoints=0", "an integer >= 1"]),
    (
        ["trainer.mesh.fsdp=1,3"],
        ["fsdp=3`: trainer.mesh.fsdp=3 is not valid", "a divisor of the device"],
    ),
    (["rank=abc,2"], ["rank=abc", "Integer"]),
    (["hydra.sweep.dir={file}/sw"], ["hydra.sweep.dir=", "is a file"]),
    pytest.param(["rank=1,999"], ["sweep job `rank=999", "allowed: 0..32"], marks=slow),
    pytest.param(["targets=q,bogus"], ["targets='bogus'", "ffn_in"], marks=slow),
    pytest.param(["data.batch_size=20000"], ["data.batch_size=20000", "1..8485"], marks=slow),
    (["data=local", "data.path={data}/one_class.jsonl"], ["sweep job `", "one class only"]),
]
ANALYZE_CASES = [
    (["{nope}"], ["'{nope}' does not exist", "experiments.sweep"]),
    (["{empty}"], ["holds no finished run"]),
    (["{file}"], ["does not exist", "a folder made by"]),
    (["--adapters", "{nope}"], ["adapter='{nope}' does not exist", "PEFT LoRA adapter folder"]),
    (["--adapters", "{run}", "--out", "{file}/out"], ["--out=", "is a file", "allowed: a folder"]),
    (["{sweep}", "--base", "minilm"], ["--base, --out and --suggest go with --adapters"]),
    ([], ["give a sweep folder or --adapters"]),
]
REPORT_CASES = [
    (["{nope}"], ["'{nope}' does not exist"]),
    (["{empty}"], ["holds no finished run"]),
    (["{sweep}", "--paper", "table99"], ["'table99'", "allowed: table2", "`--paper table6`"]),
    (["{sweep}", "--out", "{file}/out"], ["--out=", "is a file", "allowed: a folder"]),
]
MISSING_DATA = ["MR data not found", "make install"]  # an empty asset cache


def _cases():
    for module, table, base in (
        (TRAIN, TRAIN_CASES, [*FAST, "hydra.run.dir={run}"]),
        (SWEEP, SWEEP_CASES, [*FAST, "hydra.sweep.dir={sweep}"]),
        (ANALYZE, ANALYZE_CASES, []),
        (REPORT, REPORT_CASES, []),
    ):
        for case in table:
            args, expect = case.values if hasattr(case, "values") else case
            marks = case.marks if hasattr(case, "marks") else ()
            # A case's own output folder replaces the pre-made one.
            own = {a.split("=")[0] for a in args if a.startswith("hydra.")}
            full = [*(b for b in base if b.split("=")[0] not in own), *args]
            name = f"{module.split('.')[1]}:{' '.join(args) or '(none)'}"
            yield pytest.param(module, full, expect, {}, marks=marks, id=name)
    for module, dir_key in ((TRAIN, "hydra.run.dir={run}"), (SWEEP, "hydra.sweep.dir={sweep}")):
        yield pytest.param(
            module,
            [*FAST, dir_key],
            MISSING_DATA,
            {"LORA_JAX_CACHE": "{empty}"},
            marks=slow,
            id=f"{module.split('.')[1]}:empty asset cache",
        )


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, str]:
    sweep = tmp_path / "sweep"
    run = write_run(sweep, "run4", rank=4, model="tiny_bert")  # no "=": a plain Hydra value
    (run / "checkpoints" / "20").mkdir(parents=True)
    (run / "checkpoints" / "20" / "state").write_bytes(b"\x00" * 64)
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("not a folder\n")
    _write_data(tmp_path / "data")
    return {
        "data": str(tmp_path / "data"),
        "sweep": str(sweep),
        "run": str(run),
        "file": str(tmp_path / "a_file"),
        "empty": str(tmp_path / "empty"),
        "nope": str(tmp_path / "nope"),
    }


def _write_data(folder: Path) -> None:
    """A researcher's files, good and bad, for the data=local cases."""
    folder.mkdir()

    def jsonl(name: str, rows: list[dict]) -> None:
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))

    jsonl("good.jsonl", [{"text": f"a film {i}", "label": "ab"[i % 2]} for i in range(40)])
    jsonl("one_class.jsonl", [{"text": f"a film {i}", "label": "pos"} for i in range(40)])
    # Rows that the hash rule all puts in train (row 1 would go to validation).
    jsonl("tiny.jsonl", [{"text": f"film {i}", "label": "ab"[i % 2]} for i in (0, 2, 3, 4)])
    long = " ".join(["the movie was good"] * 20)
    jsonl("prompts.jsonl", [{"prompt": f"{long} {i}", "completion": "yes"} for i in range(40)])
    chat = [
        [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": "hello"}]
        for i in range(40)
    ]
    jsonl("chat.jsonl", [{"messages": turns} for turns in chat])
    (folder / "empty_rows.csv").write_text("text,label\na,x\nb,y\n,x\nc,y\n  ,x\n")
    (folder / "notes.txt").write_text("a note\n")


def _fill(text: str, folders: dict[str, str]) -> str:
    for key, path in folders.items():
        text = text.replace(f"{{{key}}}", path)
    return text


def _tree(root: Path) -> dict[str, str]:
    """Every file and folder under `root` with the hash of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "/"
        for p in sorted(root.rglob("*"))
    }


# Run end to end as well (a subprocess, as a user runs it): one per entry point and way of
# failing, for the exit status a shell sees; every case runs in process (`call_main`).
END_TO_END = {
    f"{TRAIN.split('.')[1]}:optim.lr=0",
    f"{TRAIN.split('.')[1]}:model=foo",
    f"{SWEEP.split('.')[1]}:optim.lr=1e-3,0",
    f"{ANALYZE.split('.')[1]}:--adapters {{nope}}",
    f"{REPORT.split('.')[1]}:{{sweep}} --paper table99",
}


def _in_both_ways():
    for case in _cases():
        env = case.values[3]
        if env:  # read where a process starts (the asset cache): a process of its own
            yield pytest.param(*case.values, run_module, marks=case.marks, id=case.id)
            continue
        yield pytest.param(*case.values, call_main, marks=case.marks, id=case.id)
        if case.id in END_TO_END:
            yield pytest.param(*case.values, run_module, marks=case.marks, id=f"{case.id}:process")


@pytest.mark.parametrize(("module", "args", "expect", "env", "runner"), list(_in_both_ways()))
def test_bad_input_is_one_message_and_exit_2_before_any_work(
    module, args, expect, env, runner, folders, tmp_path
):
    args = [_fill(a, folders) for a in args]
    # HYDRA_FULL_ERROR=1 in the caller's shell would add the traceback this test rules out.
    env = {"HYDRA_FULL_ERROR": "0"} | {k: _fill(v, folders) for k, v in env.items()}
    before = _tree(tmp_path)
    if runner is run_module:
        proc = run_module(module, *args, cwd=tmp_path, check=False, timeout=120, env=env)
    else:
        proc = call_main(module, *args, cwd=tmp_path, env=env, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, f"exit {proc.returncode}:\n{out[-3000:]}"
    for part in expect:
        assert _fill(part, folders) in out, f"{part!r} not in:\n{out[-3000:]}"
    assert "Traceback" not in out, out[-3000:]
    assert _tree(tmp_path) == before  # no run folder, metrics.json or checkpoint; nothing rewritten


@pytest.mark.parametrize(
    ("module", "args"),
    [(TRAIN, ["optim.lr=0"]), (TRAIN, ["model=foo"]), (REPORT, ["{nope}"])],
    ids=["check", "composition", "argparse-entry"],
)
def test_hydra_full_error_adds_the_traceback(module, args, folders, tmp_path):
    extra = [*FAST, "hydra.run.dir={run}"] if module == TRAIN else []
    args = [_fill(a, folders) for a in [*extra, *args]]
    proc = run_module(module, *args, cwd=tmp_path, check=False, env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" in proc.stderr


def test_readme_dict_overrides_work_as_written():
    """`lora.rank_pattern={q:8,v:2}` and `optim.lr_multipliers={lora_b:16}` without `+`."""
    cfg = compose_config(
        "model=tiny_bert",
        "lora.rank_pattern={q:8,v:2}",
        "optim.lr_multipliers={lora_b:16}",
    )
    assert plan(cfg).lora.rank_pattern == {"q": 8, "v": 2}
    assert dict(cfg.optim.lr_multipliers) == {"lora_b": 16.0}
    with pytest.raises(Exception, match="rank_pattern") as err:
        compose_config("lora.rank_pattern={q:eight}")  # the values stay typed
    assert "could not be converted to Integer" in str(err.value.__cause__)


def test_plus_joins_targets_within_one_sweep_job():
    # As `python -m experiments.sweep rank=2 targets=q+ffn_in,qv`: two jobs.
    grid = ["model=tiny_bert", "hydra.sweeper.params.rank=2"]
    jobs = compose_jobs(*grid, "+hydra.sweeper.params.targets='q+ffn_in,qv'")
    assert [plan(j).lora.targets for j in jobs] == [("q", "ffn_in"), ("q", "v")]
    # Quoting for Hydra does the same: targets="'q,ffn_in'".
    (job,) = compose_jobs(*grid, "+hydra.sweeper.params.targets=\"'q,ffn_in'\"")
    assert parse_targets(job.targets) == ("q", "ffn_in")


def test_output_folder_needs_free_space(tmp_path):
    with pytest.raises(ValueError, match=r"hydra.run.dir=.*MiB free; allowed: .* at least"):
        check_output_dir(tmp_path / "run", "hydra.run.dir", "hydra.run.dir=x", min_free=2**60)
    check_output_dir(tmp_path / "new" / "run", "hydra.run.dir", "hydra.run.dir=x", min_free=1)
    assert not (tmp_path / "new").exists()  # checked, not made


def test_at_least_60_cases():
    assert len(list(_cases())) >= 60
    ids = {case.id for case in _cases()}
    assert ids >= END_TO_END, END_TO_END - ids


def _read_only_for_root_too():
    """A child for which mode bits hold even as root: root writes through any mode bits (the
    DAC override capabilities), so the child leaves those out of its bounding set first."""
    if os.geteuid() != 0:
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def drop() -> None:
        for cap in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
            if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    return drop


def test_report_into_a_read_only_sweep_folder_is_one_message(tmp_path):
    """The same message and exit 2 as `experiments.analyze`/`.sweep` there, not an OSError
    traceback, and the folder is left as it was."""
    sweep = tmp_path / "sweep"
    write_run(sweep, "rank=4", rank=4, best=0.8, final=0.8)
    folders = [sweep, *(p for p in sweep.rglob("*") if p.is_dir())]
    for folder in folders:
        folder.chmod(0o555)
    try:  # a root that may not drop the override (no CAP_SETPCAP) cannot run this test
        proc = subprocess.run(
            [sys.executable, "-m", "experiments.report", str(sweep), "--no-wandb"],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=120,
            preexec_fn=_read_only_for_root_too(),
        )
    except subprocess.SubprocessError as err:  # raised by preexec_fn
        pytest.skip(f"root that cannot drop its DAC override ({err}): nothing is read-only")
    finally:
        for folder in folders:
            folder.chmod(0o755)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "is not writable" in proc.stderr and str(sweep) in proc.stderr
    assert "Traceback" not in proc.stderr and not (sweep / "report.md").exists()

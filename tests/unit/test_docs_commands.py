"""The commands the documentation shows still work, checked without running them.

Every `python -m <module> ...` line in a shell code block of README.md and docs/*.md is taken
out (backslash continuations joined, comments dropped) and checked:

- the module exists and can run as `python -m` (a `__main__` guard);
- Hydra entry points (`experiments/*.py` that call `hydra_main`, with their config name): the
  overrides compose against `conf/` as the entry point composes them, the sweep's grid expands,
  and every job passes the light validation a run starts with (`check_choices`,
  `config.check_config`) and, where the command names no placeholder or absolute path,
  `train.plan` (rank against the model, targets, task and model together). A key that does not
  exist fails;
- argparse entry points (`experiments.analyze`, `experiments.report`): their own parser and
  checks accept the options; the run stops where the work would begin.

Placeholders: `<id>`, `<run folder>`, ... stand for a value the reader supplies (a group
option given as one is left out), `[B/ ...]` marks optional arguments (dropped), `...` is
elided text (dropped). Shell braces with a comma outside quotes are refused: bash would expand
`lora.rank_pattern={q:8,v:2}` into two arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import re
import shlex
import sys
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import CONF, ROOT
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGS = {"", "bash", "sh", "shell", "console"}
PLACEHOLDER = "placeholder"  # what `<...>` becomes
SEPARATORS = {"&&", "||", ";", "|"}
MAX_README_LINES = 200


@dataclass(frozen=True)
class Command:
    page: str
    line: int
    module: str
    args: tuple[str, ...]
    text: str
    error: str | None = None  # a console block's `Error...: <message>` after the command

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {self.text}"


def _shell_lines(path: Path) -> list[tuple[int, str, str | None]]:
    """(line number, logical line, the error it is shown to print) of every shell code block
    of a page. In a console block only `$ ` lines are commands; an output line starting with
    `Error` says that the command before it is refused, with that message."""
    out: list[tuple[int, str, str | None]] = []
    lang = None
    pending, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        fence = re.match(r"^\s*```\s*(\S*)", raw)
        if fence:
            lang = None if lang is not None else fence.group(1)
            continue
        if lang not in SHELL_LANGS:
            continue
        line = raw
        if lang == "console" and not pending:
            if not line.startswith("$ "):
                if line.startswith("Error") and out and out[-1][2] is None:
                    out[-1] = (*out[-1][:2], line.split(": ", 1)[1])
                continue
            line = line[2:]
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((start, pending + line, None))
        pending = ""
    return out


def _commands(page: Path, number: int, line: str, error: str | None = None) -> list[Command]:
    if "python" not in line:
        return []
    text = re.sub(r"<[^<>\n]*>", PLACEHOLDER, line)
    try:
        tokens = shlex.split(text, comments=True)
    except ValueError as err:
        raise ValueError(f"{page.name}:{number}: {err}: {line}") from None
    found = []
    for i, tok in enumerate(tokens):
        if " " in tok and "python -m" in tok:  # e.g. ssh --command="cd x && python -m ..."
            found += _commands(page, number, tok[tok.index("python -m") :], error)
        if Path(tok).name in ("python", "python3") and tokens[i + 1 : i + 2] == ["-m"]:
            args = []
            for arg in tokens[i + 3 :]:
                if arg in SEPARATORS or arg.startswith((">", "2>")):
                    break
                args.append(arg)
            text = " ".join(line.split())
            found.append(Command(page.name, number, tokens[i + 2], tuple(args), text, error))
    return found


def _all_commands() -> list[Command]:
    """Every command of the docs, each once (the first place it is shown)."""
    unique: dict[tuple, Command] = {}
    for page in PAGES:
        for number, line, error in _shell_lines(page):
            for cmd in _commands(page, number, line, error):
                unique.setdefault((cmd.module, cmd.args, cmd.error), cmd)
    return list(unique.values())


COMMANDS = _all_commands()


def _entry_points() -> dict[str, str | None]:
    """`experiments.<name>` -> the Hydra config it composes, or None for an argparse one."""
    entries: dict[str, str | None] = {}
    for path in sorted((ROOT / "experiments").glob("*.py")):
        source = path.read_text()
        hydra = re.search(r"hydra_main\(\s*\w+\s*,\s*\w+\s*,\s*\"(\w+)\"\s*\)", source)
        if hydra:
            entries[f"experiments.{path.stem}"] = hydra.group(1)
        elif "argparse" in source:
            entries[f"experiments.{path.stem}"] = None
    return entries


ENTRIES = _entry_points()


def _optional_dropped(args: tuple[str, ...]) -> list[str]:
    """Without `[...]` optional arguments and `...` elisions."""
    kept, depth = [], 0
    for arg in args:
        if depth or arg.startswith("["):
            depth += arg.count("[") - arg.count("]")
            continue
        if arg.strip(".") == "":
            continue
        kept.append(arg)
    return kept


def _module_file(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__main__.py"):
        if candidate.is_file():
            return candidate
    return None


def test_the_docs_show_commands() -> None:
    assert len(COMMANDS) >= 40, [str(c) for c in COMMANDS]
    assert {"experiments.sweep", "experiments.train", "experiments.analyze"} <= {
        c.module for c in COMMANDS
    }
    assert set(ENTRIES) >= {"experiments.sweep", "experiments.train", "experiments.report"}


def test_readme_is_a_front_door() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines"


def _slug(heading: str) -> str:
    """The anchor MkDocs (Python-Markdown's toc) gives a heading."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def test_readme_links_resolve() -> None:
    """The docs site checks its own links (`mkdocs build --strict`); README's are checked here."""
    text = README.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        assert (ROOT / path).exists(), f"README.md links to {target}: no such file"
        if anchor:
            headings = re.findall(r"^#+\s+(.+)$", (ROOT / path).read_text(), flags=re.M)
            assert anchor in {_slug(h) for h in headings}, f"README.md links to {target}"


@pytest.mark.parametrize("cmd", COMMANDS, ids=str)
def test_command_module_exists(cmd: Command) -> None:
    path = _module_file(cmd.module)
    assert path is not None, f"{cmd}: no module {cmd.module} in the repository"
    assert path.name == "__main__.py" or "__main__" in path.read_text(), (
        f"{cmd}: {cmd.module} has no `if __name__ == '__main__'`"
    )
    if cmd.module.startswith("experiments."):
        assert cmd.module in ENTRIES, f"{cmd}: {cmd.module} is neither Hydra nor argparse"


def test_no_brace_expansion() -> None:
    """`a={x:1,y:2}` unquoted is two arguments in bash; the docs quote it."""
    for page in PAGES:
        for number, line, _ in _shell_lines(page):
            if not _commands(page, number, line):
                continue
            bare = re.sub(r"'[^']*'|\"[^\"]*\"", "", line.split(" #")[0])
            assert not re.search(r"\{[^{}\s]*,[^{}\s]*\}", bare), f"{page.name}:{number}: {line}"


HYDRA_COMMANDS = [c for c in COMMANDS if ENTRIES.get(c.module)]
ARGPARSE_COMMANDS = [c for c in COMMANDS if c.module in ENTRIES and ENTRIES[c.module] is None]


def _overrides(cmd: Command, groups: set[str]) -> tuple[list[str], bool]:
    """The command's Hydra overrides, and whether it names files only the reader has."""
    overrides, needs_files = [], False
    for arg in _optional_dropped(cmd.args):
        assert "=" in arg or arg.startswith("~"), f"{cmd}: `{arg}` is not a Hydra override"
        key, _, value = arg.partition("=")
        if PLACEHOLDER in value:
            needs_files = True
            if key.lstrip("+~") in groups:
                continue  # a group option the reader picks
        elif value.startswith("/") and not key.startswith("hydra"):
            needs_files = True
        overrides.append(arg)
    return overrides, needs_files


def _covering_jobs(config) -> list[list[str]]:
    """The override lists of a multirun's jobs (as `lora_jax.sweep.grid.job_configs` expands
    them), cut to the first job that brings each swept value: the keys are the same in every
    job, and each value is checked once (a 4 x 3 x 2 grid: 4 jobs, not 24)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    params = OmegaConf.to_container(config.hydra.sweeper.get("params") or {})
    arguments = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    jobs, seen = [], set()
    for batch in BasicSweeper.split_arguments(_parser().parse_overrides(arguments), None):
        for job in batch:
            if not seen >= set(job):
                jobs.append(list(job))
                seen |= set(job)
    return jobs


def _parser():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())


@functools.cache
def _mode(name: str) -> RunMode:
    """The mode `hydra.main` runs the config in (conf/sweep.yaml: MULTIRUN)."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return GlobalHydra.instance().hydra.get_mode(config_name=name, overrides=[]) or RunMode.RUN


def _jobs(config, groups: set[str]) -> Iterator[tuple[bool, DictConfig]]:
    """(whether Hydra composed it, config) of a multirun's covering jobs. A job that picks a
    config group by a swept value is composed by Hydra (`load_sweep_config`); the others are the
    multirun's config with the job's values set (as composed, but a full composition per job
    would make this test minutes long)."""
    loader = GlobalHydra.instance().config_loader()
    composed = set(config.hydra.overrides.task)  # as given, so a swept one is not in it
    for overrides in _covering_jobs(config):
        parsed = _parser().parse_overrides(overrides)
        is_group = [o.key_or_group in groups or "/" in o.key_or_group for o in parsed]
        if any(g and o.input_line not in composed for o, g in zip(parsed, is_group, strict=True)):
            yield True, loader.load_sweep_config(config, overrides)
            continue
        for override, group in zip(parsed, is_group, strict=True):
            if not group and not override.key_or_group.startswith("hydra"):
                key = override.key_or_group
                OmegaConf.update(config, key, override.value(), merge=False)
        yield False, config


_PLANNED: set[str] = set()  # the configs `plan` accepted
PLAN_KEYS = ("lora", "model", "data")  # what `plan` reads


def _compose_and_check(name: str, overrides: list[str], with_plan: bool) -> int:
    """Compose as the entry point does, expand a sweep, validate its jobs; the number checked."""
    from lora_jax.config import check_config
    from lora_jax.sweep.validate import check_choices
    from lora_jax.train import plan

    groups = {p.name for p in CONF.iterdir() if p.is_dir()}
    mode = _mode(name)
    checked = 0
    with initialize_config_dir(str(CONF), version_base="1.3"):
        config = GlobalHydra.instance().hydra.compose_config(name, overrides, run_mode=mode)
        jobs = _jobs(config, groups) if mode == RunMode.MULTIRUN else [(True, config)]
        for composed, job in jobs:
            if composed or not checked:  # the choices of the config groups
                check_choices(job)
            check_config(job)
            # The model- and task-dependent checks, once per distinct LoRA, model and task.
            key = repr([OmegaConf.to_container(job[k], resolve=True) for k in PLAN_KEYS])
            if with_plan and key not in _PLANNED:
                plan(job)
                _PLANNED.add(key)
            checked += 1
    return checked


@pytest.mark.parametrize("cmd", HYDRA_COMMANDS, ids=str)
def test_hydra_command_composes(cmd: Command) -> None:
    from hydra.errors import HydraException

    name = ENTRIES[cmd.module]
    groups = {p.name for p in CONF.iterdir() if p.is_dir()}
    overrides, needs_files = _overrides(cmd, groups)
    if cmd.error is None:
        assert _compose_and_check(name, overrides, with_plan=not needs_files) >= 1
        return
    # A documented refusal: refused, with the documented message.
    with pytest.raises((ValueError, HydraException)) as refused:
        _compose_and_check(name, overrides, with_plan=True)
    assert cmd.error in str(refused.value), f"{cmd}: documented {cmd.error!r}"


class _Parsed(Exception):
    """Raised where an argparse entry point would start its work."""


@contextlib.contextmanager
def _stop(*args, **kwargs):
    raise _Parsed
    yield  # pragma: no cover


@pytest.mark.parametrize("cmd", ARGPARSE_COMMANDS, ids=str)
def test_argparse_command_parses(cmd: Command, monkeypatch, capsys) -> None:
    import importlib

    module = importlib.import_module(cmd.module)
    stops_at_work = hasattr(module, "user_errors")
    parsed: list[argparse.Namespace] = []
    original = argparse.ArgumentParser.parse_args

    def parse_args(self, *args, **kwargs):
        parsed.append(original(self, *args, **kwargs))
        if not stops_at_work:
            raise _Parsed  # no known point where the work starts: stop right after parsing
        return parsed[-1]

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)
    # Its checks pass, then it enters `user_errors` around the work: stop there.
    monkeypatch.setattr(module, "user_errors", _stop, raising=False)
    monkeypatch.setattr(sys, "argv", [cmd.module, *_optional_dropped(cmd.args)])
    try:
        module.main()
    except SystemExit as exit_:
        pytest.fail(f"{cmd}: exit {exit_.code}\n{capsys.readouterr().err}")
    except _Parsed:
        pass
    else:
        pytest.fail(f"{cmd}: ran to the end (the test should have stopped it)")
    if cmd.module == "experiments.report" and parsed[-1].paper:
        from lora_jax.report import paper

        assert set(parsed[-1].paper) <= set(paper.ITEMS), cmd


def test_the_gpu_check_runs_test_files_that_exist():
    # scripts/gpu_check.sh names the device tests by path; a moved file must not drop silently.
    script = (ROOT / "scripts" / "gpu_check.sh").read_text()
    block = re.search(r'^TESTS="(.*?)"$', script, re.M | re.S).group(1)
    wandb = re.search(r'^NEED_WANDB_FILES="(.*?)"$', script, re.M).group(1)
    paths = block.split()
    assert len(paths) >= 15 and set(wandb.split()) <= set(paths)
    assert [p for p in paths if not (ROOT / p).is_file()] == []

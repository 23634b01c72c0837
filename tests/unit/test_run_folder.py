"""The run-folder contract (`lora_jax/runs/layout.py`) is the one place that names a run
folder's and a sweep folder's files: no other module spells them, and the README's folder tree
shows only names the layout defines and every one a user reaches for."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import ROOT

from lora_jax.runs import layout
from lora_jax.runs.layout import RunFolder, SweepFolder

# Layout names that are also ordinary words of other meanings, left out of the scan: the W&B
# logger backend ("wandb"), audit.csv's first column ("adapter"), Orbax's item name in
# `train.checkpoint` ("state"), and the lock of a prepared data folder (".lock").
OTHER_MEANINGS = {layout.WANDB_DIR, layout.ADAPTER_DIR, layout.STATE_DIR, layout.LOCK_FILE}
SPELLED = layout.NAMES - OTHER_MEANINGS
# What a user opens in a run or sweep folder: each is in the README's tree.
MAIN = {
    layout.CONFIG_FILE,
    layout.IDENTITY_FILE,
    layout.METRICS_FILE,
    layout.HISTORY_FILE,
    layout.CHECKPOINTS_DIR,
    layout.ADAPTER_DIR,
    layout.BASE_KERNELS_FILE,
    layout.FULL_UPDATE_FILE,
    layout.WANDB_DIR,
    *layout.SWEEP_FILES,
} - {layout.ANALYSIS_RUN_DIR}


def _sources() -> list[Path]:
    files = [*(ROOT / "lora_jax").rglob("*.py"), *(ROOT / "experiments").rglob("*.py")]
    return sorted(p for p in files if (ROOT / "lora_jax" / "runs") not in p.parents)


def _docstrings(tree: ast.AST) -> set[int]:
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, kinds)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }


def test_no_module_outside_the_contract_spells_a_run_folder_name():
    spelled = []
    for path in _sources():
        tree = ast.parse(path.read_text())
        docs = _docstrings(tree)
        spelled += [
            f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and node.value in SPELLED and id(node) not in docs
        ]
    assert not spelled, f"use lora_jax.runs.layout instead of spelling: {spelled}"


def _readme_tree() -> set[str]:
    """The names in the first column of the README's `outputs/sweeps/<time>/` tree."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"^outputs/sweeps/<time>/\n(.*?)^```", text, re.M | re.S)
    assert block, "README.md has no `outputs/sweeps/<time>/` tree"
    names = set()
    for line in block.group(1).splitlines():
        words = line.split()
        column = words[:1]
        while column[-1].endswith(","):  # `audit.json, audit.csv, ...`
            column.append(words[len(column)])
        for entry in column:
            parts = entry.rstrip(",").split("/")
            names |= {p for p in parts if p and not set(p) & set("<*=")}
    return names


def test_the_readme_tree_shows_the_layout():
    shown = _readme_tree()
    assert shown <= layout.NAMES, f"README names files the layout does not: {shown - layout.NAMES}"
    assert shown >= MAIN, f"README's tree misses {MAIN - shown}"


def test_the_folders_put_each_name_in_its_place(tmp_path):
    run, sweep = RunFolder(tmp_path / "r"), SweepFolder(tmp_path)
    assert run.checkpoint_state(20) == tmp_path / "r" / "checkpoints" / "20" / "state"
    assert run.overrides == tmp_path / "r" / ".hydra" / "overrides.yaml"
    assert sweep.run("r") == run
    assert {sweep.summary.name, sweep.report_html.name, sweep.advice.name} <= layout.NAMES
    assert set(layout.RUN_FILES) <= layout.NAMES and len(set(layout.RUN_FILES)) == len(
        layout.RUN_FILES
    )

"""The import layering of DESIGN.md, stated as a test.

Every module sits in a room (its first name under `lora_jax`), and the rooms in layers:
experiments -> sweep, report -> evals -> train -> models, data, partition, config, config_rules ->
adapter_io, analysis -> weights, peft_adapter -> lora, lazy, scaling, runs. A module imports
only its own layer and those below; no private name (`_x`) crosses modules; no two files share
a name. `runs` (the run-folder contract) sits in the lowest layer: it imports nothing of ours
but `lazy`, holds the lock of the process that writes a folder (`runs.lock`), and `user_errors`
names run-folder files through its layout.

The analysis reads files: it may import the LoRA math, the checkpoint and adapter readers and
the run record, never training, models, data, planted tasks, sweeps or reports. The readers
below it import only each other. Checked on the source (every import statement, module-level
or inside a function) and on a fresh interpreter (what importing the analysis loads).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGE = ROOT / "lora_jax"
# The readers and the math the analysis may use; they import only among themselves.
READERS = {
    "lora_jax.cache",
    "lora_jax.lora",
    "lora_jax.lazy",
    "lora_jax.scaling",
    "lora_jax.peft_adapter",
    "lora_jax.audit.cores",
    "lora_jax.audit.measure",
    "lora_jax.weights.hf_names",
    "lora_jax.weights.base_kernels",
    "lora_jax.adapter_io",
    "lora_jax.runs.layout",
    "lora_jax.runs.record",
    "lora_jax.runs.files",
    "lora_jax.weights.gguf",
    "lora_jax.weights.safetensors",
}
# Lowest first; the package face (`lora_jax/__init__.py`) re-exports from every layer.
LAYERS = (
    ("cache", "lora", "lazy", "scaling", "user_errors", "runs"),
    ("weights", "peft_adapter"),
    ("adapter_io", "analysis", "audit"),
    ("models", "data", "partition", "config", "config_rules", "budget"),
    ("train",),
    ("evals",),
    ("report", "sweep", "cli", "stages"),
)
LAYER_OF = {room: i for i, rooms in enumerate(LAYERS) for room in rooms}


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every `lora_jax.*` module that `path` imports, at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m.startswith("lora_jax.") and _is_module(m)}


def _is_module(name: str) -> bool:
    path = PACKAGE.parent / Path(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _files(sub: str = "") -> list[Path]:
    return sorted((PACKAGE / sub).rglob("*.py"))


@pytest.mark.parametrize("path", _files("analysis"), ids=lambda p: p.name)
def test_analysis_imports_only_the_math_and_the_readers(path):
    bad = {m for m in _imports(path) if not m.startswith("lora_jax.analysis") and m not in READERS}
    assert not bad, f"{path.name} imports {sorted(bad)}; allowed: {sorted(READERS)}"


@pytest.mark.parametrize("module", sorted(READERS))
def test_readers_import_only_each_other(module):
    path = PACKAGE.parent / Path(*module.split(".")).with_suffix(".py")
    allowed = READERS
    bad = {m for m in _imports(path) if m not in allowed and m != module}
    assert not bad, f"{module} imports {sorted(bad)}; allowed: {sorted(allowed)}"


def test_public_face_reexports_the_verbs():
    import lora_jax

    # Lazy exports (PEP 562): every name resolves to its module's object on first use.
    assert all(getattr(lora_jax, name) is not None for name in lora_jax.__all__)
    for name in ("LoRADense", "LoRAConfig", "merge", "label_params", "split", "phi_grid_a"):
        assert name in lora_jax.__all__


def _room(module: str) -> str:
    return module.split(".")[1]


@pytest.mark.parametrize("path", _files(), ids=lambda p: _module(p))
def test_no_module_imports_a_layer_above_its_own(path):
    module = _module(path)
    if module == "lora_jax":
        return
    assert _room(module) in LAYER_OF, f"{module} is in no layer of LAYERS"
    up = {m for m in _imports(path) if LAYER_OF.get(_room(m), -1) > LAYER_OF[_room(module)]}
    assert not up, f"{module} (layer {LAYER_OF[_room(module)]}) imports {sorted(up)} from above"


@pytest.mark.parametrize("path", [*_files(), *Path(PACKAGE.parent, "experiments").glob("*.py")])
def test_no_private_name_crosses_modules(path):
    crossing = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lora_jax"):
            crossing += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
            crossing += (
                [node.module] if any(p.startswith("_") for p in node.module.split(".")) else []
            )
        elif isinstance(node, ast.Import):
            crossing += [
                a.name for a in node.names if a.name.startswith("lora_jax") and "._" in a.name
            ]
    assert not crossing, f"{path.name} imports private names {crossing}"


def test_no_two_files_share_a_name():
    stems: dict[str, list[str]] = {}
    for path in _files():
        if path.name != "__init__.py":
            stems.setdefault(path.stem, []).append(_module(path))
    assert not {k: v for k, v in stems.items() if len(v) > 1}


# The entry layer: it gets Hydra's DictConfig (the validation needs its `hydra` node) and turns
# it into the typed config once (`config.run_config`, defined in `config.py`).
DICTCONFIG_ROOMS = ("lora_jax/cli.py", "lora_jax/config.py", "lora_jax/sweep/")


def _names_dictconfig(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.alias) and node.name.split(".")[-1] == "DictConfig":
            return True
        if isinstance(node, ast.Name) and node.id == "DictConfig":
            return True
        if isinstance(node, ast.Attribute) and node.attr == "DictConfig":
            return True
    return False


@pytest.mark.parametrize(
    "path",
    [p for p in _files() if not str(p.relative_to(PACKAGE.parent)).startswith(DICTCONFIG_ROOMS)],
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_library_code_takes_the_typed_config_only(path):
    """DESIGN.md: Hydra's DictConfig is typed once at the boundary; library code never sees one
    (no `DictConfig` imported, annotated or tested with `isinstance` outside the entry layer)."""
    assert not _names_dictconfig(path), (
        f"{path.relative_to(PACKAGE.parent)} names DictConfig: take `lora_jax.config.Config` "
        "and let the entry point (cli.py, sweep/, experiments/) call `run_config` once."
    )

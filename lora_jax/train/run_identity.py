"""Run identity: a run folder records the config that produced its results, and a rerun or
resume with another config stops before any work.

`run_identity.json` (written when a run starts, before any training) holds `hash`, a SHA-256
of `config`: the resolved run config flattened to dotted keys, minus the keys that do not
change results (`NOT_RESULTS`: logging, progress, paths, checkpoint cadence, W&B).

A folder holds results once it has `metrics.json`, a checkpoint or a logged row. Then
`check` compares; a difference is refused (`RunIdentityError`) unless `trainer.restart=true`,
which clears the folder's results and starts the run afresh. A folder made before run
identity existed is compared with its `config.yaml`. The entry points' validation pass checks
every job before Hydra touches a folder (`lora_jax.sweep.validate.check_jobs`, which finds each
job's folder in its `hydra` node and calls `check`); each run checks again as it starts
(`claim`, in `train.run` and the fused engine). By then Hydra has rewritten the job's
`.hydra/*.yaml`, so `run_identity.json` keeps a copy of them from the last accepted start,
and a refused start puts them back: the folder still describes its own results.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from lora_jax.config import Config, to_dict
from lora_jax.data.task_spec import LOCAL_TASK
from lora_jax.runs.files import write_atomic
from lora_jax.runs.layout import RUN_FILES, RunFolder
from lora_jax.runs.record import NOT_RESULT_GROUPS, NOT_RESULTS

_SHOWN = 12  # differing keys listed per run


class RunIdentityError(ValueError):
    """A run folder holds results of another config."""


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping) and node:
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def identity(config: Config | Mapping[str, Any]) -> dict[str, Any]:
    """The result-changing part of a run config, as {dotted key: value}; for `data=local` also
    `data.content`, the files' content key: a file edited in place is another config."""
    content = _local_content(config)
    if isinstance(config, Config):
        config = to_dict(config)
    flat = _flatten({k: v for k, v in config.items() if k not in NOT_RESULT_GROUPS})
    if content is not None:
        flat["data.content"] = content
    elif flat.get("data.task") != LOCAL_TASK:  # how local files are read: not used here
        flat = {k: v for k, v in flat.items() if not k.startswith(LOCAL_ONLY)}
    return {k: v for k, v in sorted(flat.items()) if k not in NOT_RESULTS}


# The data keys only `data=local` reads: left out of other runs' identity, so the hashes of
# run folders made before they existed stay what they were.
LOCAL_ONLY = ("data.path", "data.validation_path", "data.test_path", "data.kind", "data.columns.")


def _local_content(config: Any) -> str | None:
    # A Config; a plain mapping is an older folder's config.yaml (no local data).
    data = getattr(config, "data", None)
    if getattr(data, "task", None) != LOCAL_TASK or not getattr(data, "path", None):
        return None
    from lora_jax.data.local import content_key, options_of

    return content_key(options_of(data))


def identity_hash(ident: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


def has_results(workdir: Path) -> bool:
    """Whether `workdir` holds anything a run produced (results a config change would mix)."""
    folder = RunFolder(workdir)
    history, steps = folder.history, folder.checkpoints
    return (
        folder.metrics.exists()
        or (history.is_file() and history.stat().st_size > 0)
        or (steps.is_dir() and any(steps.iterdir()))
    )


def _recorded(workdir: Path) -> tuple[dict[str, Any], bool] | None:
    """(the identity the folder's results were made with, whether it is exact); None if
    unknown. Exact from `run_identity.json`; from `config.yaml` for older folders, whose
    `trainer.steps`/`eval_every` (epochs) and `lora.rank` (budget) are the derived values."""
    file = RunFolder(workdir).identity
    try:
        return json.loads(file.read_text())["config"], True
    except (OSError, ValueError, KeyError, TypeError):
        pass  # missing or damaged: fall back to config.yaml
    try:
        config = yaml.safe_load(RunFolder(workdir).config.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return (identity(config), False) if isinstance(config, dict) else None


@functools.cache
def _defaults() -> dict[str, Any]:
    return identity(Config())


def differences(old: Mapping[str, Any], new: Mapping[str, Any], exact: bool) -> list[str]:
    """`key: old -> new` for every differing key. Keys on one side only are compared exactly
    when `exact` (a schema key added since an older folder was written is not), except a key
    the schema added since, at its default, which changes nothing (`optim.name: adamw`)."""
    keys = sorted(set(old) | set(new)) if exact else sorted(set(old) & set(new))
    added = _defaults()
    keys = [k for k in keys if k in old or k not in added or new.get(k) != added[k]]
    if not exact:
        if new.get("trainer.epochs") is not None:
            keys = [k for k in keys if k not in ("trainer.steps", "trainer.eval_every")]
        if new.get("lora.budget_rank") is not None:
            keys = [k for k in keys if k != "lora.rank"]
    missing = "(unset)"
    return [
        f"{k}: {old.get(k, missing)!r} -> {new.get(k, missing)!r}"
        for k in keys
        if old.get(k, missing) != new.get(k, missing)
    ]


def check(cfg: Config, workdir: str | Path) -> list[str]:
    """The keys (`key: old -> new`) in which `cfg` differs from the config that made the
    results in `workdir`; [] when they agree or the folder holds no results."""
    workdir = Path(workdir)
    if not has_results(workdir):
        return []
    recorded = _recorded(workdir)
    if recorded is None:
        return []  # results without any config file: nothing to compare with
    old, exact = recorded
    return differences(old, identity(cfg), exact)


def record(cfg: Config, workdir: str | Path) -> None:
    """Write `run_identity.json` for `cfg` (with a copy of `.hydra/*.yaml`), atomically."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ident = identity(cfg)
    hydra = {p.name: p.read_text() for p in sorted(RunFolder(workdir).hydra.glob("*.yaml"))}
    body = {"hash": identity_hash(ident), "config": ident, "hydra": hydra}
    write_atomic(RunFolder(workdir).identity, json.dumps(body, indent=1, default=str))


def restore_hydra(workdir: Path) -> None:
    """Put back the `.hydra/*.yaml` of the folder's last accepted start (Hydra rewrote them
    for the refused one); nothing to do for folders without a copy."""
    try:
        saved = json.loads(RunFolder(workdir).identity.read_text()).get("hydra") or {}
    except (OSError, ValueError, AttributeError):
        return
    for name, text in saved.items():
        path = RunFolder(workdir).hydra / name
        if path.parent.is_dir() and (not path.exists() or path.read_text() != text):
            write_atomic(path, text)


def clear(workdir: Path) -> None:
    """Remove what a run wrote into `workdir` (`runs.layout.RUN_FILES`), keeping `.hydra/`."""
    for name in RUN_FILES:
        path = workdir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def message(refused: Sequence[tuple[Path, list[str]]]) -> str:
    lines = []
    for workdir, diffs in refused:
        lines.append(f"{workdir} holds results of another config (recorded -> now):")
        lines += [f"  {d}" for d in diffs[:_SHOWN]]
        if len(diffs) > _SHOWN:
            lines.append(f"  ... and {len(diffs) - _SHOWN} more")
    lines.append(
        "Nothing was changed. Either write to a new folder (hydra.sweep.dir=<new folder> for a "
        "sweep, hydra.run.dir=<new folder> for one run), or add trainer.restart=true to delete "
        "these runs' results and train them again with the new config."
    )
    return "\n".join(lines)


def claim(runs: Sequence[tuple[Config, str | Path]]) -> None:
    """Check every (config, run folder) before any work; record the identities of the runs
    that may start. With `trainer.restart=true` a differing folder is cleared first.

    Raises:
        RunIdentityError: some folders hold results of another config (all are listed;
            their `.hydra/` files are put back first).
    """
    refused = []
    for cfg, workdir in runs:
        workdir = Path(workdir)
        diffs = check(cfg, workdir)
        if diffs and cfg.trainer.restart:
            print(f"[lora_jax] trainer.restart=true: clearing {workdir} ({len(diffs)} keys differ)")
            clear(workdir)
        elif diffs:
            restore_hydra(workdir)
            refused.append((workdir, diffs))
    if refused:
        raise RunIdentityError(message(refused))
    for cfg, workdir in runs:
        record(cfg, workdir)


def exit_on_error(err: RunIdentityError) -> None:
    """Print `err` as one message and exit with status 2 (a user error: no traceback; the
    Hydra callback of a sweep would turn an exception into a warning). `HYDRA_FULL_ERROR=1`
    raises it instead, with its traceback."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise err
    print(f"Error: {err}", file=sys.stderr)
    raise SystemExit(2) from None

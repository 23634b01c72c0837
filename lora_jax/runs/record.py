"""What a finished run folder holds, read once into a typed record.

A run folder (`lora_jax.runs.layout`) holds `metrics.json` (what was trained and how well),
`config.yaml` (the resolved config), `history.jsonl`, `.hydra/overrides.yaml` and, for LoRA
runs, `adapter/` (PEFT layout). `RunRecord` is the one view of it that the analysis pairs runs
by and the report groups them by: by the record's fields, never by parsing override strings.
Of ours it imports only the layout, so every layer can use it.

Example:
    >>> runs = read_runs("outputs/sweeps/default")  # doctest: +SKIP
    >>> [(r.rank, r.seed, r.value("best")) for r in runs]  # doctest: +SKIP
    >>> pairs_differing_in(runs, "rank")  # runs equal in every other axis  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from safetensors.numpy import load_file

from lora_jax.runs.files import read_jsonl
from lora_jax.runs.layout import METRICS_FILE, RunFolder

# Config keys that do not change a run's results: paths, logging, progress, checkpoint cadence,
# the restart switch; the top-level axes (`rank`, `alpha`, ...) only feed the `lora` keys that
# hold the values the run uses; `paper` labels report items. Run identity
# (`lora_jax.train.run_identity`) and the experiment axes below both leave them out.
NOT_RESULTS = (
    "workdir",
    "paper",
    "rank",
    "alpha",
    "targets",
    "scaling",
    "data.worker_count",
    "data.eval_batch_size",
    "trainer.progress",
    "trainer.log_every",
    "trainer.checkpoint_every",
    "trainer.keep_checkpoints",
    "trainer.spectrum_every",
    "trainer.restart",
    "trainer.mesh.fsdp",  # where the weights live; the numbers agree to float tolerance
    # Which process this is and how the processes meet; their number stays (the global batch).
    "trainer.distributed",
    "trainer.coordinator",
    "trainer.process_id",
    "trainer.distributed_timeout",
    "generate.batch_size",
)
# `hparams` is a lookup table that experiment files index; the values used land in their keys.
NOT_RESULT_GROUPS = ("logger", "hydra", "hparams")
# Not experiment axes either: the seed (an axis of its own) and the keys that only repeat the
# metrics.json fields of `RunRecord`.
_NOT_AXES = {
    *NOT_RESULTS,
    "seed",
    "model.name",
    "data.task",
    "lora.rank",
    "lora.alpha",
    "lora.scaling",
    "lora.targets",
    "lora.full_finetune",
}


class RunFolderError(ValueError):
    """A folder that should hold finished runs does not (missing, empty, unreadable)."""


def read_metrics(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's parsed `metrics.json`; None when missing, or damaged (with a warning: the
    run then counts as unfinished, so rerunning its command trains or resumes it again)."""
    metrics_file = RunFolder(run_dir).metrics
    if not metrics_file.is_file():
        return None
    try:
        metrics = json.loads(metrics_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        warnings.warn(
            f"{metrics_file} is damaged ({err}); the run counts as unfinished and runs again "
            "(resuming from its checkpoints) when its command is rerun.",
            stacklevel=2,
        )
        return None
    return metrics if isinstance(metrics, dict) else None


def _flatten(config: dict[str, Any]) -> dict[str, Any]:
    """`group.key` for the config groups' fields; dict and list values (`lora.rank_pattern`,
    `optim.lr_multipliers`) stay one value, so a run without them still has the key."""

    def leaf(v: Any) -> Any:
        return json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v

    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, dict) and v:
            out.update({f"{k}.{kk}": leaf(vv) for kk, vv in v.items()})
        else:
            out[k] = leaf(v)
    return out


@dataclass(frozen=True)
class RunRecord:
    """One finished run: what was trained (model, task, rank, targets, alpha, scaling, seed,
    full fine-tuning or not), its metrics and where its files are.

    Attributes:
        name: the run folder's name (Hydra's override string in a sweep).
        run_dir: the run folder.
        metrics: the parsed `metrics.json`.
        config: the resolved `config.yaml` as a plain dict ({} when missing).
        overrides: the run's command-line overrides (`.hydra/overrides.yaml`; [] if none).
    """

    name: str
    run_dir: Path
    metrics: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    overrides: tuple[str, ...] = ()

    @property
    def folder(self) -> RunFolder:
        """The run folder's paths (`lora_jax.runs.layout`)."""
        return RunFolder(self.run_dir)

    @property
    def model(self) -> str:
        return str(self.metrics["model"])

    @property
    def task(self) -> str:
        return str(self.metrics["task"])

    @property
    def rank(self) -> int:
        return int(self.metrics["rank"])

    @property
    def targets(self) -> tuple[str, ...]:
        """The adapted targets; () for runs without LoRA (rank 0)."""
        return tuple(self.metrics["targets"]) if self.rank > 0 else ()

    @property
    def alpha(self) -> float:
        return float(self.metrics["alpha"])

    @property
    def scaling(self) -> str:
        return str(self.metrics["scaling"])

    @property
    def seed(self) -> int:
        return int(self.metrics["seed"])

    @property
    def full_finetune(self) -> bool:
        return bool(self.metrics["full_finetune"])

    @property
    def main_metric(self) -> str:
        return self.metrics["main_metric"]

    @property
    def adapter_dir(self) -> Path | None:
        """The exported LoRA adapter (PEFT layout), or None (rank 0, full fine-tuning)."""
        folder = self.folder.adapter
        has = self.rank > 0 and not self.full_finetune and folder.is_dir()
        return folder if has else None

    @property
    def paper(self) -> list[str]:
        """The paper items the run's config names (`paper: [...]`; [] in older sweeps)."""
        return [str(p) for p in self.config.get("paper") or []]

    @functools.cached_property
    def axes(self) -> dict[str, Any]:
        """Every axis of the run but the seed: the metrics.json fields, then other config keys."""
        axes: dict[str, Any] = {
            "model": self.model,
            "task": self.task,
            "full_finetune": self.full_finetune,
            "rank": self.rank,
            "targets": ",".join(self.targets),
            "alpha": self.alpha,
            "scaling": self.scaling,
        }
        for key, value in _flatten(self.config).items():
            if key not in _NOT_AXES and key.split(".")[0] not in NOT_RESULT_GROUPS:
                axes[key] = value
        return axes

    @functools.cached_property
    def eval_steps(self) -> int | None:
        """How many evaluations logged the main metric (None without `history.jsonl`)."""
        history = self.folder.history
        if not history.exists():
            return None
        key = f"eval/{self.main_metric}"
        rows = read_jsonl(history, contains=key)
        return len({row["step"] for row in rows if row.get(key) is not None})

    @property
    def end_only(self) -> bool:
        """Whether the main metric was measured only at the end (so best = final).

        A metric measured once, at the end of training (BLEU of decoded text), has no best
        step of its own: `lora_jax.train` fills `best` with it only when the last step is best.
        """
        best = self.metrics["best"].get(self.main_metric)
        return best is None or (self.eval_steps is not None and self.eval_steps <= 1)

    def value(self, at: str = "best", metric: str | None = None) -> float | None:
        """`metric` (default: the main one) at the best evaluation step or the final step."""
        metric = metric or self.main_metric
        if at not in ("best", "final"):
            raise ValueError(f"at={at!r} is not valid; allowed: best, final.")
        if at == "best" and not (metric == self.main_metric and self.end_only):
            v = self.metrics["best"].get(metric)
        else:
            v = self.metrics["final"].get(metric)
        return None if v is None else float(v)

    def planted_factors(self) -> dict[tuple[int, str], dict[str, np.ndarray]] | None:
        """{(layer, target): {"u", "s", "v"}} of a planted-rank run (`lora_jax.planted`), else None."""
        path = self.folder.planted
        if not path.is_file():
            return None
        out: dict[tuple[int, str], dict[str, np.ndarray]] = {}
        for key, value in load_file(path).items():
            layer, target, part = key.split("/")
            out.setdefault((int(layer.removeprefix("layer_")), target), {})[part] = value
        return dict(sorted(out.items()))

    @property
    def checkpoint_steps(self) -> list[int]:
        """The steps of the checkpoints the run kept (`trainer.keep_checkpoints` newest), sorted.

        Orbax names a finished step `<step>/` and one being written `<step>.orbax-checkpoint-tmp*`,
        so only all-digit folders with a `state/` count.
        """
        folder = self.folder
        if not folder.checkpoints.is_dir():
            return []
        steps = (int(p.name) for p in folder.checkpoints.iterdir() if p.name.isdigit())
        return sorted(s for s in steps if folder.checkpoint_state(s).is_dir())

    def checkpoint_trainable(self, step: int) -> dict[str, Any]:
        """The trainable parameters saved at `step` (adapters and head; no optimizer state),
        as a nested dict of numpy arrays, read from the Orbax files without building a model.

        Raises:
            FileNotFoundError: no checkpoint of that step (`checkpoint_steps` lists them).
        """
        import jax
        import orbax.checkpoint as ocp

        path = self.folder.checkpoint_state(step).absolute()
        if not path.is_dir():
            raise FileNotFoundError(
                f"{self.run_dir} has no checkpoint of step {step}; allowed: the steps it kept, "
                f"{self.checkpoint_steps} (`trainer.keep_checkpoints` sets how many)."
            )
        absl = logging.getLogger("absl")  # Orbax logs 3 INFO lines per read (Hydra shows INFO)
        level = absl.level
        absl.setLevel(max(level, logging.WARNING))
        reader = ocp.PyTreeCheckpointHandler()
        try:
            tree = reader.metadata(path).tree
            # Only the trainable subtree, as host numpy arrays: whatever devices or sharding
            # the run saved from, and without reading the optimizer's moments.
            item = {"trainable": tree["trainable"]}
            numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
            args = ocp.args.PyTreeRestore(item=item, restore_args=numpy, partial_restore=True)
            return reader.restore(path, args=args)["trainable"]
        finally:
            reader.close()
            absl.setLevel(level)

    def summary(self) -> dict[str, Any]:
        """The run's entry in `sweep_summary.json`."""
        return {
            "run_dir": str(self.run_dir),
            "name": self.name,
            "overrides": list(self.overrides),
            "metrics": self.metrics,
        }


def read_run(run_dir: str | Path) -> RunRecord | None:
    """The record of the run in `run_dir`, or None when it has not finished."""
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    if metrics is None or metrics.get("status") != "complete":
        return None
    folder = RunFolder(run_dir)
    config = yaml.safe_load(folder.config.read_text()) if folder.config.exists() else {}
    overrides = yaml.safe_load(folder.overrides.read_text()) if folder.overrides.exists() else []
    return RunRecord(run_dir.name, run_dir, metrics, config or {}, tuple(overrides or ()))


def read_runs(sweep_dir: str | Path) -> list[RunRecord]:
    """Every finished run directly under `sweep_dir`, sorted by folder name.

    Raises:
        RunFolderError: the folder is missing or holds no finished run.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise RunFolderError(
            f"sweep folder {str(sweep_dir)!r} does not exist; pass a folder made by "
            "`python -m experiments.sweep` (e.g. outputs/sweeps/<id>)."
        )
    runs = [r for f in sorted(sweep_dir.glob(f"*/{METRICS_FILE}")) if (r := read_run(f.parent))]
    if not runs:
        raise RunFolderError(
            f"{str(sweep_dir)!r} holds no finished run (no <run>/{METRICS_FILE} with status "
            "complete); finish the sweep first: run the same `python -m experiments.sweep ...` "
            f"command again with hydra.sweep.dir={sweep_dir} (finished runs are skipped)."
        )
    return runs


def shared_axes(runs: list[RunRecord]) -> list[dict[str, Any]]:
    """Each run's axes restricted to the keys every run has.

    A config key that only some runs have was added by a later version of the code (older runs
    used its default then): not an axis, or old and new runs would never compare.
    """
    shared = set.intersection(*(set(r.axes) for r in runs)) if runs else set()
    return [{k: v for k, v in r.axes.items() if k in shared} for r in runs]


def pairs_differing_in(runs: list[RunRecord], axis: str) -> list[tuple[RunRecord, RunRecord]]:
    """Pairs of runs equal in every axis (and seed) but `axis` ("rank" or "seed"), each ordered
    by that axis (low first)."""
    if axis not in ("rank", "seed"):
        raise ValueError(f"axis={axis!r} is not valid; allowed: rank, seed.")
    keyed = []
    for run, axes in zip(runs, shared_axes(runs), strict=True):
        rest = {**axes, "seed": run.seed}
        rest.pop(axis)
        keyed.append((json.dumps(rest, sort_keys=True, default=str), run))
    pairs = []
    for (ka, a), (kb, b) in itertools.combinations(keyed, 2):
        va, vb = getattr(a, axis), getattr(b, axis)
        if ka == kb and va != vb:
            pairs.append((a, b) if va <= vb else (b, a))
    return pairs

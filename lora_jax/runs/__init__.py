"""The run-folder contract: what a run folder and a sweep folder hold (`layout`: every file
name, once), the record of a finished run read once from it (`record`), how its files are
written and read (`files`: never half written) and the lock of the process that writes
(`lock`).

    >>> from lora_jax.runs import RunFolder, read_runs
    >>> RunFolder(run_dir).metrics  # run_dir / "metrics.json"  # doctest: +SKIP
    >>> [(r.rank, r.value("best")) for r in read_runs("outputs/sweeps/<id>")]  # doctest: +SKIP

The layout loads only the standard library; the record's names are imported on first use.
"""

from __future__ import annotations

from lora_jax.lazy import lazy_getattr
from lora_jax.runs.layout import RUN_FILES, RunFolder, SweepFolder

_EXPORTS = {
    "RunFolderError": "record",
    "RunRecord": "record",
    "pairs_differing_in": "record",
    "read_jsonl": "files",
    "read_metrics": "record",
    "read_run": "record",
    "read_runs": "record",
    "replacing": "files",
    "shared_axes": "record",
    "write_atomic": "files",
}

__all__ = [
    "RUN_FILES",
    "RunFolder",
    "RunFolderError",
    "RunRecord",
    "SweepFolder",
    "pairs_differing_in",
    "read_jsonl",
    "read_metrics",
    "read_run",
    "read_runs",
    "replacing",
    "shared_axes",
    "write_atomic",
]

__getattr__ = lazy_getattr(__name__, _EXPORTS)

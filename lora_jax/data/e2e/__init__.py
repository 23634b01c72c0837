"""E2E NLG from BIG-bench (``e2e_nlg_bigbench``): importing this registers the TFDS builder."""

from lora_jax.data.e2e.e2e_nlg_bigbench import (
    NUM_EXAMPLES,
    NUM_MRS,
    SOURCE_FILENAME,
    SOURCE_SUBDIR,
    E2EFormatError,
    E2eNlgBigbench,
    assign_splits,
    parse_task_json,
)

__all__ = [
    "NUM_EXAMPLES",
    "NUM_MRS",
    "SOURCE_FILENAME",
    "SOURCE_SUBDIR",
    "E2EFormatError",
    "E2eNlgBigbench",
    "assign_splits",
    "parse_task_json",
]

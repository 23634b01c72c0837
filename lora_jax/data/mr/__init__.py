"""MR sentence polarity (``mr_polarity``): importing this registers the TFDS builder."""

from lora_jax.data.mr.mr_polarity import (
    NUM_EXAMPLES,
    NUM_POSITIVE,
    SOURCE_FILENAME,
    MRFormatError,
    MrPolarity,
    assign_splits,
    label_of_id,
    parse_source,
)

__all__ = [
    "NUM_EXAMPLES",
    "NUM_POSITIVE",
    "SOURCE_FILENAME",
    "MRFormatError",
    "MrPolarity",
    "assign_splits",
    "label_of_id",
    "parse_source",
]

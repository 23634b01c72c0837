"""GLUE through TFDS's own ``glue/*`` builders, written as array_record (no TensorFlow).

Preparing needs a network (TFDS downloads the GLUE zips from dl.fbaipublicfiles.com and
MRPC from the original Microsoft URLs); reading afterwards is offline::

    python -m lora_jax.data.glue mnli sst2     # prepare into lora_jax.data.assets.data_dir()
    python -m lora_jax.data.glue all

GLUE test splits carry no labels (label = -1); evaluate on the validation splits
(MNLI: ``validation_matched`` and ``validation_mismatched``).

``load_tfds_source`` is the generic loader used for every non-MR task; tests feed it a
locally prepared fake builder with GLUE's feature names.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

GLUE_CONFIGS = ("mnli", "sst2", "mrpc", "cola", "qnli", "qqp", "rte", "stsb")


def _resolve_data_dir(data_dir: str | os.PathLike | None) -> str:
    if data_dir is None:
        from lora_jax.data import assets

        data_dir = assets.data_dir()
    return os.fspath(data_dir)


def _builder(name: str, data_dir: str | os.PathLike | None):
    import tensorflow_datasets as tfds

    if name.split("/", 1)[0] == "glue":
        # TFDS 4.9.10 does not register the legacy glue builder until its module is imported.
        import tensorflow_datasets.text.glue
    elif name.split("/", 1)[0] == "gem":  # likewise gem (gem/e2e_nlg: data=e2e_gem)
        import tensorflow_datasets.text.gem

    return tfds.builder(name, data_dir=_resolve_data_dir(data_dir), file_format="array_record")


def prepare_tfds(name: str, data_dir: str | os.PathLike | None = None, **download_config: Any):
    """Prepares a TFDS dataset (e.g. ``"glue/mrpc"``) as array_record; returns the builder.

    Args:
        name: ``"<builder>/<config>"``.
        data_dir: TFDS data dir; default ``lora_jax.data.assets.data_dir()``.
        **download_config: fields of ``tfds.download.DownloadConfig`` (e.g. manual_dir).
    """
    import tensorflow_datasets as tfds

    builder = _builder(name, data_dir)
    if not builder.is_prepared():
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(**download_config),
            file_format="array_record",
        )
    return builder


def prepare_glue(config: str, data_dir: str | os.PathLike | None = None):
    """Prepares ``glue/<config>`` (needs a network once)."""
    if config not in GLUE_CONFIGS:
        raise ValueError(f"Unknown GLUE config {config!r}; valid: {', '.join(GLUE_CONFIGS)}.")
    return prepare_tfds(f"glue/{config}", data_dir)


def load_tfds_source(name: str, split: str, data_dir: str | os.PathLike | None = None) -> Any:
    """Random-access source of a prepared array_record TFDS dataset (never downloads).

    Raises:
        FileNotFoundError: not prepared; the message names the command that prepares it.
    """
    builder = _builder(name, data_dir)
    if not builder.is_prepared():
        config = name.split("/", 1)[-1]
        command = (
            f"python -m lora_jax.data.glue {config}"
            if name.startswith("glue/")
            else f"python -c \"from lora_jax.data.glue import prepare_tfds; prepare_tfds('{name}')\""
        )
        raise FileNotFoundError(
            f"TFDS dataset {name} is not prepared in {_resolve_data_dir(data_dir)}. "
            f"Prepare it (needs a network) with `{command}`."
        )
    return builder.as_data_source(split=split)


def load_glue(config: str, split: str, data_dir: str | os.PathLike | None = None) -> Any:
    """Random-access source of ``glue/<config>`` split ``split``."""
    return load_tfds_source(f"glue/{config}", split, data_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Prepare GLUE tasks (needs a network).")
    parser.add_argument("configs", nargs="+", help=f"'all' or some of {', '.join(GLUE_CONFIGS)}")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    configs = GLUE_CONFIGS if args.configs == ["all"] else args.configs
    for config in configs:
        builder = prepare_glue(config, args.data_dir)
        print(f"glue/{config} ready in {builder.data_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

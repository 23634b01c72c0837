"""Makes TFDS 4.9.10 builders work without the ``importlib_resources`` backport.

``DatasetBuilder.code_path`` (used by ``download_and_prepare``) evaluates
``importlib_resources.abc.Traversable`` for every builder, but TFDS only declares that
backport for Python < 3.9, so preparing any dataset (ours or ``glue/*``) fails with
``ModuleNotFoundError: importlib_resources``. The standard library's
``importlib.resources`` (3.11+) is the same API, so we alias it when the backport is
absent. Installing ``importlib_resources`` makes this a no-op.
"""

from __future__ import annotations

import importlib.resources
import importlib.resources.abc
import importlib.util
import sys


def install() -> None:
    """Aliases ``importlib_resources`` to the stdlib module if the backport is missing."""
    if "importlib_resources" in sys.modules:
        return
    if importlib.util.find_spec("importlib_resources") is None:
        sys.modules["importlib_resources"] = importlib.resources
        sys.modules["importlib_resources.abc"] = importlib.resources.abc

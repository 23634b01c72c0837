"""What the Hydra entry points (`experiments.train`, `.sweep`) share around Hydra itself:
`hydra_main`, whose composition errors exit 2 like every other user error."""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from typing import Any

from omegaconf import DictConfig

from lora_jax.config import Config
from lora_jax.user_errors import EXIT_USER_ERROR


def hydra_main(task_function: Callable[[DictConfig], Any], conf: str, name: str) -> Callable:
    """`hydra.main(...)(task_function)`, with Hydra's composition errors (printed by Hydra as
    one message, exit status 1) exiting 2 like every other user error, plus the allowed keys
    when a key is unknown."""
    import hydra
    from hydra.errors import CompactHydraException

    hydra_entry = hydra.main(config_path=conf, config_name=name, version_base="1.3")(task_function)

    @functools.wraps(task_function)
    def main() -> None:
        try:
            hydra_entry()
        except CompactHydraException:  # HYDRA_FULL_ERROR=1: Hydra raised it; show it all
            traceback.print_exc()
            raise SystemExit(EXIT_USER_ERROR) from None
        except SystemExit as exit_:
            # Hydra printed the message and called sys.exit(1) while handling the error.
            err = exit_.__context__
            if exit_.code != 1 or not isinstance(err, CompactHydraException):
                raise
            hint = _allowed_keys(err)
            if hint:
                print(hint, file=sys.stderr)
            raise SystemExit(EXIT_USER_ERROR) from None

    return main


def _allowed_keys(err: BaseException) -> str | None:
    """`Allowed keys in trainer: steps, ...` for an unknown key in a typed section."""
    full_key = getattr(err.__cause__, "full_key", None)
    if not full_key or "Key" not in str(err.__cause__):
        return None
    schema: Any = Config()
    parts = str(full_key).split(".")
    for part in parts[:-1]:
        schema = getattr(schema, part, None)
        if not is_dataclass(schema):
            return None
    where = " in " + ".".join(parts[:-1]) if len(parts) > 1 else ""
    return f"Allowed keys{where}: {', '.join(f.name for f in fields(schema))}."
